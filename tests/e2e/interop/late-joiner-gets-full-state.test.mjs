// A client that joins after the edits were made receives the whole document: from the open
// document while its author is still there, and from storage once everyone left and the server
// unloaded it.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { synced, waitUntil, destroy } from '../lib/client.mjs'

const DOC = 'team/late-joiner.md'
const N_LINES = 300

/** Many small updates (so the state is a log, not one update) on three kinds of root. */
function writeHistory (client) {
  for (let i = 0; i < N_LINES; i++) client.text.insert(client.text.length, `line ${i}\n`)
  client.text.delete(0, 'line 0\n'.length)
  const meta = client.doc.getMap('meta')
  meta.set('title', 'Late joiners')
  meta.set('revision', 7)
  client.doc.getArray('tags').push(['crdt', 'yjs'])
}

function expectedText () {
  let text = ''
  for (let i = 1; i < N_LINES; i++) text += `line ${i}\n`
  return text
}

function assertFullState (client) {
  assert.equal(client.text.toString(), expectedText())
  assert.deepEqual(client.doc.getMap('meta').toJSON(), { title: 'Late joiners', revision: 7 })
  assert.deepEqual(client.doc.getArray('tags').toJSON(), ['crdt', 'yjs'])
}

test('a late joiner gets the full state', { timeout: 60000 }, scenario(async (s) => {
  const server = await s.startServer(['--doc-unload-grace', '200ms'])
  const author = s.connect(server, DOC)
  await synced(author)
  writeHistory(author)

  // While the author is still connected.
  const second = s.connect(server, DOC)
  await synced(second)
  await waitUntil(() => second.doc.getArray('tags').length === 2 && second.text.toString() === expectedText(), 15000,
    () => `second client to receive everything (has ${second.text.length} chars)`)
  assertFullState(second)

  // After everyone left and the server unloaded the document: the state comes from storage.
  destroy(author, second)
  await waitUntil(async () => {
    const entry = (await server.listDocs()).find((doc) => doc.name === DOC)
    return entry !== undefined && entry.loaded === false && entry.peers === 0
  }, 15000, `${DOC} to be unloaded`)
  const third = s.connect(server, DOC)
  await synced(third)
  // y-websocket reports `synced` once it applied the server's sync step 2, which the server
  // sends only after loading the document: nothing may be missing at this point.
  assertFullState(third)
}))
