// Document names: the server's validation rules, and how a name becomes a URL path. Pure (no
// DOM, no fetch), so the unit tests check `docNameError` against protocol-spec/vectors/doc-names.json,
// the same vectors `DocId::new` (server/tandem-core/src/doc_id.rs) is tested against. Rust is the
// contract: when the two disagree, this file changes.

/** Longest document name in UTF-8 bytes (`MAX_DOC_ID_BYTES` on the server). */
export const MAX_DOC_NAME_BYTES = 255

/** Why a name is refused; the names of `DocIdError`'s variants for decoded names. */
export type DocNameError = 'empty' | 'too_long' | 'forbidden_character' | 'bad_segment'

/**
 * `char::is_control` (Unicode category Cc: U+0000-U+001F and U+007F-U+009F) or a backslash.
 * Unicode-aware, so an astral character is one match unit like a Rust `char`.
 */
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const FORBIDDEN = /[\u0000-\u001f\u007f-\u009f\\]/u

/** The server's rule for a decoded name, checked in the server's order; null when valid. */
export function docNameError(name: string): DocNameError | null {
  if (name.length === 0) return 'empty'
  if (new TextEncoder().encode(name).length > MAX_DOC_NAME_BYTES) return 'too_long'
  if (FORBIDDEN.test(name)) return 'forbidden_character'
  if (name.split('/').some((s) => s === '' || s === '.' || s === '..')) return 'bad_segment'
  return null
}

const PROBLEMS: Record<DocNameError, string> = {
  empty: 'Give the document a name.',
  too_long: `Names are at most ${MAX_DOC_NAME_BYTES} bytes.`,
  forbidden_character: 'Names cannot contain control characters or backslashes.',
  bad_segment: 'Use "/" only between folder names, as in notes/today.md.'
}

/** What is wrong with a name, in words the page shows; null when the server would accept it. */
export function docNameProblem(name: string): string | null {
  const error = docNameError(name)
  return error === null ? null : PROBLEMS[error]
}

/** A document name as a URL path: each segment percent-encoded, the slashes kept. */
export function encodeDocPath(name: string): string {
  return name.split('/').map(encodeURIComponent).join('/')
}

/** The inverse of `encodeDocPath`; null for a malformed path. */
export function decodeDocPath(path: string): string | null {
  try {
    return path.split('/').map(decodeURIComponent).join('/')
  } catch {
    return null
  }
}

/** The page of a document. */
export function docHref(name: string): string {
  return `/d/${encodeDocPath(name)}`
}
