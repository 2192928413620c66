import { describe, expect, it } from 'vitest'
import vectors from '../../../protocol-spec/vectors/doc-names.json'
import { decodeDocPath, docHref, docNameError, docNameProblem, encodeDocPath, MAX_DOC_NAME_BYTES } from './names'

// protocol-spec/vectors/doc-names.json is read by server/tandem-core/tests/doc_name_vectors.rs too.
describe('document names follow the shared vectors', () => {
  it('uses the same limit', () => {
    expect(MAX_DOC_NAME_BYTES).toBe(vectors.max_bytes)
  })

  it.each(vectors.valid)('accepts $note', ({ name }) => {
    expect(docNameError(name)).toBeNull()
    expect(docNameProblem(name)).toBeNull()
  })

  it.each(vectors.invalid)('refuses $note as $error', ({ name, error }) => {
    expect(docNameError(name)).toBe(error)
    expect(docNameProblem(name)).toEqual(expect.any(String))
  })
})

describe('document paths', () => {
  it('encodes each segment and keeps the slashes', () => {
    expect(encodeDocPath('team/my notes.md')).toBe('team/my%20notes.md')
    expect(encodeDocPath('a?b#c/ü')).toBe('a%3Fb%23c/%C3%BC')
    expect(docHref('team/a b')).toBe('/d/team/a%20b')
  })

  it('decodes what it encodes', () => {
    for (const name of ['team/my notes.md', 'a%2Fb', 'über/ß', '🦀/x?y']) {
      expect(decodeDocPath(encodeDocPath(name))).toBe(name)
    }
  })

  it('gives null for a malformed escape', () => {
    expect(decodeDocPath('a/%E0%A4%A')).toBeNull()
  })
})
