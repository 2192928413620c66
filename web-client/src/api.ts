// The HTTP API the client uses besides the WebSocket (protocol-spec/http.md). Every call goes
// through `apiFetch`, which adds the session's token when there is one (session.ts).
import { apiFetch } from './session'

/** A person present in a document, as `GET /api/docs` reports it. */
export interface PresentUser {
  name: string
  color: string | null
}

/** One row of `GET /api/docs`. */
export interface DocSummary {
  name: string
  size_bytes: number
  peers: number
  updated_ms: number | null
  loaded: boolean
  users?: PresentUser[]
}

/** The same rules the server applies (server/tandem-core/src/doc_id.rs), checked before navigating. */
export function docNameProblem (name: string): string | null {
  if (name.length === 0) return 'Give the document a name.'
  if (new TextEncoder().encode(name).length > 255) return 'Names are at most 255 bytes.'
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f\\]/.test(name)) return 'Names cannot contain control characters or backslashes.'
  if (name.split('/').some((s) => s === '' || s === '.' || s === '..')) {
    return 'Use "/" only between folder names, as in notes/today.md.'
  }
  return null
}

/** A document name as a URL path: each segment percent-encoded, the slashes kept. */
export function encodeDocPath (name: string): string {
  return name.split('/').map(encodeURIComponent).join('/')
}

/** The inverse of `encodeDocPath`; null for a malformed path. */
export function decodeDocPath (path: string): string | null {
  try {
    return path.split('/').map(decodeURIComponent).join('/')
  } catch {
    return null
  }
}

/** The page of a document. */
export function docHref (name: string): string {
  return `/d/${encodeDocPath(name)}`
}

export async function listDocs (signal?: AbortSignal): Promise<DocSummary[]> {
  const response = await apiFetch('/api/docs', { signal, headers: { accept: 'application/json' } })
  if (!response.ok) throw new Error(`GET /api/docs: ${response.status}`)
  const body = await response.json() as { docs: DocSummary[] }
  return body.docs
}

/**
 * Asks whether the server has durably stored everything a Yjs snapshot describes
 * (`POST /api/docs/{name}/covers`, body: `Y.encodeSnapshot(Y.snapshot(doc))`).
 */
export async function serverCovers (name: string, snapshot: Uint8Array): Promise<boolean> {
  const response = await apiFetch(`/api/docs/${encodeDocPath(name)}/covers`, {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream', accept: 'application/json' },
    body: snapshot as BufferSource
  })
  if (!response.ok) throw new Error(`covers: ${response.status}`)
  const body = await response.json() as { covers: boolean }
  return body.covers
}
