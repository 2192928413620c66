// The admin view's tables, drawn from one `GET /api/admin/overview` answer: live documents,
// connections by protocol, storage per workspace with its quota, failing webhook deliveries and
// the newest errors. Each function returns the section's new body; page.ts swaps it in. Rows
// carry `data-*` attributes (the doc, protocol, workspace) for the browser tests. Times are
// shown relative to the server's `now`, so a wrong local clock does not matter.
import { docHref } from '../api/names'
import type { AdminOverview } from '../api/types'
import { ago, bytes, plural } from '../ui/format'
import { h } from '../ui/dom'
import { connectionCounts, quotaShare, totalConnections } from './model'

/** A titled card whose body is replaced on each refresh. */
export class Section {
  readonly el: HTMLElement
  private readonly body: HTMLElement

  constructor(id: string, title: string) {
    this.body = h('div', { class: 'admin-body' }, h('p', { class: 'empty' }, 'Loading…'))
    this.el = h('section', { class: 'admin-card', id }, h('h2', {}, title), this.body)
  }

  show(...children: Node[]): void {
    this.body.replaceChildren(...children)
  }
}

function empty(text: string): HTMLElement {
  return h('p', { class: 'empty' }, text)
}

/** A table; a column title ending in `#` is numeric (right-aligned), the `#` is not shown. */
function table(head: string[], rows: HTMLTableRowElement[]): HTMLElement {
  const th = (title: string): HTMLElement =>
    title.endsWith('#') ? h('th', { scope: 'col', class: 'num' }, title.slice(0, -1)) : h('th', { scope: 'col' }, title)
  return h('table', { class: 'admin-table' }, h('thead', {}, h('tr', {}, ...head.map(th))), h('tbody', {}, ...rows))
}

export function liveDocs(overview: AdminOverview): Node[] {
  if (overview.docs.length === 0) return [empty('No document is open right now.')]
  const rows = overview.docs.map((doc) =>
    h(
      'tr',
      { 'data-doc': doc.name, 'data-peers': doc.peers },
      h('td', { class: 'admin-name' }, h('a', { href: docHref(doc.name) }, doc.name)),
      h('td', { class: 'num admin-peers' }, String(doc.peers)),
      h('td', { class: 'num' }, bytes(doc.bytes))
    )
  )
  const shown = overview.docs.length
  const note =
    overview.docs_total > shown
      ? h('p', { class: 'admin-note' }, `The ${shown} with most peers of ${overview.docs_total} open documents.`)
      : null
  return [table(['Document', 'Peers#', 'Size#'], rows), ...(note ? [note] : [])]
}

export function connections(overview: AdminOverview): Node[] {
  const counts = connectionCounts(overview.connections)
  const items = counts.map(({ protocol, count }) =>
    h(
      'li',
      { class: 'admin-tile', 'data-protocol': protocol, 'data-count': count },
      h('span', { class: 'admin-tile-value' }, String(count)),
      h('span', { class: 'admin-tile-label' }, protocol)
    )
  )
  const total = totalConnections(overview.connections)
  items.push(
    h(
      'li',
      { class: 'admin-tile total', 'data-protocol': 'total', 'data-count': total },
      h('span', { class: 'admin-tile-value' }, String(total)),
      h('span', { class: 'admin-tile-label' }, 'in all')
    )
  )
  return [h('ul', { class: 'admin-tiles' }, ...items)]
}

export function storage(overview: AdminOverview): Node[] {
  if (overview.storage.length === 0) return [empty('Nothing stored yet.')]
  const rows = overview.storage.map((ws) => {
    const share = quotaShare(ws.bytes, ws.quota_bytes)
    const quota =
      share === null
        ? h('span', { class: 'admin-muted' }, 'no quota')
        : h(
            'span',
            { class: 'quota' },
            h(
              'span',
              {
                class: 'quota-bar',
                role: 'meter',
                'aria-valuemin': 0,
                'aria-valuemax': 100,
                'aria-valuenow': Math.round(share * 100),
                'aria-label': `${ws.workspace}: ${Math.round(share * 100)}% of the quota`,
                'data-level': share >= 0.9 ? 'high' : 'normal'
              },
              h('span', { class: 'quota-fill', style: `width: ${(share * 100).toFixed(1)}%` })
            ),
            h('span', { class: 'admin-muted' }, `${Math.round(share * 100)}% of ${bytes(ws.quota_bytes)}`)
          )
    return h(
      'tr',
      { 'data-workspace': ws.workspace, 'data-bytes': ws.bytes },
      h('td', { class: 'admin-name' }, ws.workspace),
      h('td', { class: 'num' }, bytes(ws.bytes)),
      h('td', { class: 'num' }, plural(ws.files, 'file')),
      h('td', {}, quota)
    )
  })
  return [table(['Workspace', 'Used#', 'Files#', 'Quota'], rows)]
}

export function failingWebhooks(overview: AdminOverview): Node[] {
  if (overview.webhooks_failing.length === 0) return [empty('No delivery is failing.')]
  const items = overview.webhooks_failing.map((d) =>
    h(
      'li',
      { class: 'admin-event', 'data-webhook': d.webhook },
      h('span', {}, h('strong', {}, d.event), ' to ', h('code', {}, d.url)),
      h('span', { class: 'admin-event-message' }, d.error),
      h(
        'span',
        { class: 'admin-muted' },
        `${ago(d.at, overview.now)} · ${plural(d.attempts, 'attempt')} · ${d.webhook}`
      )
    )
  )
  return [h('ul', { class: 'admin-events' }, ...items)]
}

/** A log event's fields as `key=value` texts, in the order the server gave them. */
function fieldsText(fields: Record<string, string> | undefined): string[] {
  return Object.entries(fields ?? {}).map(([key, value]) => `${key}=${value}`)
}

export function recentErrors(overview: AdminOverview): Node[] {
  if (overview.errors.length === 0) return [empty('No warning or error since the server started.')]
  const items = overview.errors.map((e) =>
    h(
      'li',
      { class: 'admin-event', 'data-level': e.level },
      h('span', {}, h('span', { class: 'level', 'data-level': e.level }, e.level), ' ', h('code', {}, e.target)),
      h('span', { class: 'admin-event-message' }, e.message),
      h('span', { class: 'admin-muted' }, [ago(e.at, overview.now), ...fieldsText(e.fields)].join(' · '))
    )
  )
  return [h('ul', { class: 'admin-events' }, ...items)]
}
