// Clients for the interop tests: unmodified yjs + y-websocket, plus raw `ws` sockets for the
// tests that deliberately send hostile frames, and small helpers to wait on conditions.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import * as syncProtocol from 'y-protocols/sync'
import * as encoding from 'lib0/encoding'
import WebSocket from 'ws'

// Every WebsocketProvider adds a process 'exit' listener; some tests open a hundred.
process.setMaxListeners(300)

const RAW_OPEN_TIMEOUT_MS = 10000
const RAW_CLOSE_TIMEOUT_MS = 10000

/**
 * A Y.Doc connected to `docName` through a stock WebsocketProvider (Node 20 needs the `ws`
 * polyfill). `statuses` and `closes` record the provider's 'status' and 'connection-close'
 * events, so a test can tell whether the connection ever dropped and with which close code.
 */
export function connect (server, docName, options = {}) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(server.wsUrl, docName, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    ...options
  })
  const client = { doc, provider, docName, text: doc.getText('t'), statuses: [], closes: [] }
  provider.on('status', ({ status }) => client.statuses.push(status))
  provider.on('connection-close', (event) => {
    client.closes.push(event === null ? { local: true } : { code: event.code, reason: event.reason })
  })
  return client
}

/** Resolves once the provider has synced with the server. */
export function synced (client, timeoutMs = 15000) {
  return waitUntil(() => client.provider.synced, timeoutMs, () => `${client.docName} synced (statuses ${client.statuses})`)
}

/** Disconnects and frees clients; a client already destroyed is left alone. */
export function destroy (...clients) {
  for (const client of clients) {
    if (client.destroyed) continue
    client.destroyed = true
    client.provider.destroy()
    client.doc.destroy()
  }
}

/**
 * Waits until `predicate()` (sync or async) is true, re-checking every few milliseconds: a wait
 * on a condition with a deadline, never a fixed sleep. `what` (a string or a function giving
 * the current state) names the condition in the timeout error.
 */
export async function waitUntil (predicate, timeoutMs, what = 'condition') {
  const deadline = Date.now() + timeoutMs
  while (!(await predicate())) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === 'function' ? what() : what}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

/** Resolves on the next turn of the event loop, so queued socket events get handled. */
export function nextTurn () {
  return new Promise((resolve) => setImmediate(resolve))
}

/** Deterministic PRNG (mulberry32): a fixed seed gives the same edits on every run. */
export function prng (seed) {
  let a = seed >>> 0
  const next = () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  next.int = (n) => Math.floor(next() * n)
  next.letters = (n) => Array.from({ length: n }, () => String.fromCharCode(97 + next.int(26))).join('')
  return next
}

/** Every match of `pattern` (a global RegExp) in `text`. */
export function markersIn (text, pattern) {
  return text.match(pattern) || []
}

/** A Y.Doc holding the state of a Yjs v1 update, e.g. from `GET /api/docs/<name>`. */
export function docFromUpdate (update) {
  const doc = new Y.Doc()
  Y.applyUpdate(doc, update)
  return doc
}

/**
 * A raw `ws` socket on `/ws/<docName>`. `ws.closed` resolves with the close code and reason
 * the server sent (1006 if the TCP connection ended without a close frame); `ws.received`
 * collects every binary message.
 */
export function openRaw (server, docName) {
  const ws = new WebSocket(`${server.wsUrl}/${docName}`)
  ws.received = []
  ws.errors = []
  ws.on('error', (err) => ws.errors.push(err))
  ws.on('message', (data, isBinary) => ws.received.push(isBinary ? new Uint8Array(data) : data.toString()))
  ws.closed = new Promise((resolve) => {
    ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }))
  })
  const opened = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`raw socket to ${docName} did not open`)), RAW_OPEN_TIMEOUT_MS)
    ws.once('open', () => { clearTimeout(timer); resolve(ws) })
    ws.closed.then(({ code }) => { clearTimeout(timer); reject(new Error(`raw socket to ${docName} closed (${code}) before opening: ${ws.errors.join('; ')}`)) })
  })
  return { ws, opened }
}

/** The close a raw socket received, or an error if none came within the timeout. */
export async function closeOf (ws, timeoutMs = RAW_CLOSE_TIMEOUT_MS) {
  let timer
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`no close within ${timeoutMs} ms`)), timeoutMs)
  })
  try {
    return await Promise.race([ws.closed, timeout])
  } finally { clearTimeout(timer) }
}

// Frames built with lib0/y-protocols, for the raw sockets of the hostile tests.

/** An awareness message with one entry (`state` null removes the client). */
export function awarenessFrame (clientID, clock, state) {
  const inner = encoding.createEncoder()
  encoding.writeVarUint(inner, 1)
  encoding.writeVarUint(inner, clientID)
  encoding.writeVarUint(inner, clock)
  encoding.writeVarString(inner, JSON.stringify(state))
  const outer = encoding.createEncoder()
  encoding.writeVarUint(outer, 1) // messageAwareness
  encoding.writeVarUint8Array(outer, encoding.toUint8Array(inner))
  return encoding.toUint8Array(outer)
}

/** A sync update message carrying `update`. */
export function updateFrame (update) {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, 0) // messageSync
  syncProtocol.writeUpdate(encoder, update)
  return encoding.toUint8Array(encoder)
}

/** A sync step 1 message with `doc`'s state vector. */
export function syncStep1Frame (doc) {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, 0) // messageSync
  syncProtocol.writeSyncStep1(encoder, doc)
  return encoding.toUint8Array(encoder)
}

export { Y, WebSocket }
