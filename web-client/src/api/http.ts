// How the client talks HTTP to the server (protocol-spec/http.md): `apiFetch` adds the
// session's token to every call (or, with sign-in off, the browser's chosen name), a 401 ends
// the session, and a refusal's JSON error body becomes an `ApiError`. The endpoint wrappers live
// beside this file (docs.ts, files.ts, activity.ts); the shapes they return are in types.ts.
import { storedUserName } from '../auth/profile'
import { currentSession, signOut } from '../auth/session'

/** The JSON error body every endpoint answers a refusal with. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string
  ) {
    super(message)
  }
}

/**
 * The name this browser goes by with sign-in off (the identity dialog's), percent-encoded for
 * the `X-Tandem-User` header: the server names the author of uploads, versions and restores
 * with it (unverified, like presence). Null when signed in, or when no name is stored.
 */
export function anonymousName(): string | null {
  if (currentSession() !== null) return null
  const name = storedUserName()
  return name !== null ? encodeURIComponent(name) : null
}

/** `fetch` with the session's token; a 401 ends the session. */
export async function apiFetch(path: string, init: RequestInit = {}): Promise<Response> {
  const token = currentSession()?.token
  const headers = new Headers(init.headers)
  if (token !== undefined) headers.set('authorization', `Bearer ${token}`)
  const name = token === undefined ? anonymousName() : null
  if (name !== null) headers.set('x-tandem-user', name)
  const response = await fetch(path, { ...init, headers })
  // Only if the refused token is still the current one: a renewal may have replaced it meanwhile.
  if (response.status === 401 && token !== undefined && currentSession()?.token === token) signOut()
  return response
}

async function failure(response: Response, what: string): Promise<ApiError> {
  try {
    const body = (await response.json()) as { error?: string; message?: string }
    return new ApiError(response.status, body.error ?? 'error', body.message ?? `${what}: ${response.status}`)
  } catch {
    return new ApiError(response.status, 'error', `${what}: ${response.status}`)
  }
}

/** `GET path` as JSON; `what` names the call in the error a refusal becomes. */
export async function getJson<T>(path: string, what: string): Promise<T> {
  const response = await apiFetch(path, { headers: { accept: 'application/json' } })
  if (!response.ok) throw await failure(response, what)
  return (await response.json()) as T
}

/** `method path` with a JSON body (none when `body` is undefined); null for a 204. */
export async function sendJson<T>(method: string, path: string, body: unknown, what: string): Promise<T | null> {
  const response = await apiFetch(path, {
    method,
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  if (!response.ok) throw await failure(response, what)
  return response.status === 204 ? null : ((await response.json()) as T)
}

/** The words to show for a failed call. */
export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}
