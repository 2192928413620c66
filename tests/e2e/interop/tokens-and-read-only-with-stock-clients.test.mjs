// Stock y-websocket clients against `--auth jwt`: the token travels in `params`, a read-only
// client syncs but its edits reach nobody, presence names come from the token, and a client
// whose token expires is closed with 4401 and comes back once the app hands it a fresh token
// and reconnects.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHmac } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { scenario } from '../lib/server.mjs'
import { synced, waitUntil, docFromUpdate } from '../lib/client.mjs'

const SECRET = 'interop secret for hs256, at least thirty-two bytes long'

const b64url = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url')

/** An HS256 JWT for `sub` with `docs`, valid for `ttlSeconds`. */
function token (sub, docs, ttlSeconds = 300) {
  const claims = { sub, name: `${sub} (verified)`, docs, exp: Math.floor(Date.now() / 1000) + ttlSeconds }
  const body = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(claims)}`
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`
}

async function startJwtServer (s, extra = []) {
  const secretFile = join(s.root, 'secret')
  writeFileSync(secretFile, SECRET)
  return s.startServer(['--auth', 'jwt', '--jwt-secret-file', secretFile, ...extra])
}

/** The server's copy of `doc` as text, read with `bearer`. */
async function storedText (server, doc, bearer) {
  const res = await server.get(`/api/docs/${doc}`, { authorization: `Bearer ${bearer}` })
  assert.equal(res.status, 200)
  return docFromUpdate(new Uint8Array(await res.arrayBuffer())).getText('t').toString()
}

test('a read-only stock client syncs, but its edits reach neither the server nor other clients', { timeout: 60000 }, scenario(async (s) => {
  const server = await startJwtServer(s)
  const doc = 'team/notes.md'
  const writerToken = token('wendy', { 'team/*': 'write' })
  const readerToken = token('rita', { 'team/*': 'read' })
  const writer = s.connect(server, doc, { params: { token: writerToken } })
  await synced(writer)
  writer.text.insert(0, 'agreed text')
  const reader = s.connect(server, doc, { params: { token: readerToken } })
  await synced(reader)
  await waitUntil(() => reader.text.toString() === 'agreed text', 10000, () => 'reader got the text')

  reader.text.insert(0, 'FORGED ')
  writer.text.insert(writer.text.length, ', signed')
  await waitUntil(() => reader.text.toString().endsWith(', signed'), 10000, () => 'reader still receives')
  // The writer's edit went through the server after the forged one; the forged one is not there.
  assert.equal(writer.text.toString(), 'agreed text, signed')
  assert.equal(await storedText(server, doc, writerToken), 'agreed text, signed')
  assert.deepEqual(reader.closes, [], 'the read-only client stays connected')
}))

test('presence shows the name from the token, whatever the client claims', { timeout: 60000 }, scenario(async (s) => {
  const server = await startJwtServer(s)
  const doc = 'team/presence.md'
  const alice = s.connect(server, doc, { params: { token: token('alice', { '*': 'write' }) } })
  const bob = s.connect(server, doc, { params: { token: token('bob', { '*': 'write' }) } })
  await Promise.all([synced(alice), synced(bob)])
  alice.provider.awareness.setLocalStateField('user', { name: 'bob (verified)', color: '#ff0000' })
  const aliceId = alice.doc.clientID
  await waitUntil(() => bob.provider.awareness.getStates().get(aliceId)?.user?.sub === 'alice', 10000,
    () => `bob sees alice's stamped state: ${JSON.stringify(bob.provider.awareness.getStates().get(aliceId))}`)
  const seen = bob.provider.awareness.getStates().get(aliceId).user
  assert.equal(seen.name, 'alice (verified)')
  assert.equal(seen.color, '#ff0000')
}))

test('an expired token closes the client with 4401; a fresh token in params brings it back', { timeout: 60000 }, scenario(async (s) => {
  const server = await startJwtServer(s, ['--jwt-leeway', '0s'])
  const doc = 'team/expiry.md'
  const longToken = token('bo', { '*': 'write' })
  const other = s.connect(server, doc, { params: { token: longToken } })
  const client = s.connect(server, doc, { params: { token: token('ada', { '*': 'write' }, 2) } })
  await Promise.all([synced(other), synced(client)])
  await waitUntil(() => client.closes.some((close) => close.code === 4401), 15000,
    () => `4401 close (closes ${JSON.stringify(client.closes)})`)
  assert.equal(client.closes.find((close) => close.code === 4401).reason, 'token expired')
  // y-websocket 3.1 treats 4400-4499 as "reconnecting cannot fix this": it stops and emits
  // 'closed'. What an app does then: fetch a fresh token and connect again (the provider
  // rebuilds its URL from `params` on every connect).
  assert.equal(client.provider.shouldConnect, false, 'the stock client stops on 4401')
  client.provider.params.token = token('ada', { '*': 'write' })
  client.provider.connect()
  other.text.insert(0, 'while you were away')
  await waitUntil(() => client.text.toString() === 'while you were away', 20000,
    () => `resynced after reconnect: ${JSON.stringify(client.text.toString())}`)
  client.text.insert(0, 'back: ')
  await waitUntil(() => other.text.toString() === 'back: while you were away', 10000, () => 'edit after reconnect')
}))
