// Documents and their versions over HTTP (protocol-spec/http.md, history.md). The text itself
// never travels here: it goes through the WebSocket (doc/connection.ts).
import { apiFetch, getJson, sendJson } from './http'
import { encodeDocPath } from './names'
import type { DocSummary, VersionSummary } from './types'

export async function listDocs(signal?: AbortSignal): Promise<DocSummary[]> {
  const response = await apiFetch('/api/docs', { signal, headers: { accept: 'application/json' } })
  if (!response.ok) throw new Error(`GET /api/docs: ${response.status}`)
  const body = (await response.json()) as { docs: DocSummary[] }
  return body.docs
}

/**
 * Asks whether the server has durably stored everything a Yjs snapshot describes
 * (`POST /api/docs/{name}/covers`, body: `Y.encodeSnapshot(Y.snapshot(doc))`).
 */
export async function serverCovers(name: string, snapshot: Uint8Array): Promise<boolean> {
  const response = await apiFetch(`/api/docs/${encodeDocPath(name)}/covers`, {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream', accept: 'application/json' },
    body: snapshot as BufferSource
  })
  if (!response.ok) throw new Error(`covers: ${response.status}`)
  const body = (await response.json()) as { covers: boolean }
  return body.covers
}

export async function listVersions(doc: string): Promise<VersionSummary[]> {
  const path = `/api/docs/${encodeDocPath(doc)}/versions`
  return (await getJson<{ versions: VersionSummary[] }>(path, 'versions')).versions
}

/** A version's root types as JSON (the editor's text is its `content`). */
export async function versionContent(doc: string, id: number): Promise<Record<string, unknown>> {
  return await getJson<Record<string, unknown>>(`/api/docs/${encodeDocPath(doc)}/versions/${id}`, 'version')
}

export async function saveVersion(doc: string, name: string): Promise<VersionSummary> {
  const path = `/api/docs/${encodeDocPath(doc)}/versions`
  const body = await sendJson<{ version: VersionSummary }>('POST', path, { name }, 'save version')
  return body!.version
}

export async function restoreVersion(doc: string, id: number): Promise<void> {
  await sendJson('POST', `/api/docs/${encodeDocPath(doc)}/versions/${id}/restore`, {}, 'restore')
}
