// A client that goes offline keeps editing; when it reconnects, its edits and the ones others
// made meanwhile merge on both sides.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { synced, waitUntil, docFromUpdate } from '../lib/client.mjs'

const DOC = 'team/offline.md'

test('a client that edits offline merges with what others did meanwhile on reconnect', { timeout: 60000 }, scenario(async (s) => {
  const server = await s.startServer()
  const online = s.connect(server, DOC)
  const traveller = s.connect(server, DOC)
  await Promise.all([synced(online), synced(traveller)])
  online.text.insert(0, 'alpha beta gamma')
  await waitUntil(() => traveller.text.toString() === 'alpha beta gamma', 10000, 'the base text to reach the traveller')

  traveller.provider.disconnect()
  assert.equal(traveller.provider.wsconnected, false)
  // Offline: replace "beta" and append, touching the same region the online client edits.
  traveller.text.delete(6, 4)
  traveller.text.insert(6, 'BETA')
  traveller.text.insert(traveller.text.length, ' +offline')
  // Meanwhile, online: insert in the middle of "beta" and append.
  online.text.insert(8, '[mid]')
  online.text.insert(online.text.length, ' +online')
  // Make sure the server has the online edits before the traveller comes back, so the merge
  // really goes through the reconnect handshake.
  await waitUntil(async () => {
    const { update } = await server.getUpdate(DOC)
    return docFromUpdate(update).getText('t').toString().includes('+online')
  }, 10000, 'the online edits to be stored')
  assert.ok(!online.text.toString().includes('offline'), 'nothing of the offline edits leaked out')

  traveller.provider.connect()
  await waitUntil(() => traveller.text.toString() === online.text.toString() && online.text.toString().includes('+offline'), 15000,
    () => `merge: online=${JSON.stringify(online.text.toString())} traveller=${JSON.stringify(traveller.text.toString())}`)
  // Both sides' intentions survive: "beta" is gone but the "[mid]" inserted into it
  // concurrently stays, and "BETA" and both appends are there. Concurrent inserts at the same
  // place are ordered by the CRDT, so either order of each pair is a correct merge.
  const merged = online.text.toString()
  const possible = []
  for (const middle of ['BETA[mid]', '[mid]BETA']) {
    for (const tail of [' +offline +online', ' +online +offline']) possible.push(`alpha ${middle} gamma${tail}`)
  }
  assert.ok(possible.includes(merged), `unexpected merge ${JSON.stringify(merged)}`)
}))
