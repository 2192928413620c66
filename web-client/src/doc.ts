// The document page (/d/<name>): top bar, editor, and the people who are here. Signed in with
// a token that only reads this document, the editor is read-only from the start; if the server
// refuses an edit anyway (the role changed), it turns read-only then.
import * as Y from 'yjs'
import { DocConnection } from './connection'
import { h } from './dom'
import { createEditor } from './editor'
import { subscribeEvents } from './events'
import { HistoryPanel } from './history'
import { avatar, identityChip } from './identity'
import { languageFor } from './languages'
import { localUser, presentUsers, publishUser } from './presence'
import { currentSession, roleFor } from './session'
import { signOutButton } from './signin'
import { statusPill } from './status'

/** The root Y.Text every Tandem editor binds (documented in protocol-spec/http.md). */
export const TEXT_NAME = 'content'

function breadcrumbs (name: string): HTMLElement {
  const segments = name.split('/')
  const crumbs = h('nav', { class: 'crumbs', 'aria-label': 'Document path' })
  crumbs.append(h('a', { href: '/', class: 'crumb-root' }, 'Workspace'))
  segments.forEach((segment, i) => {
    crumbs.append(h('span', { class: 'crumb-sep', 'aria-hidden': 'true' }, '/'))
    crumbs.append(i === segments.length - 1
      ? h('strong', { class: 'crumb-doc', id: 'doc-name' }, segment)
      : h('span', { class: 'crumb-folder' }, segment))
  })
  return crumbs
}

function brand (): HTMLElement {
  return h('a', { class: 'brand', href: '/', 'aria-label': 'Tandem workspace' }, h('span', { class: 'logo' }), h('span', { class: 'brand-name' }, 'Tandem'))
}

/** The page for a document the session's token grants nothing on (the server would refuse it). */
function mountNoAccess (root: HTMLElement, name: string): void {
  document.title = 'No access · Tandem'
  root.replaceChildren(
    h('header', { class: 'topbar' }, brand(), h('span', { class: 'spacer' }), signOutButton()),
    h('main', { class: 'workspace', id: 'no-access' },
      h('h1', {}, 'No access'),
      h('p', {}, 'The account ', h('strong', {}, currentSession()?.name ?? ''), ' cannot open ', h('code', {}, name), '. ',
        h('a', { href: '/' }, 'Back to the workspace'), '.')))
}

export function mountDoc (root: HTMLElement, name: string): void {
  const role = roleFor(name)
  if (role === null) {
    mountNoAccess(root, name)
    return
  }
  document.title = `${name.slice(name.lastIndexOf('/') + 1)} · Tandem`
  const doc = new Y.Doc()
  const connection = new DocConnection(name, doc)
  const awareness = connection.provider.awareness
  let user = localUser()
  publishUser(awareness, user)
  const readOnly = role === 'read'

  const language = languageFor(name)
  const status = statusPill()
  const people = h('ul', { id: 'users', class: 'people-list' })
  const count = h('span', { class: 'count', id: 'users-count' })
  const editorHost = h('section', { class: 'editor', id: 'editor', 'aria-label': `Editor for ${name}` })
  const readOnlyBadge = h('span', {
    class: 'badge', id: 'read-only', hidden: !readOnly, title: 'Your account can read this document but not change it.'
  }, 'Read-only')

  const historyToggle = h('button', { class: 'button small ghost', type: 'button', id: 'history-toggle', 'aria-expanded': 'false', 'aria-controls': 'history' }, 'History')
  let history: HistoryPanel | null = null
  const historyHost = h('div', { class: 'history-host', hidden: true })
  const page = h('main', { class: 'doc-page' },
    editorHost,
    h('aside', { class: 'people', 'aria-label': 'People here' },
      h('h2', {}, 'Here now ', count),
      people,
      historyHost))

  root.replaceChildren(
    h('header', { class: 'topbar' },
      brand(),
      breadcrumbs(name),
      h('span', { class: 'lang', id: 'language' }, language.label),
      readOnlyBadge,
      h('span', { class: 'spacer' }),
      historyToggle,
      status.el,
      identityChip(user, (next) => {
        user = next
        publishUser(awareness, user)
      }),
      currentSession() !== null ? signOutButton() : null),
    page
  )

  const editor = createEditor(editorHost, doc.getText(TEXT_NAME), awareness, language.extension, readOnly)
  editor.view.focus()
  // The server refused an edit: stop typing into a void. What was typed stays in this browser.
  connection.onPermissionDenied(() => {
    if (!readOnlyBadge.hidden) return
    readOnlyBadge.hidden = false
    editor.setReadOnly(true)
  })
  connection.subscribe(status.update)

  const renderPeople = (): void => {
    const present = presentUsers(awareness)
    count.textContent = String(present.length)
    people.replaceChildren(...present.map((p) =>
      h('li', { class: 'person', 'data-name': p.name, 'data-client': p.clientId, 'data-self': String(p.self) },
        avatar(p.name, p.color),
        h('span', { class: 'person-name' }, p.name),
        p.self ? h('span', { class: 'you' }, 'you') : null)))
  }
  awareness.on('change', renderPeople)
  renderPeople()

  // History: loaded when first opened, then kept current by the live events.
  historyToggle.addEventListener('click', () => {
    const open = historyHost.hidden
    historyHost.hidden = !open
    page.classList.toggle('with-history', open)
    historyToggle.setAttribute('aria-expanded', String(open))
    if (open && history === null) {
      history = new HistoryPanel({ doc: name, textName: TEXT_NAME, readOnly, currentText: () => doc.getText(TEXT_NAME).toString() })
      historyHost.append(history.el)
      void history.refresh()
      void history.feed.reload()
    }
  })
  const stopEvents = subscribeEvents((event) => {
    if (history === null) return
    switch (event.type) {
      case 'hello':
      case 'resync':
        void history.refresh()
        void history.feed.reload()
        break
      case 'version_created':
      case 'version_restored':
        if (event.doc === name) void history.refresh()
        break
      case 'activity':
        history.feed.upsert(event.entry)
        break
    }
  })

  // Leaving the page: tell the others at once rather than after the awareness timeout.
  window.addEventListener('pagehide', () => {
    awareness.setLocalState(null)
    connection.destroy()
    stopEvents()
  })
  // Back/forward cache: a page restored after 'pagehide' has no connection left; start afresh
  // (IndexedDB holds every edit made before it was hidden).
  window.addEventListener('pageshow', (event) => {
    if (event.persisted) location.reload()
  })

  // Exposed for debugging in the console and for the end-to-end tests.
  Object.assign(window, { tandem: { doc, connection, editor, name } })
}
