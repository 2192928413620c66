// Unmodified yjs + y-websocket clients, and small helpers to wait on conditions.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

// Every WebsocketProvider adds a process 'exit' listener; the suites open many.
process.setMaxListeners(200)

/** A Y.Doc connected to `docName` through a stock WebsocketProvider. */
export function connect (server, docName, options = {}) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(server.wsUrl, docName, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    ...options
  })
  return { doc, provider, text: doc.getText('t') }
}

/** Resolves once the provider has synced with the server. */
export function synced (client, timeoutMs = 15000) {
  return waitUntil(() => client.provider.synced, timeoutMs, 'provider synced')
}

/** Polls `predicate` until it is true or the timeout expires (polling a condition, not a sleep). */
export async function waitUntil (predicate, timeoutMs = 15000, what = 'condition') {
  const deadline = Date.now() + timeoutMs
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

/** Deterministic PRNG (mulberry32) for reproducible random edits. */
export function prng (seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export function destroy (...clients) {
  for (const client of clients) {
    client.provider.destroy()
    client.doc.destroy()
  }
}

export { Y, WebSocket }
