// Unmodified @hocuspocus/provider 4 clients against `--auth jwt`: each document's token is
// checked inside the socket exactly like a y-websocket upgrade's (refused with
// permission-denied, read-only as the `readonly` scope), and `unsyncedChanges` reaches 0 only
// once the server has stored the update: kill -9 at that moment loses nothing.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHmac } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { scenario } from '../lib/server.mjs'
import { waitUntil, docFromUpdate } from '../lib/client.mjs'
import { attach, openSocket, settled } from '../lib/hocuspocus.mjs'

const SECRET = 'hocuspocus secret for hs256, at least thirty-two bytes'

const b64url = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url')

/** An HS256 JWT for `sub` with `docs`. */
function token (sub, docs, secret = SECRET) {
  const claims = { sub, name: `${sub} (verified)`, docs, exp: Math.floor(Date.now() / 1000) + 300 }
  const body = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(claims)}`
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`
}

async function startJwtServer (s, extra = []) {
  const secretFile = join(s.root, 'secret')
  writeFileSync(secretFile, SECRET)
  return s.startServer(['--auth', 'jwt', '--jwt-secret-file', secretFile, ...extra])
}

async function storedText (server, doc, bearer) {
  const res = await server.get(`/api/docs/${doc}`, bearer ? { authorization: `Bearer ${bearer}` } : {})
  assert.equal(res.status, 200)
  return docFromUpdate(new Uint8Array(await res.arrayBuffer())).getText('t').toString()
}

test('a wrong or missing token is refused with permission-denied, and the shared socket keeps serving the others', { timeout: 60000 }, scenario(async (s) => {
  const server = await startJwtServer(s)
  const shared = openSocket(s, server)
  const good = attach(s, server, 'team/open.md', { socket: shared, token: token('ada', { 'team/*': 'write' }) })
  const forged = attach(s, server, 'team/secret.md', { socket: shared, token: token('eve', { '*': 'write' }, 'not the server secret, but long enough') })
  const elsewhere = attach(s, server, 'private/plan.md', { socket: shared, token: token('ada', { 'team/*': 'write' }) })
  const missing = attach(s, server, 'team/none.md', { socket: shared })
  await settled(good)
  await waitUntil(() => forged.denials.length > 0 && elsewhere.denials.length > 0 && missing.denials.length > 0, 10000,
    () => `denials: ${forged.denials} / ${elsewhere.denials} / ${missing.denials}`)
  assert.match(forged.denials[0], /invalid token/)
  assert.equal(elsewhere.denials[0], 'token grants no access to this document')
  assert.equal(missing.denials[0], 'a token is required')
  assert.equal(forged.provider.isAuthenticated, false)
  // Nothing of a refused doc was served.
  forged.text.insert(0, 'sneaky')
  good.text.insert(0, 'fine')
  await waitUntil(() => good.provider.unsyncedChanges === 0, 10000, 'the good doc still syncs')
  assert.equal(await storedText(server, 'team/open.md', token('ada', { '*': 'read' })), 'fine')
  const forgedStored = await server.get('/api/docs/team/secret.md', { authorization: `Bearer ${token('ada', { '*': 'read' })}` })
  assert.equal(forgedStored.status, 404, 'the refused doc was never created')
  assert.deepEqual(shared.closes, [], 'refusals keep the socket')
}))

test('a read-only token gets the readonly scope: it syncs, its edits are refused and stay unsynced', { timeout: 60000 }, scenario(async (s) => {
  const server = await startJwtServer(s)
  const doc = 'team/read-only.md'
  const writerToken = token('wendy', { 'team/*': 'write' })
  const writer = attach(s, server, doc, { token: writerToken })
  await settled(writer)
  writer.text.insert(0, 'agreed text')
  await waitUntil(() => writer.provider.unsyncedChanges === 0, 10000, 'the writer is acknowledged')
  const reader = attach(s, server, doc, { token: token('rita', { 'team/*': 'read' }) })
  await settled(reader)
  assert.deepEqual(reader.scopes, ['readonly'])
  await waitUntil(() => reader.text.toString() === 'agreed text', 10000, 'the reader got the text')

  reader.text.insert(0, 'FORGED ')
  writer.text.insert(writer.text.length, ', signed')
  await waitUntil(() => reader.text.toString().endsWith(', signed'), 10000, 'the reader still receives')
  assert.equal(writer.text.toString(), 'agreed text, signed')
  assert.equal(await storedText(server, doc, writerToken), 'agreed text, signed')
  // SyncStatus 0 for the refused edit: the provider keeps counting it as unsynced.
  assert.ok(reader.provider.unsyncedChanges > 0, 'the refused edit is not reported as stored')
}))

test('unsyncedChanges reaches 0 only once the update is stored: kill -9 at that moment loses nothing', { timeout: 90000 }, scenario(async (s) => {
  // A slow group commit widens the window an early acknowledgement would fall into.
  let server = await s.startServer(['--commit-interval', '300ms'])
  const doc = 'team/durable.md'
  for (let round = 0; round < 3; round++) {
    const client = attach(s, server, doc)
    await settled(client)
    const expected = client.text.toString() + `warm;round ${round};`
    let killedAt = null
    client.provider.on('unsyncedChanges', ({ number }) => {
      if (number === 0 && killedAt === null && client.text.toString() === expected) {
        killedAt = Date.now()
        server.child.kill('SIGKILL')
        // Before the socket sees the server go: a destroyed provider does not reconnect.
        client.provider.destroy()
      }
    })
    // The first edit commits at once; the second comes within the commit interval of the
    // first, so its commit waits for up to 300 ms, and only then may it be acknowledged.
    client.text.insert(client.text.length, 'warm;')
    client.text.insert(client.text.length, `round ${round};`)
    await waitUntil(() => killedAt !== null, 15000, () => `round ${round}: unsyncedChanges ${client.unsynced}`)
    await server.exited
    server = await s.restart(server)
    assert.equal(await storedText(server, doc), expected, `round ${round}: the acknowledged edit survived kill -9`)
  }
}))
