// The admin view (/admin): what this server is doing right now and over the last hour, for
// administrators. Live documents with their peers and size, connections by protocol, charts of
// updates/s, commit latency and connected users, storage per workspace against its quota,
// failing webhook deliveries and the newest errors, all from the admin JSON API (api/admin.ts).
//
// It refreshes every few seconds while the page is visible, and asks nothing while it is hidden
// or left (refresh.ts). Anyone whose token is not an administrator's sees "Administrators only"
// and nothing is asked of the server; a 403 from it (the flag was taken away) shows the same.
// This file only wires the parts together: charts.ts draws, sections.ts lays out the tables.
import { loadOverview, loadSeries } from '../api/admin'
import { ApiError, errorMessage } from '../api/http'
import { currentSession, isAdmin } from '../auth/session'
import { signOutButton } from '../auth/signin'
import { duration, plural } from '../ui/format'
import { h } from '../ui/dom'
import { Chart } from './charts'
import { CHARTS, totalConnections } from './model'
import { Refresher } from './refresh'
import { connections, failingWebhooks, liveDocs, recentErrors, Section, storage } from './sections'

/** How often the view asks again; the series gains a point every 10 s. */
const REFRESH_INTERVAL_MS = 5000

function topbar(): HTMLElement {
  return h(
    'header',
    { class: 'topbar' },
    h(
      'a',
      { class: 'brand', href: '/', 'aria-label': 'Tandem workspace' },
      h('span', { class: 'logo' }),
      h('span', { class: 'brand-name' }, 'Tandem')
    ),
    h('nav', { class: 'crumbs', 'aria-label': 'Page' }, h('strong', { class: 'crumb-doc' }, 'Admin')),
    h('span', { class: 'spacer' }),
    currentSession() !== null ? signOutButton() : null
  )
}

function mountRefused(root: HTMLElement): void {
  document.title = 'Administrators only · Tandem'
  const name = currentSession()?.name
  root.replaceChildren(
    topbar(),
    h(
      'main',
      { class: 'workspace', id: 'admin-refused' },
      h('h1', {}, 'Administrators only'),
      h(
        'p',
        {},
        'The admin view is for administrators of this server. ',
        name !== undefined ? h('span', {}, 'The account ', h('strong', {}, name), ' is not one. ') : null,
        h('a', { href: '/' }, 'Back to the workspace'),
        '.'
      )
    )
  )
}

export function mountAdmin(root: HTMLElement): void {
  if (!isAdmin()) {
    mountRefused(root)
    return
  }
  document.title = 'Admin · Tandem'
  const live = h(
    'span',
    { class: 'live', id: 'live', 'data-live': 'false', title: 'Refreshed every few seconds while this page is shown' },
    'live'
  )
  const summary = h('p', { class: 'subtitle', id: 'admin-summary' }, 'Loading…')
  const charts = CHARTS.map((spec) => new Chart(spec))
  const docs = new Section('admin-docs', 'Live documents')
  const conns = new Section('admin-connections', 'Connections by protocol')
  const store = new Section('admin-storage', 'Storage by workspace')
  const hooks = new Section('admin-webhooks', 'Failing webhook deliveries')
  const errors = new Section('admin-errors', 'Newest warnings and errors')
  const main = h(
    'main',
    { class: 'workspace admin', id: 'admin', 'data-refreshing': 'false' },
    h('div', { class: 'workspace-head' }, h('div', {}, h('h1', {}, 'Admin ', live), summary)),
    h(
      'section',
      { class: 'admin-charts', id: 'admin-charts', 'aria-label': 'The last hour' },
      ...charts.map((c) => c.el)
    ),
    conns.el,
    h('div', { class: 'admin-grid' }, docs.el, store.el),
    h('div', { class: 'admin-grid' }, hooks.el, errors.el)
  )
  root.replaceChildren(topbar(), main)

  const refresh = async (): Promise<void> => {
    try {
      const [overview, series] = await Promise.all([loadOverview(), loadSeries()])
      for (const chart of charts) chart.show(series.points, overview.now)
      docs.show(...liveDocs(overview))
      conns.show(...connections(overview))
      store.show(...storage(overview))
      hooks.show(...failingWebhooks(overview))
      errors.show(...recentErrors(overview))
      summary.textContent = [
        `Up ${duration(overview.now - overview.started_at)}`,
        plural(overview.docs_total, 'open document'),
        plural(totalConnections(overview.connections), 'connection')
      ].join(' · ')
      live.dataset.live = 'true'
    } catch (error) {
      live.dataset.live = 'false'
      if (error instanceof ApiError && error.status === 403) {
        listening.abort()
        refresher.stop()
        mountRefused(root)
        return
      }
      // A 401 has ended the session (api/http.ts) and the page goes back to signing in.
      summary.textContent = error instanceof ApiError ? errorMessage(error) : 'Cannot reach the server; retrying…'
    }
  }
  const refresher = new Refresher(refresh, REFRESH_INTERVAL_MS)
  const listening = new AbortController()
  const follow = (): void => {
    if (document.visibilityState === 'visible') refresher.start()
    else refresher.stop()
    main.dataset.refreshing = String(refresher.running)
  }
  document.addEventListener('visibilitychange', follow, { signal: listening.signal })
  // Leaving the page (or putting it in the back-forward cache) stops it; coming back resumes.
  window.addEventListener(
    'pagehide',
    () => {
      refresher.stop()
      main.dataset.refreshing = 'false'
    },
    { signal: listening.signal }
  )
  window.addEventListener('pageshow', follow, { signal: listening.signal })
  follow()
}
