// Wiring only: pick the page from the URL, and register the service worker that lets the app
// open offline. Pages: `/` the workspace, `/d/<name>` a document (names may contain `/`).
import './style.css'
import { decodeDocPath, docNameProblem } from './api'
import { mountDoc } from './doc'
import { h } from './dom'
import { mountWorkspace } from './workspace'

const root = document.getElementById('app')!
const path = location.pathname

if (path.startsWith('/d/')) {
  const name = decodeDocPath(path.slice(3))
  if (name !== null && docNameProblem(name) === null) {
    mountDoc(root, name)
  } else {
    root.replaceChildren(h('main', { class: 'workspace' },
      h('h1', {}, 'Not a document name'),
      h('p', {}, 'This address does not name a document. ', h('a', { href: '/' }, 'Back to the workspace'), '.')))
  }
} else {
  mountWorkspace(root)
}

if ('serviceWorker' in navigator && window.isSecureContext) {
  navigator.serviceWorker.register('/sw.js').catch(() => {
    // Without it the app still works online; only offline reloads need it.
  })
}
