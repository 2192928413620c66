// The one place that reaches into y-websocket's and y-indexeddb's internals. Both libraries are
// used unmodified (STYLE.md B.10: the client is just another y-websocket client), but two things
// we need are not part of their public API:
//
// 1. y-websocket only logs a y-protocols Auth "permission denied" message. Each provider copies
//    the module's handler table into `provider.messageHandlers` (y-websocket 3.1.0,
//    src/y-websocket.js: `this.messageHandlers = messageHandlers.slice()`), so replacing the
//    `messageAuth` entry of one provider lets us hear the denial without touching any other.
// 2. `IndexeddbPersistence.whenSynced` never settles when IndexedDB cannot be opened (private
//    mode, quota); its private `_db` promise (y-indexeddb 9.0.12, src/y-indexeddb.js) rejects then.
//
// Both are undocumented and may change in any release, so package.json pins exactly these two
// versions (no ^ or ~), and the unit test provider.test.ts fails when the installed versions
// differ from `PINNED`: whoever upgrades must re-read the two sources above and then update both.
import { IndexeddbPersistence } from 'y-indexeddb'
import { readAuthMessage } from 'y-protocols/auth'
import { messageAuth, WebsocketProvider } from 'y-websocket'
import type * as Y from 'yjs'

/** The versions this adapter was checked against. */
export const PINNED = { 'y-websocket': '3.1.0', 'y-indexeddb': '9.0.12' } as const

export { IndexeddbPersistence, WebsocketProvider }

/** Calls `onDenied` with the reason whenever the server refuses this provider's changes. */
export function onPermissionDenied(provider: WebsocketProvider, doc: Y.Doc, onDenied: (reason: string) => void): void {
  provider.messageHandlers[messageAuth] = (_encoder, decoder) => {
    readAuthMessage(decoder, doc, (_doc, reason) => onDenied(reason))
  }
}

/**
 * Calls `done` once (at most) when the IndexedDB copy has been read into the document, or when
 * there turns out to be no IndexedDB to read.
 */
export function whenLocalSettled(local: IndexeddbPersistence, done: () => void): void {
  let called = false
  const once = (): void => {
    if (called) return
    called = true
    done()
  }
  local.whenSynced.then(once, once)
  ;(local as unknown as { _db: Promise<unknown> })._db.catch(once)
}
