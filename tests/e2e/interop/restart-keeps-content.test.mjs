// SIGTERM shuts the server down cleanly (peers get 1001, exit code 0) and a new process on the
// same data directory serves the same content, over WebSocket and over HTTP.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { synced, waitUntil, destroy, docFromUpdate } from '../lib/client.mjs'

const DOC = 'team/notes.md'
const TEXT = 'survives a restart\nline two\n'

function write (client) {
  client.text.insert(0, TEXT)
  const meta = client.doc.getMap('m')
  meta.set('title', 'Notes')
  meta.set('n', 3)
  client.doc.getArray('a').push([1, 'two', { three: 3 }])
}

function assertContent (doc) {
  assert.equal(doc.getText('t').toString(), TEXT)
  assert.deepEqual(doc.getMap('m').toJSON(), { title: 'Notes', n: 3 })
  assert.deepEqual(doc.getArray('a').toJSON(), [1, 'two', { three: 3 }])
}

test('restart keeps content: SIGTERM exits 0 and a new process serves the same document', { timeout: 60000 }, scenario(async (s) => {
  const first = await s.startServer()
  const a = s.connect(first, DOC)
  const b = s.connect(first, DOC)
  await Promise.all([synced(a), synced(b)])
  write(a)
  await waitUntil(() => b.doc.getArray('a').length === 3 && b.text.toString() === TEXT && b.doc.getMap('m').size === 2, 10000,
    'B to receive the edits')

  const exit = await first.stop()
  assert.deepEqual(exit, { code: 0, signal: null }, 'SIGTERM ends with exit code 0')
  for (const [name, client] of [['A', a], ['B', b]]) {
    await waitUntil(() => client.closes.length > 0, 5000, `${name}'s connection to close`)
    assert.equal(client.closes[0].code, 1001, `${name} was closed with 1001 (got ${JSON.stringify(client.closes)})`)
  }
  assert.equal(first.stdout, `tandem listening on http://127.0.0.1:${first.port}\n`, 'stdout holds exactly the listening line')
  destroy(a, b)

  const second = await s.restart(first)
  const c = s.connect(second, DOC)
  await synced(c)
  assertContent(c.doc)

  const json = await second.getJson(`/api/docs/${DOC}`)
  assert.equal(json.status, 200)
  assert.match(json.contentType, /^application\/json/)
  assert.deepEqual(json.body, { t: TEXT, m: { title: 'Notes', n: 3 }, a: [1, 'two', { three: 3 }] })

  const binary = await second.getUpdate(DOC)
  assert.match(binary.contentType, /^application\/octet-stream/)
  assertContent(docFromUpdate(binary.update))

  const entry = (await second.listDocs()).find((doc) => doc.name === DOC)
  assert.ok(entry, `${DOC} is listed after the restart`)
  assert.ok(entry.size_bytes > 0)
  assert.equal(entry.peers, 1)
}))
