// Twenty stock clients make fifty edits each, all at once, and all end with the same text
// holding every one of the thousand edits.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { synced, waitUntil, prng, nextTurn, markersIn, docFromUpdate } from '../lib/client.mjs'

const N_CLIENTS = 20
const N_EDITS = 50
const SEED = 20
const DOC = 'crowd/twenty.md'
const MARKER = /<\d+:\d+>/g

/** Offsets where a marker may go without splitting another: the start and after each '>'. */
function boundaries (text) {
  const offsets = [0]
  for (let i = 0; i < text.length; i++) if (text[i] === '>') offsets.push(i + 1)
  return offsets
}

test('20 clients x 50 edits converge', { timeout: 60000 }, scenario(async (s) => {
  const server = await s.startServer()
  const clients = Array.from({ length: N_CLIENTS }, () => s.connect(server, DOC))
  await Promise.all(clients.map((client) => synced(client, 30000)))
  const rand = prng(SEED)
  for (let edit = 0; edit < N_EDITS; edit++) {
    clients.forEach((client, clientIdx) => {
      const offsets = boundaries(client.text.toString())
      client.text.insert(offsets[rand.int(offsets.length)], `<${clientIdx}:${edit}>`)
    })
    await nextTurn()
  }
  const expected = new Set()
  for (let clientIdx = 0; clientIdx < N_CLIENTS; clientIdx++) for (let edit = 0; edit < N_EDITS; edit++) expected.add(`<${clientIdx}:${edit}>`)
  const count = (client) => markersIn(client.text.toString(), MARKER).length
  await waitUntil(() => clients.every((client) => count(client) === expected.size), 45000,
    () => `every client to hold all ${expected.size} edits (counts ${clients.map(count)})`)

  const first = clients[0].text.toString()
  clients.forEach((client, clientIdx) => assert.equal(client.text.toString(), first, `client ${clientIdx} diverged`))
  const markers = markersIn(first, MARKER)
  assert.equal(markers.length, expected.size)
  assert.deepEqual(new Set(markers), expected)
  assert.equal(markers.join(''), first, 'nothing but whole markers')
  const { update } = await server.getUpdate(DOC)
  assert.equal(docFromUpdate(update).getText('t').toString(), first, 'the server holds the same text')
}))
