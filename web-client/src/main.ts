// Wiring only: ask whether the server wants a sign-in, then pick the page from the URL, and
// register the service worker that lets the app open offline. Pages: `/` the workspace,
// `/d/<name>` a document (names may contain `/`), `/admin` the admin view (administrators
// only); each shows the sign-in form first when the server wants a token and there is no
// session, and goes on to the same page afterwards.
import './style.css'
import { mountAdmin } from './admin/page'
import { decodeDocPath, docNameProblem } from './api/names'
import { discoverAuth, hasAccess, keepSessionFresh, onSignedOut } from './auth/session'
import { mountSignIn } from './auth/signin'
import { mountDoc } from './doc/page'
import { mountWorkspace } from './workspace/page'
import { h } from './ui/dom'

const root = document.getElementById('app')!

function showPage(): void {
  const path = location.pathname
  if (path.startsWith('/d/')) {
    const name = decodeDocPath(path.slice(3))
    if (name !== null && docNameProblem(name) === null) {
      mountDoc(root, name)
    } else {
      root.replaceChildren(
        h(
          'main',
          { class: 'workspace' },
          h('h1', {}, 'Not a document name'),
          h('p', {}, 'This address does not name a document. ', h('a', { href: '/' }, 'Back to the workspace'), '.')
        )
      )
    }
  } else if (path === '/admin') {
    mountAdmin(root)
  } else {
    mountWorkspace(root)
  }
}

async function start(): Promise<void> {
  if ((await discoverAuth()) === 'jwt') {
    // Signed out (here, in another tab, or the server refused the token): a reload drops the
    // page's connections and comes back to the sign-in form, on the same address.
    onSignedOut(() => location.reload())
    keepSessionFresh()
    if (!hasAccess()) {
      mountSignIn(root, showPage)
      return
    }
  }
  showPage()
}

void start()

if ('serviceWorker' in navigator && window.isSecureContext) {
  navigator.serviceWorker.register('/sw.js').catch(() => {
    // Without it the app still works online; only offline reloads need it.
  })
}
