// Presence: relayed, owned by its connection, removed when the connection goes.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import * as encoding from 'lib0/encoding'
import { TandemServer } from '../lib/server.mjs'
import { connect, synced, waitUntil, destroy, WebSocket } from '../lib/client.mjs'

let server
// The default 30 s awareness timeout: removals seen within 3 s come from the disconnect.
before(async () => { server = await new TandemServer().start() })
after(async () => { await server.cleanup() })

test('awareness appears, then disappears when its owner disconnects', async () => {
  const a = connect(server, 'presence/room')
  const b = connect(server, 'presence/room')
  try {
    await Promise.all([synced(a), synced(b)])
    a.provider.awareness.setLocalStateField('user', { name: 'Ada', color: '#30bced' })
    const aId = a.doc.clientID
    await waitUntil(() => b.provider.awareness.getStates().get(aId)?.user?.name === 'Ada', 10000, 'Ada visible to B')
    destroy(a)
    const gone = Date.now()
    await waitUntil(() => !b.provider.awareness.getStates().has(aId), 3000, 'Ada removed on disconnect')
    assert.ok(Date.now() - gone < 3000)
  } finally { destroy(b) }
})

function awarenessFrame (clientID, clock, state) {
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

test('a connection cannot overwrite or delete another client\'s presence', async () => {
  const a = connect(server, 'presence/forgery')
  const b = connect(server, 'presence/forgery')
  let raw = null
  try {
    await Promise.all([synced(a), synced(b)])
    a.provider.awareness.setLocalStateField('user', { name: 'Ada' })
    const aId = a.doc.clientID
    await waitUntil(() => b.provider.awareness.getStates().get(aId)?.user?.name === 'Ada', 10000, 'Ada visible')
    raw = new WebSocket(`${server.wsUrl}/presence/forgery`)
    await new Promise((resolve, reject) => { raw.once('open', resolve); raw.once('error', reject) })
    const clock = b.provider.awareness.meta.get(aId).clock
    raw.send(awarenessFrame(aId, clock + 10, { user: { name: 'Mallory' } }))
    raw.send(awarenessFrame(aId, clock + 11, null))
    // The server handles one connection's messages in order: once it answers a sync step 1
    // sent after the forgeries, the forgeries have been handled.
    const answered = new Promise((resolve) => raw.on('message', (data) => {
      const bytes = new Uint8Array(data)
      if (bytes[0] === 0 && bytes[1] === 1) resolve()
    }))
    raw.send(new Uint8Array([0, 0, 1, 0]))
    await answered
    // A third client that joins later sees the true state; B keeps it too.
    const c = connect(server, 'presence/forgery')
    try {
      await synced(c)
      await waitUntil(() => c.provider.awareness.getStates().get(aId)?.user?.name === 'Ada', 10000, 'C sees Ada')
      assert.equal(b.provider.awareness.getStates().get(aId)?.user?.name, 'Ada')
    } finally { destroy(c) }
  } finally { raw?.close(); destroy(a, b) }
})
