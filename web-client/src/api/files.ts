// Stored files over HTTP (protocol-spec/files.md): listing, download links, versions, rename
// and delete. Uploads go through tus (workspace/uploads.ts).
import { currentSession } from '../auth/session'
import { getJson, sendJson } from './http'
import { encodeDocPath } from './names'
import type { FileSummary } from './types'

export async function listFiles(): Promise<FileSummary[]> {
  return (await getJson<{ files: FileSummary[] }>('/api/files', 'GET /api/files')).files
}

/**
 * Where a file downloads from (`version` for an earlier one). A link cannot carry a header, so
 * with a session the token travels as the `token` parameter, which the server accepts like the
 * WebSocket's (and never logs).
 */
export function fileHref(path: string, version?: number): string {
  const query = new URLSearchParams()
  if (version !== undefined) query.set('version', String(version))
  const token = currentSession()?.token
  if (token !== undefined) query.set('token', token)
  const suffix = query.size > 0 ? `?${query.toString()}` : ''
  return `/api/files/${encodeDocPath(path)}${suffix}`
}

export async function fileVersions(path: string): Promise<FileSummary[]> {
  const url = `/api/file-versions/${encodeDocPath(path)}`
  return (await getJson<{ versions: FileSummary[] }>(url, 'file versions')).versions
}

export async function moveFile(from: string, to: string): Promise<void> {
  await sendJson('POST', '/api/file-moves', { from, to }, 'rename')
}

export async function deleteFile(path: string): Promise<void> {
  await sendJson('DELETE', `/api/files/${encodeDocPath(path)}`, undefined, 'delete')
}
