// Draws the workspace tree (tree.ts) as nested lists: folders as <details> (their open state
// kept across redraws), a row per document with who is in it, a row per file with its actions.
// The e2e tests find rows by `data-doc`, `data-file` and `data-folder`.
import { fileHref } from '../api/files'
import { docHref } from '../api/names'
import type { DocSummary, FileSummary, LockInfo } from '../api/types'
import { avatar } from '../doc/identity'
import { h } from '../ui/dom'
import { ago, bytes } from '../ui/format'
import { lockLabel, lockTitle } from './lock'
import { buildTree, countEntries, filterListing, type Folder, type Listing } from './tree'

/** The "Locked by NAME" badge of a row a WebDAV lock covers (the e2e tests find `data-lock`). */
function lockBadge(lock: LockInfo | undefined): HTMLElement | null {
  if (!lock) return null
  return h('span', { class: 'lock-badge', 'data-lock': lock.principal ?? '', title: lockTitle(lock) }, lockLabel(lock))
}

/** What a file row can ask of the page. */
export interface FileActions {
  rename: (file: FileSummary) => void
  remove: (file: FileSummary) => void
  /** Shows or hides the file's earlier versions in `host`. */
  versions: (file: FileSummary, host: HTMLElement) => void
}

function docRow(doc: DocSummary): HTMLElement {
  const base = doc.name.slice(doc.name.lastIndexOf('/') + 1)
  const users = doc.users ?? []
  const here =
    users.length > 0
      ? h(
          'span',
          { class: 'here', title: users.map((u) => u.name).join(', ') },
          ...users.slice(0, 4).map((u) => avatar(u.name, u.color ?? '#64748b', 'small')),
          users.length > 4 ? h('span', { class: 'more' }, `+${users.length - 4}`) : null,
          h('span', { class: 'here-names' }, users.map((u) => u.name).join(', '))
        )
      : doc.peers > 0
        ? h('span', { class: 'here' }, h('span', { class: 'here-names' }, `${doc.peers} connected`))
        : null
  const edited = doc.updated_ms !== null ? `edited ${ago(doc.updated_ms)}` : 'not saved yet'
  return h(
    'li',
    { class: 'doc-row', 'data-doc': doc.name },
    h(
      'a',
      { href: docHref(doc.name), class: 'doc-link' },
      h('span', { class: 'doc-icon', 'aria-hidden': 'true' }),
      h('span', { class: 'doc-name' }, base),
      lockBadge(doc.lock)
    ),
    here,
    h('span', { class: 'doc-meta' }, `${edited} · ${bytes(doc.size_bytes)}`)
  )
}

function fileRow(file: FileSummary, actions: FileActions): HTMLElement {
  const base = file.path.slice(file.path.lastIndexOf('/') + 1)
  const versionsHost = h('div', { class: 'file-versions' })
  const meta = `${file.uploader.name} · ${ago(file.uploaded_ms)} · ${bytes(file.size)}`
  const versionsButton =
    file.n_versions > 1
      ? h(
          'button',
          { class: 'link-button file-history', type: 'button', title: 'Earlier versions' },
          `v${file.version}`
        )
      : null
  versionsButton?.addEventListener('click', () => actions.versions(file, versionsHost))
  const rename = h('button', { class: 'link-button', type: 'button', title: `Rename ${file.path}` }, 'Rename')
  rename.addEventListener('click', () => actions.rename(file))
  const remove = h('button', { class: 'link-button danger', type: 'button', title: `Delete ${file.path}` }, 'Delete')
  remove.addEventListener('click', () => actions.remove(file))
  return h(
    'li',
    { class: 'doc-row file-row', 'data-file': file.path },
    h(
      'a',
      {
        href: fileHref(file.path),
        class: 'doc-link file-link',
        download: base,
        title: `Download ${file.path} (${file.content_type})`
      },
      h('span', { class: 'file-icon', 'aria-hidden': 'true' }),
      h('span', { class: 'doc-name' }, base),
      lockBadge(file.lock)
    ),
    h('span', { class: 'file-actions' }, versionsButton, rename, remove),
    h('span', { class: 'doc-meta' }, meta),
    versionsHost
  )
}

/** The tree's drawing state: which folders the user closed, and what file rows can do. */
export class TreeView {
  readonly el = h('div', { id: 'tree', class: 'tree-card' })
  /** Paths of folders the user closed; they stay closed across redraws (not across a filter). */
  private readonly collapsed = new Set<string>()

  constructor(private readonly actions: FileActions) {}

  /** Redraws the tree for `listing`, filtered by the text of the filter box. */
  show(listing: Listing, filterText: string): void {
    const shown = filterListing(listing, filterText)
    if (shown.docs.length + shown.files.length === 0) {
      this.el.replaceChildren(
        h(
          'div',
          { class: 'empty' },
          listing.docs.length + listing.files.length === 0
            ? h(
                'p',
                {},
                'Nothing here yet. Name a document above, e.g. ',
                h('code', {}, 'notes/ideas.md'),
                ', or drop files here to share them.'
              )
            : h('p', {}, 'Nothing matches ', h('strong', {}, filterText), '.')
        )
      )
      return
    }
    // While filtering, every folder with a match is open, whatever the user closed.
    const forceOpen = filterText.trim() !== ''
    this.el.replaceChildren(this.list(buildTree(shown.docs, shown.files), forceOpen))
  }

  private list(folder: Folder, forceOpen: boolean): HTMLElement {
    const list = h('ul', { class: 'tree' })
    for (const [name, child] of [...folder.folders].sort(([a], [b]) => a.localeCompare(b))) {
      list.append(this.folder(name, child, forceOpen))
    }
    for (const doc of folder.docs) list.append(docRow(doc))
    for (const file of folder.files) list.append(fileRow(file, this.actions))
    return list
  }

  private folder(name: string, folder: Folder, forceOpen: boolean): HTMLElement {
    const details = h(
      'details',
      { open: forceOpen || !this.collapsed.has(folder.path) },
      h(
        'summary',
        {},
        h('span', { class: 'folder-icon', 'aria-hidden': 'true' }),
        h('span', { class: 'folder-name' }, name),
        h('span', { class: 'count' }, String(countEntries(folder)))
      ),
      this.list(folder, forceOpen)
    )
    details.addEventListener('toggle', () => {
      if (details.open) this.collapsed.delete(folder.path)
      else this.collapsed.add(folder.path)
    })
    return h('li', { class: 'folder', 'data-folder': folder.path }, details)
  }
}
