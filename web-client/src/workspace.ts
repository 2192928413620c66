// The workspace page (/): every shared document and file as a tree of folders (from the `/` in
// names), who is in each document right now and when it last changed, uploads with progress, a
// filter, "new document", and the activity feed. The tree is live: it reloads when the server's
// event stream (`events.ts`) says something changed, never on a timer.
import { ActivityFeed } from './activity'
import { ApiError, deleteFile, docHref, docNameProblem, type DocSummary, fileHref, type FileSummary, fileVersions, listDocs, listFiles, moveFile } from './api'
import { ago, bytes, h } from './dom'
import { debounce, subscribeEvents } from './events'
import { avatar, identityChip } from './identity'
import { localUser } from './presence'
import { currentSession } from './session'
import { signOutButton } from './signin'
import { UploadList } from './uploads'

/** Events arriving together cause one reload of the listing. */
const RELOAD_DEBOUNCE_MS = 250
/** The "edited … ago" texts are refreshed this often (from memory, not from the server). */
const AGE_MS = 30000

interface Folder {
  path: string
  folders: Map<string, Folder>
  docs: DocSummary[]
  files: FileSummary[]
}

function buildTree (docs: DocSummary[], files: FileSummary[]): Folder {
  const root: Folder = { path: '', folders: new Map(), docs: [], files: [] }
  const folderOf = (name: string): Folder => {
    let folder = root
    for (const segment of name.split('/').slice(0, -1)) {
      let next = folder.folders.get(segment)
      if (!next) {
        next = { path: folder.path ? `${folder.path}/${segment}` : segment, folders: new Map(), docs: [], files: [] }
        folder.folders.set(segment, next)
      }
      folder = next
    }
    return folder
  }
  for (const doc of docs) folderOf(doc.name).docs.push(doc)
  for (const file of files) folderOf(file.path).files.push(file)
  return root
}

function countEntries (folder: Folder): number {
  let n = folder.docs.length + folder.files.length
  for (const child of folder.folders.values()) n += countEntries(child)
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

/** What a file row can ask of the page. */
interface FileActions {
  rename: (file: FileSummary) => void
  remove: (file: FileSummary) => void
  versions: (file: FileSummary, host: HTMLElement) => void
}

function fileRow (file: FileSummary, actions: FileActions): HTMLElement {
  const base = file.path.slice(file.path.lastIndexOf('/') + 1)
  const versionsHost = h('div', { class: 'file-versions' })
  const meta = [`${file.uploader.name} · ${ago(file.uploaded_ms)}`, bytes(file.size)].join(' · ')
  const versionsButton = file.n_versions > 1
    ? h('button', { class: 'link-button file-history', type: 'button', title: 'Earlier versions' }, `v${file.version}`)
    : null
  versionsButton?.addEventListener('click', () => actions.versions(file, versionsHost))
  const rename = h('button', { class: 'link-button', type: 'button', title: `Rename ${file.path}` }, 'Rename')
  rename.addEventListener('click', () => actions.rename(file))
  const remove = h('button', { class: 'link-button danger', type: 'button', title: `Delete ${file.path}` }, 'Delete')
  remove.addEventListener('click', () => actions.remove(file))
  return h('li', { class: 'doc-row file-row', 'data-file': file.path },
    h('a', { href: fileHref(file.path), class: 'doc-link file-link', download: base, title: `Download ${file.path} (${file.content_type})` },
      h('span', { class: 'file-icon', 'aria-hidden': 'true' }), h('span', { class: 'doc-name' }, base)),
    h('span', { class: 'file-actions' }, versionsButton, rename, remove),
    h('span', { class: 'doc-meta' }, meta),
    versionsHost)
}

function folderNode (name: string, folder: Folder, collapsed: Set<string>, forceOpen: boolean, actions: FileActions): HTMLElement {
  const details = h('details', { open: forceOpen || !collapsed.has(folder.path) },
    h('summary', {}, h('span', { class: 'folder-icon', 'aria-hidden': 'true' }), h('span', { class: 'folder-name' }, name), h('span', { class: 'count' }, String(countEntries(folder)))),
    treeList(folder, collapsed, forceOpen, actions))
  details.addEventListener('toggle', () => {
    if (details.open) collapsed.delete(folder.path)
    else collapsed.add(folder.path)
  })
  return h('li', { class: 'folder', 'data-folder': folder.path }, details)
}

function treeList (folder: Folder, collapsed: Set<string>, forceOpen: boolean, actions: FileActions): HTMLElement {
  const list = h('ul', { class: 'tree' })
  for (const [name, child] of [...folder.folders].sort(([a], [b]) => a.localeCompare(b))) {
    list.append(folderNode(name, child, collapsed, forceOpen, actions))
  }
  for (const doc of folder.docs) list.append(docRow(doc))
  for (const file of folder.files) list.append(fileRow(file, actions))
  return list
}

export function mountWorkspace (root: HTMLElement): void {
  document.title = 'Workspace · Tandem'
  const collapsed = new Set<string>()
  let docs: DocSummary[] = []
  let files: FileSummary[] = []
  let loaded = false

  const filter = h('input', { id: 'filter', type: 'search', placeholder: 'Filter documents and files', 'aria-label': 'Filter documents and files', autocomplete: 'off' })
  const nameInput = h('input', { id: 'new-doc-name', name: 'name', placeholder: 'notes/meeting.md', 'aria-label': 'New document name', autocomplete: 'off', required: true, maxlength: 255 })
  const problem = h('p', { class: 'form-error', id: 'new-doc-error', role: 'alert' })
  const form = h('form', { class: 'new-doc', id: 'new-doc' }, nameInput, h('button', { class: 'button primary', type: 'submit' }, 'New document'))
  const summary = h('p', { class: 'subtitle', id: 'summary' }, 'Loading…')
  const tree = h('div', { id: 'tree', class: 'tree-card' })
  const live = h('span', { class: 'live', id: 'live', 'data-live': 'false', title: 'Changes by others appear here as they happen' }, 'live')
  const feed = new ActivityFeed()

  // Uploads: a folder to upload into, a file picker, and dropping files on the tree.
  const uploads = new UploadList()
  const folderInput = h('input', { id: 'upload-folder', placeholder: 'folder (optional), e.g. builds', 'aria-label': 'Upload into folder', autocomplete: 'off' })
  const picker = h('input', { id: 'upload-input', type: 'file', multiple: true, hidden: true })
  const uploadButton = h('button', { class: 'button ghost', type: 'button', id: 'upload-button' }, 'Upload files')
  const uploadProblem = h('p', { class: 'form-error', id: 'upload-error', role: 'alert' })
  uploadButton.addEventListener('click', () => picker.click())
  const startUploads = (chosen: FileList | File[]): void => {
    const folder = folderInput.value.trim().replace(/^\/+|\/+$/g, '')
    uploadProblem.textContent = ''
    for (const file of chosen) {
      const path = folder ? `${folder}/${file.name}` : file.name
      const nameProblem = docNameProblem(path)
      if (nameProblem !== null) {
        uploadProblem.textContent = `${path}: ${nameProblem}`
        continue
      }
      uploads.upload(file, path).catch((error: unknown) => {
        uploadProblem.textContent = `${path}: ${error instanceof Error ? error.message : String(error)}`
      })
    }
  }
  picker.addEventListener('change', () => {
    if (picker.files !== null) startUploads(picker.files)
    picker.value = ''
  })
  tree.addEventListener('dragover', (event) => {
    event.preventDefault()
    tree.classList.add('dropping')
  })
  tree.addEventListener('dragleave', () => tree.classList.remove('dropping'))
  tree.addEventListener('drop', (event) => {
    event.preventDefault()
    tree.classList.remove('dropping')
    if (event.dataTransfer !== null) startUploads(event.dataTransfer.files)
  })

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
      h('div', { class: 'workspace-head' }, h('div', {}, h('h1', {}, 'Workspace ', live), summary), form),
      problem,
      h('div', { class: 'workspace-body' },
        h('div', { class: 'workspace-main' },
          h('div', { class: 'toolbar' }, filter, h('div', { class: 'upload-bar' }, folderInput, uploadButton, picker)),
          uploadProblem,
          uploads.el,
          tree),
        feed.el)))

  const actions: FileActions = {
    rename: (file) => {
      const to = prompt(`Rename ${file.path} to:`, file.path)?.trim()
      if (!to || to === file.path) return
      const nameProblem = docNameProblem(to)
      if (nameProblem !== null) {
        uploadProblem.textContent = nameProblem
        return
      }
      moveFile(file.path, to).catch((error: unknown) => { uploadProblem.textContent = message(error) })
    },
    remove: (file) => {
      if (!confirm(`Delete ${file.path} and all its versions?`)) return
      deleteFile(file.path).catch((error: unknown) => { uploadProblem.textContent = message(error) })
    },
    versions: (file, host) => {
      if (host.childElementCount > 0) {
        host.replaceChildren()
        return
      }
      fileVersions(file.path).then((versions) => {
        host.replaceChildren(h('ol', { class: 'version-list' }, ...versions.map((v) =>
          h('li', { 'data-version': v.version },
            h('a', { href: fileHref(file.path, v.version), download: file.name }, `Version ${v.version}`),
            ` · ${bytes(v.size)} · ${v.uploader.name} · ${ago(v.uploaded_ms)}`))))
      }).catch((error: unknown) => { uploadProblem.textContent = message(error) })
    }
  }

  const render = (): void => {
    const query = filter.value.trim().toLowerCase()
    const shownDocs = query ? docs.filter((d) => d.name.toLowerCase().includes(query)) : docs
    const shownFiles = query ? files.filter((f) => f.path.toLowerCase().includes(query)) : files
    const people = docs.reduce((n, d) => n + (d.users?.length ?? d.peers), 0)
    summary.textContent = `${docs.length} document${docs.length === 1 ? '' : 's'} · ${files.length} file${files.length === 1 ? '' : 's'} · ${people} ${people === 1 ? 'person' : 'people'} editing now`
    if (!loaded) return
    if (shownDocs.length + shownFiles.length === 0) {
      tree.replaceChildren(h('div', { class: 'empty' },
        docs.length + files.length === 0
          ? h('p', {}, 'Nothing here yet. Name a document above, e.g. ', h('code', {}, 'notes/ideas.md'), ', or drop files here to share them.')
          : h('p', {}, 'Nothing matches ', h('strong', {}, filter.value), '.')))
      return
    }
    tree.replaceChildren(treeList(buildTree(shownDocs, shownFiles), collapsed, query !== '', actions))
  }
  // Filtering re-renders from the last listing, without asking the server.
  filter.addEventListener('input', render)

  // One reload at a time; a reload asked for during one runs after it. The tree is rebuilt only
  // when the listing changed (or to age the "… ago" texts), so keyboard focus survives.
  let inFlight = false
  let again = false
  let lastJson = ''
  let lastRender = 0
  const reload = async (): Promise<void> => {
    if (inFlight) {
      again = true
      return
    }
    inFlight = true
    try {
      do {
        again = false
        const [nextDocs, nextFiles] = await Promise.all([listDocs(), listFiles().catch(() => files)])
        const json = JSON.stringify([nextDocs, nextFiles])
        if (json !== lastJson || Date.now() - lastRender > AGE_MS) {
          docs = nextDocs
          files = nextFiles
          lastJson = json
          lastRender = Date.now()
          loaded = true
          render()
        }
      } while (again)
    } catch {
      summary.textContent = 'Cannot reach the server; retrying…'
    } finally {
      inFlight = false
    }
  }
  const reloadSoon = debounce(() => { void reload() }, RELOAD_DEBOUNCE_MS)
  subscribeEvents((event) => {
    switch (event.type) {
      case 'hello':
      case 'resync':
        void reload()
        void feed.reload()
        break
      case 'activity':
        feed.upsert(event.entry)
        break
      default:
        reloadSoon()
    }
  }, (connected) => {
    live.dataset.live = String(connected)
    if (!connected) summary.textContent = 'Reconnecting to the server…'
  })
  setInterval(() => { if (loaded) render() }, AGE_MS)
  void reload()
}

function message (error: unknown): string {
  return error instanceof ApiError || error instanceof Error ? error.message : String(error)
}
