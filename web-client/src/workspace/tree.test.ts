import { describe, expect, it } from 'vitest'
import type { DocSummary, FileSummary } from '../api/types'
import { buildTree, countEntries, filterListing, summaryText } from './tree'

function doc(name: string, extra: Partial<DocSummary> = {}): DocSummary {
  return { name, size_bytes: 0, peers: 0, updated_ms: null, loaded: false, ...extra }
}

function file(path: string): FileSummary {
  return {
    path,
    name: path.slice(path.lastIndexOf('/') + 1),
    size: 1,
    content_type: 'application/octet-stream',
    sha256: '',
    version: 1,
    uploader: { sub: null, name: 'Ada' },
    uploaded_ms: 0,
    n_versions: 1
  }
}

describe('buildTree', () => {
  it('puts entries into folders by their "/" segments', () => {
    const root = buildTree([doc('a.md'), doc('team/notes.md'), doc('team/x/y.md')], [file('team/build.zip')])
    expect(root.path).toBe('')
    expect(root.docs.map((d) => d.name)).toEqual(['a.md'])
    const team = root.folders.get('team')!
    expect(team.path).toBe('team')
    expect(team.docs.map((d) => d.name)).toEqual(['team/notes.md'])
    expect(team.files.map((f) => f.path)).toEqual(['team/build.zip'])
    const x = team.folders.get('x')!
    expect(x.path).toBe('team/x')
    expect(x.docs.map((d) => d.name)).toEqual(['team/x/y.md'])
    expect(x.folders.size).toBe(0)
  })

  it('keeps a document and a file of the same name', () => {
    const root = buildTree([doc('same')], [file('same')])
    expect(root.docs).toHaveLength(1)
    expect(root.files).toHaveLength(1)
  })

  it('is empty for an empty listing', () => {
    const root = buildTree([], [])
    expect(countEntries(root)).toBe(0)
    expect(root.folders.size).toBe(0)
  })

  it('counts entries of a folder and all its subfolders', () => {
    const root = buildTree([doc('a'), doc('f/b'), doc('f/g/c')], [file('f/g/d'), file('h/e')])
    expect(countEntries(root)).toBe(5)
    expect(countEntries(root.folders.get('f')!)).toBe(3)
    expect(countEntries(root.folders.get('h')!)).toBe(1)
  })
})

describe('filterListing', () => {
  const listing = { docs: [doc('Team/Notes.md'), doc('other.md')], files: [file('team/build.zip'), file('x.bin')] }

  it('keeps names containing the query, ignoring case and surrounding space', () => {
    const shown = filterListing(listing, '  TEAM ')
    expect(shown.docs.map((d) => d.name)).toEqual(['Team/Notes.md'])
    expect(shown.files.map((f) => f.path)).toEqual(['team/build.zip'])
  })

  it('keeps everything for an empty query', () => {
    expect(filterListing(listing, '   ')).toBe(listing)
  })
})

describe('summaryText', () => {
  it('counts documents, files and people, in the singular where it fits', () => {
    expect(summaryText({ docs: [doc('a', { peers: 1 })], files: [file('b')] })).toBe(
      '1 document · 1 file · 1 person editing now'
    )
    expect(summaryText({ docs: [], files: [] })).toBe('0 documents · 0 files · 0 people editing now')
  })

  it('counts named users when the server lists them, else connections', () => {
    const users = [
      { name: 'Ada', color: null },
      { name: 'Bo', color: '#000000' }
    ]
    expect(summaryText({ docs: [doc('a', { peers: 5, users }), doc('b', { peers: 1 })], files: [] })).toBe(
      '2 documents · 0 files · 3 people editing now'
    )
  })
})
