// The workspace page (/): every shared document and file as a tree of folders (from the `/` in
// names), who is in each document right now and when it last changed, uploads with progress, a
// filter, "new document", and the activity feed. The tree is live: it reloads when the server's
// event stream (api/events.ts) says something changed, never on a timer.
//
// This file only wires the parts together. Each part owns its own state: `LiveListing` the last
// listing (listing.ts), `TreeView` the folders the user closed (tree-view.ts), `UploadBar` the
// uploads (uploads.ts), `ActivityFeed` the feed's entries (activity.ts).
import { subscribeEvents } from '../api/events'
import type { LiveEvent } from '../api/types'
import { localUser } from '../auth/profile'
import { currentSession, isAdmin } from '../auth/session'
import { signOutButton } from '../auth/signin'
import { identityChip } from '../doc/identity'
import { h } from '../ui/dom'
import { ActivityFeed } from './activity'
import { fileActions } from './file-actions'
import { AGE_MS, debounce, LiveListing } from './listing'
import { newDocForm } from './new-doc'
import { summaryText } from './tree'
import { TreeView } from './tree-view'
import { UploadBar } from './uploads'

/** Events arriving together cause one reload of the listing. */
const RELOAD_DEBOUNCE_MS = 250

function topbar(): HTMLElement {
  return h(
    'header',
    { class: 'topbar' },
    h('a', { class: 'brand', href: '/' }, h('span', { class: 'logo' }), h('span', { class: 'brand-name' }, 'Tandem')),
    h('span', { class: 'spacer' }),
    isAdmin() ? h('a', { class: 'button ghost small', id: 'admin-link', href: '/admin' }, 'Admin') : null,
    identityChip(localUser(), () => {}),
    currentSession() !== null ? signOutButton() : null
  )
}

export function mountWorkspace(root: HTMLElement): void {
  document.title = 'Workspace · Tandem'
  const filter = h('input', {
    id: 'filter',
    type: 'search',
    placeholder: 'Filter documents and files',
    'aria-label': 'Filter documents and files',
    autocomplete: 'off'
  })
  const summary = h('p', { class: 'subtitle', id: 'summary' }, 'Loading…')
  const live = h(
    'span',
    { class: 'live', id: 'live', 'data-live': 'false', title: 'Changes by others appear here as they happen' },
    'live'
  )
  const newDoc = newDocForm()
  const uploads = new UploadBar()
  const tree = new TreeView(fileActions((problem) => uploads.report(problem)))
  const feed = new ActivityFeed()
  uploads.acceptDrops(tree.el)

  const listing = new LiveListing(
    () => render(),
    () => {
      summary.textContent = 'Cannot reach the server; retrying…'
    }
  )
  const render = (): void => {
    summary.textContent = summaryText(listing)
    if (listing.loaded) tree.show(listing, filter.value)
  }
  // Filtering redraws from the last listing, without asking the server.
  filter.addEventListener('input', render)

  root.replaceChildren(
    topbar(),
    h(
      'main',
      { class: 'workspace' },
      h('div', { class: 'workspace-head' }, h('div', {}, h('h1', {}, 'Workspace ', live), summary), newDoc.form),
      newDoc.problem,
      h(
        'div',
        { class: 'workspace-body' },
        h(
          'div',
          { class: 'workspace-main' },
          h('div', { class: 'toolbar' }, filter, uploads.el),
          uploads.problem,
          uploads.uploads.el,
          tree.el
        ),
        feed.el
      )
    )
  )

  const reloadSoon = debounce(() => void listing.reload(), RELOAD_DEBOUNCE_MS)
  const onEvent = (event: LiveEvent): void => {
    switch (event.type) {
      case 'hello':
      case 'resync':
        // A (re)connection: whatever was said while away is missed, so load everything again.
        void listing.reload()
        void feed.reload()
        break
      case 'activity':
        feed.upsert(event.entry)
        break
      default:
        reloadSoon()
    }
  }
  subscribeEvents(onEvent, (connected) => {
    live.dataset.live = String(connected)
    if (!connected) summary.textContent = 'Reconnecting to the server…'
  })
  setInterval(() => {
    if (listing.loaded) render()
  }, AGE_MS)
  void listing.reload()
}
