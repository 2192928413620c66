// A stock y-websocket client in its own process, for tests that need a client to die without
// saying goodbye (SIGKILL): `node presence-peer.mjs <ws-url> <doc> <name> <color>`.
// Prints one JSON line `{"clientID":N}` once it is synced and has published its presence.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const [wsUrl, docName, name, color] = process.argv.slice(2)
const doc = new Y.Doc()
const provider = new WebsocketProvider(wsUrl, docName, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
provider.awareness.setLocalStateField('user', { name, color })
provider.once('sync', () => {
  process.stdout.write(JSON.stringify({ clientID: doc.clientID }) + '\n')
})
