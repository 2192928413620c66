// Clients for the Hocuspocus tests: the unmodified `@hocuspocus/provider` (pinned in
// package.json) over `ws`, one shared HocuspocusProviderWebsocket per socket, against `GET /ws`;
// and raw Hocuspocus frames for the hostile tests.
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import WebSocket from 'ws'
import { HocuspocusProvider, HocuspocusProviderWebsocket } from '@hocuspocus/provider'
import { waitUntil } from './client.mjs'

/** The Hocuspocus endpoint of `server`: the WebSocket path without a document name. */
export function hocuspocusUrl (server) {
  return `ws://127.0.0.1:${server.port}/ws`
}

/**
 * One shared socket (`HocuspocusProviderWebsocket`) to `server`; `closes` records its close
 * events, so a test can tell whether the socket ever dropped.
 */
export function openSocket (s, server, options = {}) {
  const socket = new HocuspocusProviderWebsocket({
    url: hocuspocusUrl(server),
    WebSocketPolyfill: WebSocket,
    // Reconnect quickly in tests that restart the server.
    delay: 100,
    minDelay: 100,
    maxDelay: 500,
    ...options
  })
  const handle = { socket, closes: [] }
  socket.on('close', ({ event }) => handle.closes.push({ code: event?.code, reason: event?.reason?.toString() }))
  // Registered as a client: the scenario destroys clients before it kills the servers, so no
  // reconnect is pending when the test ends.
  s.clients.push({ docName: 'shared socket', provider: socket, doc: { destroy () {} } })
  return handle
}

/**
 * A Y.Doc attached to `name` through an unmodified HocuspocusProvider, on `socket` (a handle
 * from `openSocket`) or on a socket of its own. Records its auth answers and unsynced counts.
 */
export function attach (s, server, name, { socket, token = '', ...options } = {}) {
  const doc = new Y.Doc()
  const provider = new HocuspocusProvider({
    name,
    document: doc,
    token,
    ...(socket ? { websocketProvider: socket.socket } : { url: hocuspocusUrl(server), WebSocketPolyfill: WebSocket }),
    ...options
  })
  if (socket) provider.attach()
  const client = { doc, provider, name, text: doc.getText('t'), scopes: [], denials: [], unsynced: [] }
  provider.on('authenticated', ({ scope }) => client.scopes.push(scope))
  provider.on('authenticationFailed', ({ reason }) => client.denials.push(reason))
  provider.on('unsyncedChanges', ({ number }) => client.unsynced.push(number))
  // A provider destroyed twice reconnects its socket: destroy once, whoever asks first.
  const destroyOnce = provider.destroy.bind(provider)
  let destroyed = false
  provider.destroy = () => {
    if (destroyed) return
    destroyed = true
    destroyOnce()
  }
  s.clients.push(client)
  return client
}

/** Resolves once the provider is authenticated and synced, with nothing left unacknowledged. */
export function settled (client, timeoutMs = 15000) {
  return waitUntil(() => client.provider.isAuthenticated && client.provider.synced && client.provider.unsyncedChanges === 0,
    timeoutMs, () => `${client.name} settled (scopes ${client.scopes}, denials ${client.denials}, unsynced ${client.provider.unsyncedChanges})`)
}

/** A raw `ws` socket on `/ws`, resolved once open; collects binary messages and the close. */
export function openRawHocuspocus (s, server) {
  const ws = new WebSocket(hocuspocusUrl(server))
  ws.received = []
  ws.on('error', () => {})
  ws.on('message', (data, isBinary) => ws.received.push(isBinary ? new Uint8Array(data) : data.toString()))
  ws.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })))
  s.own({ stop: async () => ws.terminate() })
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws))
    ws.closed.then(({ code }) => reject(new Error(`raw hocuspocus socket closed (${code}) before opening`)))
  })
}

/** A Hocuspocus frame: `[varstring key][varuint type]` then `body(encoder)`. */
export function frame (key, type, body = () => {}) {
  const encoder = encoding.createEncoder()
  encoding.writeVarString(encoder, key)
  encoding.writeVarUint(encoder, type)
  body(encoder)
  return encoding.toUint8Array(encoder)
}

/** An Auth frame carrying `token` for `key`, as the provider sends it. */
export function authFrame (key, token = '') {
  return frame(key, 2, (encoder) => {
    encoding.writeVarUint(encoder, 0)
    encoding.writeVarString(encoder, token)
    encoding.writeVarString(encoder, '4.7.0')
  })
}

export { Y }
