// One document's connections: the WebSocket provider (an unmodified y-websocket client), the
// IndexedDB copy that keeps edits across reloads and offline spells, and the state the status
// pill shows: how we are connected, and whether the server has stored all of this browser's edits.
//
// "Stored" is asked of the server, not guessed: after local changes the client posts a Yjs
// snapshot (state vector and delete set) to `POST /api/docs/{name}/covers`, which answers once
// everything the server accepted before is durable. Deletions count too: they leave the state
// vector unchanged, which is why the snapshot and not the state vector is sent.
//
// With sign-in on, the token travels as the `token` query parameter (y-websocket's `params`,
// which it reads again on every connect). The server closes a connection whose token expired
// with 4401; y-websocket treats 4400-4499 as final and stops, so this class renews the token
// (auth/session.ts) and then reconnects. A read-only token's updates are answered with the
// y-protocols "permission denied" message, which y-websocket only logs: it is caught here,
// through provider.ts, the only file that touches the two libraries' internals.
import * as Y from 'yjs'
import { serverCovers } from '../api/docs'
import { encodeDocPath } from '../api/names'
import { authMode, currentSession, ensureFreshToken, onTokenChange } from '../auth/session'
import { IndexeddbPersistence, onPermissionDenied, WebsocketProvider, whenLocalSettled } from './provider'

export type Network = 'connecting' | 'connected' | 'reconnecting' | 'offline'

export interface SyncState {
  network: Network
  /** Local changes (or a not yet read IndexedDB copy) the server has not confirmed as stored. */
  unsaved: boolean
}

/** Pause after a change before asking the server, and between unanswered asks. */
const CHECK_DELAY_MS = 300
const RETRY_DELAY_MS = 1000
/** The close code of a connection whose token expired (protocol-spec/auth.md). */
const CLOSE_TOKEN_EXPIRED = 4401
/** After connection attempts that never opened, the session is checked at most this often. */
const SESSION_CHECK_MS = 30000

function webSocketBase(): string {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:'
  return `${scheme}//${location.host}/ws`
}

export class DocConnection {
  readonly provider: WebsocketProvider
  readonly local: IndexeddbPersistence
  private readonly listeners = new Set<(state: SyncState) => void>()
  private everConnected = false
  private localLoaded = false
  /** Bumped by every change that did not come from the server. */
  private changeVersion = 0
  /** The highest `changeVersion` the server confirmed as stored. */
  private storedVersion = 0
  private checkTimer: ReturnType<typeof setTimeout> | undefined
  private checking = false
  private destroyed = false
  /** Closed with 4401: reconnect as soon as a renewed token is there. */
  private waitingForToken = false
  private opened = false
  private lastSessionCheck = 0
  /**
   * The last connection attempt failed and a plain request to the server failed too. The
   * browser's `navigator.onLine` cannot be trusted for this: it stays true on a page opened
   * from the service worker while the network is down, and on a LAN without a default route.
   */
  private unreachable = false
  private probing = false
  private readonly stopTokenWatch: () => void
  private readonly deniedListeners = new Set<(reason: string) => void>()
  private readonly onOnline = (): void => {
    this.provider.connect()
    this.emit()
  }
  private readonly onOffline = (): void => {
    this.provider.disconnect()
    this.emit()
  }

  constructor(
    readonly name: string,
    readonly doc: Y.Doc
  ) {
    this.local = new IndexeddbPersistence(`tandem:${name}`, doc)
    // IndexedDB may be unavailable (private mode, quota): then there is no local copy to wait for.
    whenLocalSettled(this.local, () => {
      this.localLoaded = true
      this.emit()
    })
    // The room name is the URL path after /ws/: percent-encode each segment, keep the slashes.
    // Always try to connect: navigator.onLine is false on machines with only a loopback or LAN
    // link, where the server may well be reachable. The 'offline' event disconnects (the network
    // went away), 'online' reconnects. No BroadcastChannel: another tab's edits must reach the
    // server through that tab's own connection, or this tab could call them saved.
    const token = currentSession()?.token
    this.provider = new WebsocketProvider(webSocketBase(), encodeDocPath(name), doc, {
      maxBackoffTime: 5000,
      disableBc: true,
      params: token !== undefined ? { token } : {}
    })
    this.stopTokenWatch = onTokenChange((next) => {
      this.provider.params = { token: next }
      if (this.waitingForToken && !this.destroyed) {
        this.waitingForToken = false
        this.provider.connect()
      }
    })
    this.provider.on('closed', ({ code }) => {
      if (code !== CLOSE_TOKEN_EXPIRED || this.destroyed) return
      // Usually the renewal timer has already put a new token in `params`; if not, renew first.
      this.waitingForToken = true
      void ensureFreshToken().then((fresh) => {
        if (fresh && this.waitingForToken && !this.destroyed) {
          this.waitingForToken = false
          this.provider.connect()
        }
      })
    })
    this.provider.on('connection-close', () => {
      if (!this.opened) this.probeReachable()
      // A refused upgrade looks like any network failure to a browser. If the server did not
      // let us in, ask it about the session (a refused renewal signs out); but not too often.
      if (this.opened || authMode() !== 'jwt' || Date.now() - this.lastSessionCheck < SESSION_CHECK_MS) return
      this.lastSessionCheck = Date.now()
      void ensureFreshToken(true)
    })
    // y-websocket's own handler only logs a denial.
    onPermissionDenied(this.provider, doc, (reason) => {
      for (const listener of this.deniedListeners) listener(reason)
    })
    this.provider.on('status', ({ status }: { status: string }) => {
      if (status === 'connected') {
        this.everConnected = true
        this.unreachable = false
      }
      this.opened = status === 'connected'
      this.emit()
    })
    this.provider.on('sync', (synced: boolean) => {
      if (synced) this.scheduleCheck(0)
      this.emit()
    })
    doc.on('update', (_update: Uint8Array, origin: unknown) => {
      if (origin === this.provider) return
      // Local edits, and edits IndexedDB kept from an earlier visit: both may be missing upstream.
      this.changeVersion++
      this.scheduleCheck(CHECK_DELAY_MS)
      this.emit()
    })
    window.addEventListener('online', this.onOnline)
    window.addEventListener('offline', this.onOffline)
  }

  get state(): SyncState {
    let network: Network
    if (this.provider.wsconnected && this.provider.synced) network = 'connected'
    else if (!navigator.onLine || this.unreachable) network = 'offline'
    else network = this.everConnected ? 'reconnecting' : 'connecting'
    // Until the local copy is read, edits from an earlier visit may still be missing upstream.
    const unsaved = !this.localLoaded || this.changeVersion > this.storedVersion
    return { network, unsaved }
  }

  /** Calls `listener` now and on every change of `state`. */
  subscribe(listener: (state: SyncState) => void): () => void {
    this.listeners.add(listener)
    listener(this.state)
    return () => this.listeners.delete(listener)
  }

  /** Calls `listener` when the server refuses this browser's changes (a read-only token). */
  onPermissionDenied(listener: (reason: string) => void): void {
    this.deniedListeners.add(listener)
  }

  /** After a failed attempt: is the server reachable at all? (The service worker lets /healthz through.) */
  private probeReachable(): void {
    if (this.probing || this.destroyed) return
    this.probing = true
    fetch('/healthz', { cache: 'no-store' }).then(
      () => this.setUnreachable(false),
      () => this.setUnreachable(true)
    )
  }

  private setUnreachable(unreachable: boolean): void {
    this.probing = false
    if (this.destroyed || this.opened || this.unreachable === unreachable) return
    this.unreachable = unreachable
    this.emit()
  }

  private emit(): void {
    const state = this.state
    for (const listener of this.listeners) listener(state)
  }

  private scheduleCheck(delayMs: number): void {
    if (this.checkTimer !== undefined || this.checking || this.destroyed) return
    this.checkTimer = setTimeout(() => {
      this.checkTimer = undefined
      void this.check()
    }, delayMs)
  }

  /** Asks the server whether it has stored everything this doc holds; retries until it has. */
  private async check(): Promise<void> {
    if (this.changeVersion <= this.storedVersion && this.localLoaded) return
    if (this.state.network !== 'connected') return // the next 'sync' event asks again
    this.checking = true
    const version = this.changeVersion
    let covered: boolean
    try {
      covered = await serverCovers(this.name, Y.encodeSnapshot(Y.snapshot(this.doc)))
    } catch {
      covered = false
    } finally {
      this.checking = false
    }
    if (covered) this.storedVersion = Math.max(this.storedVersion, version)
    this.emit()
    if (this.changeVersion > this.storedVersion) this.scheduleCheck(covered ? CHECK_DELAY_MS : RETRY_DELAY_MS)
  }

  destroy(): void {
    this.destroyed = true
    clearTimeout(this.checkTimer)
    window.removeEventListener('online', this.onOnline)
    window.removeEventListener('offline', this.onOffline)
    this.stopTokenWatch()
    this.deniedListeners.clear()
    this.provider.destroy()
    void this.local.destroy()
    this.listeners.clear()
  }
}
