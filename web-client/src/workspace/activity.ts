// The activity feed (`GET /api/activity`, protocol-spec/activity.md): who edited which document
// (one line per editing session, not per keystroke), who uploaded, renamed or deleted which
// file, who saved or restored a version. Kept live by the `activity` events: a new entry is
// added at the top, an extended session is updated in place.
import { listActivity } from '../api/activity'
import { fileHref } from '../api/files'
import { docHref } from '../api/names'
import type { ActivityEntry } from '../api/types'
import { h } from '../ui/dom'
import { ago } from '../ui/format'

const PAGE = 30

function target(entry: ActivityEntry): HTMLElement {
  const path = entry.path
  if (entry.kind.startsWith('file.') && entry.kind !== 'file.deleted') {
    const to = typeof entry.details?.to === 'string' ? entry.details.to : path
    return h('a', { href: fileHref(to), class: 'activity-target' }, to)
  }
  if (entry.kind.startsWith('doc.') || entry.kind.startsWith('version.')) {
    return h('a', { href: docHref(path), class: 'activity-target' }, path)
  }
  return h('span', { class: 'activity-target' }, path)
}

function verb(entry: ActivityEntry): string {
  switch (entry.kind) {
    case 'doc.edited':
      return 'edited'
    case 'file.uploaded':
      return 'uploaded'
    case 'file.renamed':
      return 'renamed'
    case 'file.deleted':
      return 'deleted'
    case 'version.created':
      return 'saved a version of'
    case 'version.restored':
      return 'restored an earlier version of'
    default:
      return entry.kind
  }
}

function detail(entry: ActivityEntry): string | null {
  const details = entry.details ?? {}
  switch (entry.kind) {
    case 'doc.edited': {
      const n = entry.n_updates ?? 0
      return n > 0 ? `${n} change${n === 1 ? '' : 's'}` : null
    }
    case 'file.renamed':
      return typeof details.from === 'string' ? `from ${details.from}` : null
    case 'file.uploaded':
      return typeof details.version === 'number' && details.version > 1 ? `version ${details.version}` : null
    case 'version.created':
      return typeof details.name === 'string' && details.name !== '' ? `“${details.name}”` : null
    default:
      return null
  }
}

function entryRow(entry: ActivityEntry): HTMLElement {
  const extra = detail(entry)
  return h(
    'li',
    {
      class: 'activity-entry',
      'data-id': entry.id,
      'data-kind': entry.kind,
      'data-path': entry.path,
      'data-user': entry.actor.sub ?? entry.actor.name
    },
    h(
      'span',
      { class: 'activity-line' },
      h('strong', { class: 'activity-actor' }, entry.actor.name),
      ` ${verb(entry)} `,
      target(entry)
    ),
    h('span', { class: 'activity-meta' }, [extra, ago(entry.ended_ms || entry.started_ms)].filter(Boolean).join(' · '))
  )
}

/** A feed of the whole workspace (`doc` unset) or of one path. */
export class ActivityFeed {
  readonly list = h('ol', { class: 'activity-list', id: 'activity-list' })
  readonly el: HTMLElement
  private entries = new Map<number, ActivityEntry>()
  private next: string | number | null = null
  private readonly more = h('button', { class: 'button small ghost', type: 'button', hidden: true }, 'Older')

  constructor(private readonly doc?: string) {
    this.more.addEventListener('click', () => {
      void this.loadMore()
    })
    this.el = h(
      'section',
      { class: 'activity', id: 'activity', 'aria-label': 'Activity' },
      h('h2', {}, 'Activity'),
      this.list,
      this.more
    )
  }

  /** Loads the newest page again (after a (re)connection of the live stream). */
  async reload(): Promise<void> {
    try {
      const page = await listActivity({ doc: this.doc, limit: PAGE })
      this.entries = new Map(page.entries.map((e) => [e.id, e]))
      this.next = page.next
      this.render()
    } catch {
      this.list.replaceChildren(h('li', { class: 'empty' }, 'Activity is not available right now.'))
    }
  }

  private async loadMore(): Promise<void> {
    if (this.next === null) return
    const page = await listActivity({ doc: this.doc, limit: PAGE, before: this.next })
    for (const entry of page.entries) this.entries.set(entry.id, entry)
    this.next = page.next
    this.render()
  }

  /** A live entry: new, or an update of one shown (an editing session that went on). */
  upsert(entry: ActivityEntry): void {
    if (this.doc !== undefined && entry.path !== this.doc) return
    this.entries.set(entry.id, entry)
    this.render()
  }

  private render(): void {
    const sorted = [...this.entries.values()].sort((a, b) => b.id - a.id)
    this.list.replaceChildren(
      ...(sorted.length > 0 ? sorted.map(entryRow) : [h('li', { class: 'empty' }, 'Nothing has happened here yet.')])
    )
    this.more.hidden = this.next === null
  }
}
