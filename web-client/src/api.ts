// The HTTP API the client uses besides the WebSocket (protocol-spec/http.md). Every call goes
// through `apiFetch`, which adds the session's token when there is one (session.ts).
import type { ActivityEntry, Actor } from './events'
import { apiFetch, currentSession } from './session'

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

/** One stored file, or one version of it (`GET /api/files`, protocol-spec/files.md). */
export interface FileSummary {
  path: string
  name: string
  size: number
  content_type: string
  sha256: string
  version: number
  uploader: Actor
  uploaded_ms: number
  n_versions: number
}

/** One saved version of a document (`GET /api/docs/{name}/versions`, protocol-spec/history.md). */
export interface VersionSummary {
  id: number
  kind: 'named' | 'auto' | 'restore'
  name: string | null
  author: Actor
  created_ms: number
  seq: number
  size_bytes: number
  authors?: Actor[]
}

/** The JSON error body every endpoint answers a refusal with. */
export class ApiError extends Error {
  constructor (readonly status: number, readonly code: string, message: string) {
    super(message)
  }
}

async function failure (response: Response, what: string): Promise<ApiError> {
  try {
    const body = await response.json() as { error?: string, message?: string }
    return new ApiError(response.status, body.error ?? 'error', body.message ?? `${what}: ${response.status}`)
  } catch {
    return new ApiError(response.status, 'error', `${what}: ${response.status}`)
  }
}

async function getJson<T> (path: string, what: string): Promise<T> {
  const response = await apiFetch(path, { headers: { accept: 'application/json' } })
  if (!response.ok) throw await failure(response, what)
  return await response.json() as T
}

async function sendJson<T> (method: string, path: string, body: unknown, what: string): Promise<T | null> {
  const response = await apiFetch(path, {
    method,
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  if (!response.ok) throw await failure(response, what)
  return response.status === 204 ? null : await response.json() as T
}

export async function listFiles (): Promise<FileSummary[]> {
  return (await getJson<{ files: FileSummary[] }>('/api/files', 'GET /api/files')).files
}

/**
 * Where a file downloads from (`version` for an earlier one). A link cannot carry a header, so
 * with a session the token travels as the `token` parameter, which the server accepts like the
 * WebSocket's (and never logs).
 */
export function fileHref (path: string, version?: number): string {
  const query = new URLSearchParams()
  if (version !== undefined) query.set('version', String(version))
  const token = currentSession()?.token
  if (token !== undefined) query.set('token', token)
  const suffix = query.size > 0 ? `?${query.toString()}` : ''
  return `/api/files/${encodeDocPath(path)}${suffix}`
}

export async function fileVersions (path: string): Promise<FileSummary[]> {
  return (await getJson<{ versions: FileSummary[] }>(`/api/file-versions/${encodeDocPath(path)}`, 'file versions')).versions
}

export async function moveFile (from: string, to: string): Promise<void> {
  await sendJson('POST', '/api/file-moves', { from, to }, 'rename')
}

export async function deleteFile (path: string): Promise<void> {
  await sendJson('DELETE', `/api/files/${encodeDocPath(path)}`, undefined, 'delete')
}

export async function listVersions (doc: string): Promise<VersionSummary[]> {
  return (await getJson<{ versions: VersionSummary[] }>(`/api/docs/${encodeDocPath(doc)}/versions`, 'versions')).versions
}

/** A version's root types as JSON (the editor's text is its `content`). */
export async function versionContent (doc: string, id: number): Promise<Record<string, unknown>> {
  return await getJson<Record<string, unknown>>(`/api/docs/${encodeDocPath(doc)}/versions/${id}`, 'version')
}

export async function saveVersion (doc: string, name: string): Promise<VersionSummary> {
  const body = await sendJson<{ version: VersionSummary }>('POST', `/api/docs/${encodeDocPath(doc)}/versions`, { name }, 'save version')
  return body!.version
}

export async function restoreVersion (doc: string, id: number): Promise<void> {
  await sendJson('POST', `/api/docs/${encodeDocPath(doc)}/versions/${id}/restore`, {}, 'restore')
}

/** A page of the activity feed, newest first; `next` fetches the page after it. */
export async function listActivity (filter: { doc?: string, user?: string, before?: string | number, limit?: number } = {}): Promise<{ entries: ActivityEntry[], next: string | number | null }> {
  const query = new URLSearchParams()
  for (const [key, value] of Object.entries(filter)) {
    if (value !== undefined && value !== null) query.set(key, String(value))
  }
  return await getJson(`/api/activity?${query.toString()}`, 'activity')
}
