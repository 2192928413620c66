// The document page (/d/<name>): top bar, editor, the people who are here, and the History
// drawer. Signed in with a token that only reads this document, the editor is read-only from the
// start; if the server refuses an edit anyway (the role changed), it turns read-only then.
//
// This file only wires the parts together: `DocConnection` owns the network and sync state
// (connection.ts), the editor its text view (editor.ts), `PeopleList` the presence list
// (people.ts), `HistoryDrawer` the history panel (history-drawer.ts).
import * as Y from 'yjs'
import { subscribeEvents } from '../api/events'
import { localUser } from '../auth/profile'
import { currentSession, roleFor } from '../auth/session'
import { signOutButton } from '../auth/signin'
import { h } from '../ui/dom'
import { DocConnection } from './connection'
import { createEditor } from './editor'
import { HistoryDrawer } from './history-drawer'
import { identityChip } from './identity'
import { languageFor } from './languages'
import { PeopleList } from './people'
import { publishUser } from './presence'
import { statusPill } from './status'
import { brand, breadcrumbs } from './topbar'

/** The root Y.Text every Tandem editor binds (documented in protocol-spec/http.md). */
export const TEXT_NAME = 'content'

/** The page for a document the session's token grants nothing on (the server would refuse it). */
function mountNoAccess(root: HTMLElement, name: string): void {
  document.title = 'No access · Tandem'
  root.replaceChildren(
    h('header', { class: 'topbar' }, brand(), h('span', { class: 'spacer' }), signOutButton()),
    h(
      'main',
      { class: 'workspace', id: 'no-access' },
      h('h1', {}, 'No access'),
      h(
        'p',
        {},
        'The account ',
        h('strong', {}, currentSession()?.name ?? ''),
        ' cannot open ',
        h('code', {}, name),
        '. ',
        h('a', { href: '/' }, 'Back to the workspace'),
        '.'
      )
    )
  )
}

export function mountDoc(root: HTMLElement, name: string): void {
  const role = roleFor(name)
  if (role === null) {
    mountNoAccess(root, name)
    return
  }
  const readOnly = role === 'read'
  document.title = `${name.slice(name.lastIndexOf('/') + 1)} · Tandem`

  // The document and its connections. The socket opens asynchronously, so the awareness `user`
  // set here is already in the first awareness message the others get.
  const doc = new Y.Doc()
  const connection = new DocConnection(name, doc)
  const awareness = connection.provider.awareness
  const user = localUser()
  publishUser(awareness, user)

  const language = languageFor(name)
  const status = statusPill()
  const people = new PeopleList(awareness)
  const editorHost = h('section', { class: 'editor', id: 'editor', 'aria-label': `Editor for ${name}` })
  const readOnlyBadge = h(
    'span',
    {
      class: 'badge',
      id: 'read-only',
      hidden: !readOnly,
      title: 'Your account can read this document but not change it.'
    },
    'Read-only'
  )
  const page = h('main', { class: 'doc-page' }, editorHost)
  const history = new HistoryDrawer(
    { doc: name, textName: TEXT_NAME, readOnly, currentText: () => doc.getText(TEXT_NAME).toString() },
    page
  )
  page.append(
    h(
      'aside',
      { class: 'people', 'aria-label': 'People here' },
      h('h2', {}, 'Here now ', people.count),
      people.list,
      history.host
    )
  )

  root.replaceChildren(
    h(
      'header',
      { class: 'topbar' },
      brand(),
      breadcrumbs(name),
      h('span', { class: 'lang', id: 'language' }, language.label),
      readOnlyBadge,
      h('span', { class: 'spacer' }),
      history.toggle,
      status.el,
      identityChip(user, (next) => publishUser(awareness, next)),
      currentSession() !== null ? signOutButton() : null
    ),
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
  const stopEvents = subscribeEvents((event) => history.onEvent(event))

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
