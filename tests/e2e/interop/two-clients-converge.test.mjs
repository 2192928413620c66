// Two stock clients edit the same text at the same time, with random inserts and deletes from a
// fixed seed, and end with the same text as each other and as the server's stored copy.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { synced, waitUntil, prng, nextTurn, docFromUpdate } from '../lib/client.mjs'

const SEED = 42
const N_ROUNDS = 40
const EDITS_PER_ROUND = 5

/** Random edits of `client.text` computed from its current local state. */
function randomEdits (client, rand, n) {
  for (let i = 0; i < n; i++) {
    const len = client.text.length
    if (len > 0 && rand() < 0.35) {
      const pos = rand.int(len)
      client.text.delete(pos, Math.min(len - pos, 1 + rand.int(4)))
    } else {
      client.text.insert(rand.int(len + 1), rand.letters(1 + rand.int(4)))
    }
  }
}

test('two clients converge after concurrent random inserts and deletes', { timeout: 60000 }, scenario(async (s) => {
  const server = await s.startServer()
  const a = s.connect(server, 'team/converge.md')
  const b = s.connect(server, 'team/converge.md')
  await Promise.all([synced(a), synced(b)])
  const rand = prng(SEED)
  for (let round = 0; round < N_ROUNDS; round++) {
    // Both edit before either hears of the other's edits: the edits are concurrent.
    randomEdits(a, rand, EDITS_PER_ROUND)
    randomEdits(b, rand, EDITS_PER_ROUND)
    await nextTurn()
  }
  await waitUntil(() => a.text.toString() === b.text.toString(), 20000,
    () => `convergence: a=${JSON.stringify(a.text.toString())} b=${JSON.stringify(b.text.toString())}`)
  assert.ok(a.text.length > 0, 'the edits leave some text')

  // Each client's text holds the other's edits, which the server relays only once durable, so
  // the server's copy already renders to the same text.
  const { update } = await server.getUpdate('team/converge.md')
  assert.equal(docFromUpdate(update).getText('t').toString(), a.text.toString())
}))
