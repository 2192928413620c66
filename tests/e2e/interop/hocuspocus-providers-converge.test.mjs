// Unmodified @hocuspocus/provider 4 clients against `GET /ws`: two providers converge on random
// edits, a late joiner gets everything, twenty docs over one shared socket stay apart, presence
// comes and goes, and a y-websocket client and a provider on one doc see each other's edits
// and presence.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { synced, waitUntil, prng } from '../lib/client.mjs'
import { attach, openSocket, settled } from '../lib/hocuspocus.mjs'

test('two providers converge on random edits, and a late joiner gets the whole text', { timeout: 60000 }, scenario(async (s) => {
  const server = await s.startServer()
  const doc = 'team/hp-converge.md'
  const a = attach(s, server, doc)
  const b = attach(s, server, doc)
  await Promise.all([settled(a), settled(b)])
  assert.deepEqual(a.scopes, ['read-write'])

  const random = prng(20)
  for (let i = 0; i < 200; i++) {
    const client = random() < 0.5 ? a : b
    const length = client.text.length
    if (length > 0 && random() < 0.3) {
      client.text.delete(Math.floor(random() * length), 1)
    } else {
      client.text.insert(Math.floor(random() * (length + 1)), String.fromCharCode(97 + Math.floor(random() * 26)))
    }
  }
  await waitUntil(() => a.text.toString() === b.text.toString() && a.provider.unsyncedChanges === 0 && b.provider.unsyncedChanges === 0,
    15000, () => `convergence: ${JSON.stringify(a.text.toString())} vs ${JSON.stringify(b.text.toString())}`)
  assert.ok(a.text.length > 0)

  const late = attach(s, server, doc)
  await settled(late)
  await waitUntil(() => late.text.toString() === a.text.toString(), 10000, 'the late joiner has the text')
}))

test('twenty docs over one shared socket stay isolated, and closing one keeps the others', { timeout: 60000 }, scenario(async (s) => {
  const server = await s.startServer()
  const socketA = openSocket(s, server)
  const socketB = openSocket(s, server)
  const names = Array.from({ length: 20 }, (_, i) => `team/multi-${i}.md`)
  const left = names.map((name) => attach(s, server, name, { socket: socketA }))
  const right = names.map((name) => attach(s, server, name, { socket: socketB }))
  await Promise.all([...left, ...right].map((client) => settled(client)))
  left.forEach((client, i) => client.text.insert(0, `doc ${i} text`))
  for (let i = 0; i < names.length; i++) {
    await waitUntil(() => right[i].text.toString() === `doc ${i} text`, 10000, () => `doc ${i} on the other socket: ${right[i].text.toString()}`)
  }
  // Closing one doc (CLOSE) leaves the socket and the other docs working.
  left[0].provider.destroy()
  left[1].text.insert(0, 'still ')
  await waitUntil(() => right[1].text.toString() === 'still doc 1 text', 10000, 'doc 1 still syncs after doc 0 closed')
  assert.deepEqual(socketA.closes, [], 'the shared socket never closed')
  assert.deepEqual(socketB.closes, [])
  assert.equal(right[0].text.toString(), 'doc 0 text')
}))

test('presence appears and disappears between providers', { timeout: 60000 }, scenario(async (s) => {
  const server = await s.startServer()
  const doc = 'team/hp-presence.md'
  const a = attach(s, server, doc)
  const b = attach(s, server, doc)
  await Promise.all([settled(a), settled(b)])
  a.provider.setAwarenessField('user', { name: 'Ada', color: '#30bced' })
  const aId = a.doc.clientID
  await waitUntil(() => b.provider.awareness.getStates().get(aId)?.user?.name === 'Ada', 10000, 'b sees Ada')
  a.provider.destroy()
  await waitUntil(() => !b.provider.awareness.getStates().has(aId), 10000, 'Ada is gone for b')
}))

test('a y-websocket client and a provider on one doc converge both ways and see each other', { timeout: 60000 }, scenario(async (s) => {
  const server = await s.startServer()
  const doc = 'team/notes.md'
  const ywsClient = s.connect(server, doc)
  const hp = attach(s, server, doc)
  await Promise.all([synced(ywsClient), settled(hp)])

  ywsClient.text.insert(0, 'from y-websocket')
  await waitUntil(() => hp.text.toString() === 'from y-websocket', 10000, () => `provider got it: ${hp.text.toString()}`)
  hp.text.insert(hp.text.length, ', from hocuspocus')
  await waitUntil(() => ywsClient.text.toString() === 'from y-websocket, from hocuspocus', 10000,
    () => `y-websocket got it: ${ywsClient.text.toString()}`)

  ywsClient.provider.awareness.setLocalStateField('user', { name: 'Yan' })
  hp.provider.setAwarenessField('user', { name: 'Hope' })
  await waitUntil(() => hp.provider.awareness.getStates().get(ywsClient.doc.clientID)?.user?.name === 'Yan', 10000, 'the provider sees Yan')
  await waitUntil(() => ywsClient.provider.awareness.getStates().get(hp.doc.clientID)?.user?.name === 'Hope', 10000, 'y-websocket sees Hope')
  await waitUntil(() => hp.provider.unsyncedChanges === 0, 10000, 'the provider has everything acknowledged')
}))

test('a stateless message reaches the other providers of the doc, not the sender', { timeout: 60000 }, scenario(async (s) => {
  const server = await s.startServer()
  const doc = 'team/hp-stateless.md'
  const a = attach(s, server, doc)
  const b = attach(s, server, doc)
  await Promise.all([settled(a), settled(b)])
  const receivedByA = []
  const receivedByB = []
  a.provider.on('stateless', ({ payload }) => receivedByA.push(payload))
  b.provider.on('stateless', ({ payload }) => receivedByB.push(payload))
  a.provider.sendStateless(JSON.stringify({ cursor: 7 }))
  await waitUntil(() => receivedByB.length === 1, 10000, 'b got the stateless message')
  assert.deepEqual(JSON.parse(receivedByB[0]), { cursor: 7 })
  // Ordering on one socket: once a's own later edit is acknowledged, no echo can still be on its way.
  a.text.insert(0, 'x')
  await waitUntil(() => a.provider.unsyncedChanges === 0, 10000, 'a is acknowledged')
  assert.deepEqual(receivedByA, [])
}))
