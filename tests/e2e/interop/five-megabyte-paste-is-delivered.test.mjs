// A single 5 MB insert (one update, one frame) reaches a connected client, a client that joins
// afterwards, and the server's stored copy.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { synced, waitUntil, prng, docFromUpdate } from '../lib/client.mjs'

const DOC = 'big/paste.md'
const PASTE_BYTES = 5 * 1024 * 1024

function pasteText () {
  const rand = prng(5)
  const lines = []
  let size = 0
  while (size < PASTE_BYTES) {
    const line = `${lines.length} ${rand.letters(40 + rand.int(40))}\n`
    lines.push(line)
    size += line.length
  }
  return lines.join('')
}

test('a 5 MB paste is delivered to another client', { timeout: 60000 }, scenario(async (s) => {
  const server = await s.startServer()
  const paste = pasteText()
  const a = s.connect(server, DOC)
  const b = s.connect(server, DOC)
  await Promise.all([synced(a), synced(b)])
  a.text.insert(0, 'before\n')
  await waitUntil(() => b.text.toString() === 'before\n', 10000, 'a small edit first')
  a.text.insert(a.text.length, paste)
  await waitUntil(() => b.text.length === 'before\n'.length + paste.length, 40000,
    () => `the paste to arrive (B has ${b.text.length} chars)`)
  assert.equal(b.text.toString(), 'before\n' + paste)
  assert.equal(b.closes.length, 0, 'B stayed connected')

  const late = s.connect(server, DOC)
  await synced(late, 30000)
  assert.equal(late.text.toString(), 'before\n' + paste, 'a late joiner gets the paste in its sync')
  const { update } = await server.getUpdate(DOC)
  assert.ok(update.length >= PASTE_BYTES)
  assert.equal(docFromUpdate(update).getText('t').toString(), 'before\n' + paste)
}))
