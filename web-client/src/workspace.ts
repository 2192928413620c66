// The workspace page (/): every shared document as a tree of folders (from the `/` in names),
// who is in each right now, and when it last changed; a filter; and "new document".
import { docHref, docNameProblem, type DocSummary, listDocs } from './api'
import { ago, bytes, h } from './dom'
import { avatar, identityChip } from './identity'
import { localUser } from './presence'
import { currentSession } from './session'
import { signOutButton } from './signin'

/** How often the listing is refreshed while the page is visible. */
const REFRESH_MS = 2000

interface Folder {
  path: string
  folders: Map<string, Folder>
  docs: DocSummary[]
}

function buildTree (docs: DocSummary[]): Folder {
  const root: Folder = { path: '', folders: new Map(), docs: [] }
  for (const doc of docs) {
    const segments = doc.name.split('/')
    let folder = root
    for (const segment of segments.slice(0, -1)) {
      let next = folder.folders.get(segment)
      if (!next) {
        next = { path: folder.path ? `${folder.path}/${segment}` : segment, folders: new Map(), docs: [] }
        folder.folders.set(segment, next)
      }
      folder = next
    }
    folder.docs.push(doc)
  }
  return root
}

function countDocs (folder: Folder): number {
  let n = folder.docs.length
  for (const child of folder.folders.values()) n += countDocs(child)
  return n
}

function docRow (doc: DocSummary): HTMLElement {
  const base = doc.name.slice(doc.name.lastIndexOf('/') + 1)
  const users = doc.users ?? []
  const here = users.length > 0
    ? h('span', { class: 'here', title: users.map((u) => u.name).join(', ') },
      ...users.slice(0, 4).map((u) => avatar(u.name, u.color ?? '#64748b', 'small')),
      users.length > 4 ? h('span', { class: 'more' }, `+${users.length - 4}`) : null,
      h('span', { class: 'here-names' }, users.map((u) => u.name).join(', ')))
    : doc.peers > 0
      ? h('span', { class: 'here' }, h('span', { class: 'here-names' }, `${doc.peers} connected`))
      : null
  const meta = [doc.updated_ms !== null ? `edited ${ago(doc.updated_ms)}` : 'not saved yet', bytes(doc.size_bytes)].join(' · ')
  return h('li', { class: 'doc-row', 'data-doc': doc.name },
    h('a', { href: docHref(doc.name), class: 'doc-link' }, h('span', { class: 'doc-icon', 'aria-hidden': 'true' }), h('span', { class: 'doc-name' }, base)),
    here,
    h('span', { class: 'doc-meta' }, meta))
}

function folderNode (name: string, folder: Folder, collapsed: Set<string>, forceOpen: boolean): HTMLElement {
  const details = h('details', { open: forceOpen || !collapsed.has(folder.path) },
    h('summary', {}, h('span', { class: 'folder-icon', 'aria-hidden': 'true' }), h('span', { class: 'folder-name' }, name), h('span', { class: 'count' }, String(countDocs(folder)))),
    treeList(folder, collapsed, forceOpen))
  details.addEventListener('toggle', () => {
    if (details.open) collapsed.delete(folder.path)
    else collapsed.add(folder.path)
  })
  return h('li', { class: 'folder', 'data-folder': folder.path }, details)
}

function treeList (folder: Folder, collapsed: Set<string>, forceOpen: boolean): HTMLElement {
  const list = h('ul', { class: 'tree' })
  for (const [name, child] of [...folder.folders].sort(([a], [b]) => a.localeCompare(b))) {
    list.append(folderNode(name, child, collapsed, forceOpen))
  }
  for (const doc of folder.docs) list.append(docRow(doc))
  return list
}

export function mountWorkspace (root: HTMLElement): void {
  document.title = 'Workspace · Tandem'
  const collapsed = new Set<string>()
  let docs: DocSummary[] = []
  let loaded = false

  const filter = h('input', { id: 'filter', type: 'search', placeholder: 'Filter documents', 'aria-label': 'Filter documents', autocomplete: 'off' })
  const nameInput = h('input', { id: 'new-doc-name', name: 'name', placeholder: 'notes/meeting.md', 'aria-label': 'New document name', autocomplete: 'off', required: true, maxlength: 255 })
  const problem = h('p', { class: 'form-error', id: 'new-doc-error', role: 'alert' })
  const form = h('form', { class: 'new-doc', id: 'new-doc' }, nameInput, h('button', { class: 'button primary', type: 'submit' }, 'New document'))
  const summary = h('p', { class: 'subtitle', id: 'summary' }, 'Loading…')
  const tree = h('div', { id: 'tree', class: 'tree-card' })

  form.addEventListener('submit', (event) => {
    event.preventDefault()
    const name = nameInput.value.trim()
    const error = docNameProblem(name)
    problem.textContent = error ?? ''
    if (!error) location.assign(docHref(name))
  })
  nameInput.addEventListener('input', () => { problem.textContent = '' })

  root.replaceChildren(
    h('header', { class: 'topbar' },
      h('a', { class: 'brand', href: '/' }, h('span', { class: 'logo' }), h('span', { class: 'brand-name' }, 'Tandem')),
      h('span', { class: 'spacer' }),
      identityChip(localUser(), () => {}),
      currentSession() !== null ? signOutButton() : null),
    h('main', { class: 'workspace' },
      h('div', { class: 'workspace-head' }, h('div', {}, h('h1', {}, 'Workspace'), summary), form),
      problem,
      h('div', { class: 'toolbar' }, filter),
      tree))

  const render = (): void => {
    const query = filter.value.trim().toLowerCase()
    const shown = query ? docs.filter((d) => d.name.toLowerCase().includes(query)) : docs
    const people = docs.reduce((n, d) => n + (d.users?.length ?? d.peers), 0)
    summary.textContent = `${docs.length} document${docs.length === 1 ? '' : 's'} · ${people} ${people === 1 ? 'person' : 'people'} editing now`
    if (!loaded) return
    if (shown.length === 0) {
      tree.replaceChildren(h('div', { class: 'empty' },
        docs.length === 0
          ? h('p', {}, 'No documents yet. Name one above, e.g. ', h('code', {}, 'notes/ideas.md'), ', to start writing.')
          : h('p', {}, 'Nothing matches ', h('strong', {}, filter.value), '.')))
      return
    }
    tree.replaceChildren(treeList(buildTree(shown), collapsed, query !== ''))
  }
  // Filtering re-renders from the last listing, without asking the server.
  filter.addEventListener('input', render)

  // One refresh loop at a time; the tree is rebuilt only when the listing changed (or to age
  // the "edited … ago" texts), so keyboard focus in the tree survives the polling.
  let timer: ReturnType<typeof setTimeout> | undefined
  let inFlight = false
  let lastJson = ''
  let lastRender = 0
  const refresh = async (): Promise<void> => {
    if (inFlight) return
    inFlight = true
    clearTimeout(timer)
    try {
      const next = await listDocs()
      const json = JSON.stringify(next)
      if (json !== lastJson || Date.now() - lastRender > 30000) {
        docs = next
        lastJson = json
        lastRender = Date.now()
        loaded = true
        render()
      }
    } catch {
      summary.textContent = 'Cannot reach the server; retrying…'
    } finally {
      inFlight = false
    }
    clearTimeout(timer)
    if (document.visibilityState === 'visible') timer = setTimeout(() => { void refresh() }, REFRESH_MS)
  }
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') void refresh()
  })
  void refresh()
}
