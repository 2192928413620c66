// Signing in, when the server asks for it (protocol-spec/auth.md). `GET /api/auth` says whether
// it does. With `jwt`, the session (token, expiry, account id and name) is kept in localStorage,
// every API call carries `Authorization: Bearer <token>` (`apiFetch`, api/http.ts), and a timer
// renews the token through `POST /api/token/refresh` at about 80% of its lifetime. Any 401 drops
// the session; the page then shows the sign-in form again (main.ts). With `none` there is no
// token anywhere. This module imports nothing of the client's own but the role rule, so every
// other part may depend on it.
//
// The token's payload is read (not verified: the server does that) for three things only: its
// lifetime (`iat`..`exp`, so a wrong local clock does not matter), the role it grants on a
// document, so a read-only document opens read-only, and its `admin` flag, so only
// administrators are offered the admin view.

import { type Role, roleFromPatterns } from './roles'

export type AuthMode = 'none' | 'jwt'

export interface Session {
  token: string
  /** Expiry as the server states it, seconds since the Unix epoch. */
  expiresAt: number
  sub: string
  name: string
  /** When this browser received the token, and when it expires, both by the local clock. */
  receivedMs: number
  expiresMs: number
}

/** Why signing in failed, in words the sign-in page shows as they are. */
export class SignInError extends Error {
  constructor(
    readonly kind: 'bad_credentials' | 'too_many_attempts' | 'network' | 'server',
    message: string,
    readonly retryAfterS = 0
  ) {
    super(message)
  }
}

const SESSION_KEY = 'tandem.session'
const MODE_KEY = 'tandem.auth'
/** Renew when this share of the token's lifetime has passed. */
const RENEW_AT = 0.8
/** A renewal that failed for want of a network is tried again after this. */
const RENEW_RETRY_MS = 10000
/** `GET /api/auth` is given this long before the remembered mode is used (offline start). */
const DISCOVER_TIMEOUT_MS = 4000

let mode: AuthMode = 'none'
let session: Session | null = null
let renewTimer: ReturnType<typeof setTimeout> | undefined
let renewing: Promise<boolean> | null = null
const tokenListeners = new Set<(token: string) => void>()
let signedOutHandler: () => void = () => {}

/** Asks the server whether it wants a token; offline, the answer of the last visit is used. */
export async function discoverAuth(): Promise<AuthMode> {
  try {
    const response = await fetch('/api/auth', {
      headers: { accept: 'application/json' },
      signal: AbortSignal.timeout(DISCOVER_TIMEOUT_MS)
    })
    if (response.ok) {
      const body = (await response.json()) as { mode?: string }
      mode = body.mode === 'jwt' ? 'jwt' : 'none'
      remember(MODE_KEY, mode)
    } else if (response.status === 404) {
      mode = 'none' // a server without authentication support
    } else {
      mode = recall(MODE_KEY) === 'jwt' ? 'jwt' : 'none'
    }
  } catch {
    mode = recall(MODE_KEY) === 'jwt' ? 'jwt' : 'none'
  }
  session = mode === 'jwt' ? loadSession() : null
  if (session !== null && session.expiresMs <= Date.now()) {
    forget(SESSION_KEY) // expired while away: sign in again
    session = null
  }
  return mode
}

export function authMode(): AuthMode {
  return mode
}

/** The signed-in account, or null (always null with authentication off). */
export function currentSession(): Session | null {
  return session
}

/** Whether the page can go ahead: no sign-in needed, or a session that has not expired. */
export function hasAccess(): boolean {
  return mode === 'none' || (session !== null && session.expiresMs > Date.now())
}

/** Called once the session is gone (signed out here or in another tab, or refused by the server). */
export function onSignedOut(handler: () => void): void {
  signedOutHandler = handler
}

/** Calls `listener` with every new token (renewals here or in another tab). */
export function onTokenChange(listener: (token: string) => void): () => void {
  tokenListeners.add(listener)
  return () => tokenListeners.delete(listener)
}

/** `POST /api/login`; on success the session is stored and kept fresh. */
export async function signIn(username: string, password: string): Promise<Session> {
  let response: Response
  try {
    response = await fetch('/api/login', {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify({ username, password })
    })
  } catch {
    throw new SignInError('network', 'Cannot reach the server. Check your connection and try again.')
  }
  if (response.status === 401) throw new SignInError('bad_credentials', 'Wrong username or password.')
  if (response.status === 429) {
    const wait = retryAfterSeconds(response.headers.get('retry-after'))
    throw new SignInError('too_many_attempts', `Too many sign-in attempts. Try again in ${waitText(wait)}.`, wait)
  }
  if (response.status === 503) {
    const wait = retryAfterSeconds(response.headers.get('retry-after'))
    throw new SignInError('server', `The server is busy. Try again in ${waitText(wait)}.`)
  }
  if (!response.ok)
    throw new SignInError('server', `The server could not sign you in (error ${response.status}). Try again later.`)
  adopt(await readSession(response))
  return session!
}

/** Ends the session here and in every other tab of this site. */
export function signOut(): void {
  forget(SESSION_KEY)
  endSession()
}

/** Starts the renewal timer, and follows sign-ins, renewals and sign-outs in other tabs. */
export function keepSessionFresh(): void {
  scheduleRenewal()
  window.addEventListener('storage', (event) => {
    if (event.key !== SESSION_KEY || mode !== 'jwt') return
    const next = loadSession()
    if (next === null) endSession()
    else if (next.token !== session?.token) setSession(next)
  })
  // Timers of hidden tabs are throttled: check again when the tab is seen.
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') scheduleRenewal()
  })
}

/**
 * Makes sure the token has most of its lifetime left, renewing it if not (after the server
 * closed a connection with 4401, or could not be joined). Resolves false if there is no session
 * or the server could not be asked; a refused renewal ends the session.
 */
export async function ensureFreshToken(force = false): Promise<boolean> {
  if (session === null) return false
  if (!force && Date.now() < renewAtMs(session)) return true
  return await renew()
}

/** The role the session's token grants on `doc`; undefined when it cannot be told. */
export function roleFor(doc: string): Role | null | undefined {
  if (session === null) return undefined
  const claims = decodeClaims(session.token)
  if (claims === null || typeof claims.docs !== 'object' || claims.docs === null) return undefined
  return roleFromPatterns(claims.docs as Record<string, unknown>, doc)
}

/**
 * Whether this browser may see the admin view (`/admin`): always with sign-in off (the server
 * lets anyone in then), otherwise when the session's token carries `"admin": true`. Only decides
 * what to show; the server checks the token on every admin call.
 */
export function isAdmin(): boolean {
  if (mode === 'none') return true
  if (session === null) return false
  return decodeClaims(session.token)?.admin === true
}

function decodeClaims(token: string): Record<string, unknown> | null {
  const payload = token.split('.')[1]
  if (payload === undefined) return null
  try {
    const base64 = payload
      .replace(/-/g, '+')
      .replace(/_/g, '/')
      .padEnd(Math.ceil(payload.length / 4) * 4, '=')
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))
    const claims: unknown = JSON.parse(new TextDecoder().decode(bytes))
    return typeof claims === 'object' && claims !== null ? (claims as Record<string, unknown>) : null
  } catch {
    return null
  }
}

function renewAtMs(s: Session): number {
  return s.receivedMs + RENEW_AT * (s.expiresMs - s.receivedMs)
}

function scheduleRenewal(): void {
  clearTimeout(renewTimer)
  if (session === null) return
  const delay = Math.max(0, renewAtMs(session) - Date.now())
  // setTimeout keeps at most 2^31-1 ms; a later renewal is rescheduled on the way.
  renewTimer = setTimeout(
    () => {
      if (session !== null && Date.now() >= renewAtMs(session)) void renew()
      else scheduleRenewal()
    },
    Math.min(delay, 2 ** 31 - 1)
  )
}

/** One renewal at a time; concurrent callers share it. */
function renew(): Promise<boolean> {
  renewing ??= (async () => {
    const token = session?.token
    if (token === undefined) return false
    try {
      const response = await fetch('/api/token/refresh', {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, accept: 'application/json' }
      })
      if (session?.token !== token) return session !== null // another tab renewed or signed out meanwhile
      // 401: the token or the account is gone; other 4xx (a token this server did not sign):
      // renewing will never work. Either way, sign in again.
      if (response.status >= 400 && response.status < 500) {
        signOut()
        return false
      }
      if (!response.ok) throw new Error(`refresh: ${response.status}`)
      adopt(await readSession(response))
      return true
    } catch {
      // No network, or a server error: the token is still good until it expires; try again
      // later if it is due (a forced early renewal just waits for the usual time).
      clearTimeout(renewTimer)
      renewTimer = setTimeout(scheduleRenewal, RENEW_RETRY_MS)
      return false
    } finally {
      renewing = null
    }
  })()
  return renewing
}

async function readSession(response: Response): Promise<Session> {
  const body = (await response.json()) as { token: string; expires_at: number; sub: string; name?: string }
  const claims = decodeClaims(body.token)
  const iat = typeof claims?.iat === 'number' ? claims.iat : null
  // The lifetime as the server sees it, laid on the local clock.
  const lifetimeS = iat !== null ? body.expires_at - iat : body.expires_at - Date.now() / 1000
  const receivedMs = Date.now()
  return {
    token: body.token,
    expiresAt: body.expires_at,
    sub: body.sub,
    name: body.name?.trim() || body.sub,
    receivedMs,
    expiresMs: receivedMs + Math.max(0, lifetimeS) * 1000
  }
}

function adopt(next: Session): void {
  remember(SESSION_KEY, JSON.stringify(next))
  setSession(next)
}

function setSession(next: Session): void {
  session = next
  scheduleRenewal()
  for (const listener of tokenListeners) listener(next.token)
}

function endSession(): void {
  clearTimeout(renewTimer)
  if (session === null) return
  session = null
  signedOutHandler()
}

function loadSession(): Session | null {
  try {
    const stored = JSON.parse(recall(SESSION_KEY) ?? 'null') as Partial<Session> | null
    if (
      stored &&
      typeof stored.token === 'string' &&
      typeof stored.sub === 'string' &&
      typeof stored.name === 'string' &&
      typeof stored.expiresAt === 'number' &&
      typeof stored.receivedMs === 'number' &&
      typeof stored.expiresMs === 'number'
    ) {
      return stored as Session
    }
  } catch {
    // Unreadable: sign in again.
  }
  return null
}

/** `Retry-After` as seconds (it may also be an HTTP date); at least 1. */
function retryAfterSeconds(header: string | null): number {
  if (header === null) return 60
  const seconds = Number(header)
  if (Number.isFinite(seconds)) return Math.max(1, Math.ceil(seconds))
  const date = Date.parse(header)
  return Number.isNaN(date) ? 60 : Math.max(1, Math.ceil((date - Date.now()) / 1000))
}

export function waitText(seconds: number): string {
  if (seconds < 90) return `${seconds} second${seconds === 1 ? '' : 's'}`
  const minutes = Math.ceil(seconds / 60)
  return `${minutes} minutes`
}

function remember(key: string, value: string): void {
  try {
    localStorage.setItem(key, value)
  } catch {
    // Private mode may refuse storage; the session then lasts for this tab only.
  }
}

function recall(key: string): string | null {
  try {
    return localStorage.getItem(key)
  } catch {
    return null
  }
}

function forget(key: string): void {
  try {
    localStorage.removeItem(key)
  } catch {
    // Nothing stored, nothing to remove.
  }
}
