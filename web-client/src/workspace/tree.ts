// The workspace's listing as a tree of folders, from the `/` in names, and the words that sum
// it up. Pure data: no DOM, no fetch (tree-view.ts draws it), so the unit tests cover it whole.
import type { DocSummary, FileSummary } from '../api/types'
import { plural } from '../ui/format'

/** A folder: its path (`''` for the root), subfolders by name, and what it holds directly. */
export interface Folder {
  path: string
  folders: Map<string, Folder>
  docs: DocSummary[]
  files: FileSummary[]
}

/** What the server lists: every document and every file the token may read. */
export interface Listing {
  docs: DocSummary[]
  files: FileSummary[]
}

/**
 * Folders from the names' `/` segments, in the order the entries come; a document and a file
 * of the same name both stay. Subfolders are kept in first-seen order (the view sorts them).
 */
export function buildTree(docs: DocSummary[], files: FileSummary[]): Folder {
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

/** Documents and files in `folder` and all its subfolders. */
export function countEntries(folder: Folder): number {
  let n = folder.docs.length + folder.files.length
  for (const child of folder.folders.values()) n += countEntries(child)
  return n
}

/** The entries whose name contains `query`, ignoring case and surrounding space. */
export function filterListing(listing: Listing, query: string): Listing {
  const q = query.trim().toLowerCase()
  if (q === '') return listing
  return {
    docs: listing.docs.filter((d) => d.name.toLowerCase().includes(q)),
    files: listing.files.filter((f) => f.path.toLowerCase().includes(q))
  }
}

/** "3 documents · 1 file · 2 people editing now". */
export function summaryText(listing: Listing): string {
  const people = listing.docs.reduce((n, d) => n + (d.users?.length ?? d.peers), 0)
  return [
    plural(listing.docs.length, 'document'),
    plural(listing.files.length, 'file'),
    `${plural(people, 'person', 'people')} editing now`
  ].join(' · ')
}
