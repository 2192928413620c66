// Presence (awareness) is relayed to the other peers, disappears as soon as its connection goes,
// and belongs to the connection that introduced it. Every server here runs with the default
// 30 s --awareness-timeout, so a removal seen within 3 s comes from the disconnect.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { scenario } from '../lib/server.mjs'
import { synced, waitUntil, destroy, awarenessFrame, syncStep1Frame, Y } from '../lib/client.mjs'

const REMOVAL_DEADLINE_MS = 3000
const ADA = { name: 'Ada', color: '#30bced' }

function userOf (client, clientID) {
  return client.provider.awareness.getStates().get(clientID)?.user
}

test('presence reaches the other client and is removed when its client disconnects', { timeout: 60000 }, scenario(async (s) => {
  const server = await s.startServer()
  const a = s.connect(server, 'presence/room')
  const b = s.connect(server, 'presence/room')
  await Promise.all([synced(a), synced(b)])
  a.provider.awareness.setLocalStateField('user', ADA)
  const aId = a.doc.clientID
  await waitUntil(() => userOf(b, aId)?.name === 'Ada', 10000, 'B to see A')
  assert.deepEqual(userOf(b, aId), ADA)

  const leftAt = Date.now()
  destroy(a)
  await waitUntil(() => !b.provider.awareness.getStates().has(aId), REMOVAL_DEADLINE_MS,
    'B to drop A after A disconnected')
  assert.ok(Date.now() - leftAt < REMOVAL_DEADLINE_MS)
}))

test('presence of a client whose process is killed is removed by the server within seconds', { timeout: 60000 }, scenario(async (s) => {
  const server = await s.startServer()
  const b = s.connect(server, 'presence/crash')
  await synced(b)
  // A stock client in its own process; SIGKILL gives it no chance to send its own removal, so
  // only the server, seeing the socket close, can tell B.
  const peerScript = fileURLToPath(new URL('../lib/presence-peer.mjs', import.meta.url))
  const peer = s.track(spawn(process.execPath, [peerScript, server.wsUrl, 'presence/crash', 'Grace', '#ee6352'], {
    stdio: ['ignore', 'pipe', 'inherit']
  }))
  let peerOut = ''
  peer.stdout.on('data', (chunk) => { peerOut += chunk })
  await waitUntil(() => peerOut.includes('\n'), 15000, 'the peer process to sync')
  const peerId = JSON.parse(peerOut.split('\n')[0]).clientID
  await waitUntil(() => userOf(b, peerId)?.name === 'Grace', 10000, 'B to see the peer process')

  const killedAt = Date.now()
  peer.kill('SIGKILL')
  await waitUntil(() => !b.provider.awareness.getStates().has(peerId), REMOVAL_DEADLINE_MS,
    'B to drop the killed peer')
  assert.ok(Date.now() - killedAt < REMOVAL_DEADLINE_MS)
}))

test('a connection cannot overwrite or remove another client\'s presence', { timeout: 60000 }, scenario(async (s) => {
  const server = await s.startServer()
  const doc = 'presence/forgery'
  const a = s.connect(server, doc)
  const b = s.connect(server, doc)
  await Promise.all([synced(a), synced(b)])
  a.provider.awareness.setLocalStateField('user', ADA)
  const aId = a.doc.clientID
  await waitUntil(() => userOf(b, aId)?.name === 'Ada', 10000, 'B to see A')
  const clockBefore = b.provider.awareness.meta.get(aId).clock
  // Every change B's view of A goes through from here on.
  const seenByB = []
  b.provider.awareness.on('change', ({ added, updated, removed }) => {
    if ([...added, ...updated, ...removed].includes(aId)) seenByB.push(b.provider.awareness.getStates().get(aId) ?? null)
  })

  // The forger claims A's client id with higher clocks: first a different state, then a removal.
  const forger = await s.openRaw(server, doc)
  forger.send(awarenessFrame(aId, clockBefore + 10, { user: { name: 'Mallory', color: '#000000' } }))
  forger.send(awarenessFrame(aId, clockBefore + 11, null))
  // The server handles one connection's messages in order: once it answers a sync step 1 sent
  // after the forgeries (or closes the forger), the forgeries have been handled.
  const nBefore = forger.received.length
  forger.send(syncStep1Frame(new Y.Doc()))
  let forgerClose = null
  forger.closed.then((close) => { forgerClose = close })
  await waitUntil(() => forgerClose !== null || forger.received.slice(nBefore).some((m) => m[0] === 0 && m[1] === 1), 10000,
    'the server to answer the forger\'s sync step 1')

  // A client that joins now gets the server's view of A, and whatever the server relayed to B
  // about the forgery went out before C's presence, which B waits for.
  const c = s.connect(server, doc)
  c.provider.awareness.setLocalStateField('user', { name: 'Charles', color: '#8ac926' })
  await synced(c)
  await waitUntil(() => userOf(b, c.doc.clientID)?.name === 'Charles', 10000, 'B to see C')
  await waitUntil(() => userOf(c, aId) !== undefined, 10000, 'C to receive A\'s presence')
  assert.deepEqual(userOf(c, aId), ADA, 'the server kept A\'s own state')
  assert.deepEqual(userOf(b, aId), ADA, 'B still sees A\'s own state')
  assert.equal(b.provider.awareness.meta.get(aId).clock, clockBefore, 'B never got a forged clock')
  assert.deepEqual(seenByB, [], 'B\'s view of A never changed')

  // A's own next change still gets through: the forged clocks poisoned nothing.
  a.provider.awareness.setLocalStateField('user', { ...ADA, name: 'Ada Lovelace' })
  await waitUntil(() => userOf(b, aId)?.name === 'Ada Lovelace' && userOf(c, aId)?.name === 'Ada Lovelace', 10000,
    'A\'s own update to reach B and C')
}))
