// The Hocuspocus protocol in cluster mode: unmodified @hocuspocus/provider clients on different
// nodes edit one document with a y-websocket client on a third; every edit reaches every
// client, presence crosses nodes both ways, a provider's edits are acknowledged (unsynced 0)
// once Redis has them, and a late joiner on any node gets the whole text.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { synced, waitUntil, prng } from '../lib/client.mjs'
import { attach, settled } from '../lib/hocuspocus.mjs'
import { startCluster } from '../lib/cluster.mjs'

test('hocuspocus providers on two nodes and a y-websocket client on a third converge and see each other', { timeout: 60000 }, scenario(async (s) => {
  const cluster = await startCluster({ scenario: s, nodes: 3 })
  const [first, second, third] = cluster.nodes
  const doc = 'team/hp-cluster.md'
  const a = attach(s, first, doc)
  const b = attach(s, third, doc)
  const yws = s.connect(second, doc)
  await Promise.all([settled(a), settled(b), synced(yws)])

  const random = prng(19)
  const writers = [a.text, b.text, yws.text]
  for (let i = 0; i < 150; i++) {
    const text = writers[Math.floor(random() * writers.length)]
    const length = text.length
    if (length > 0 && random() < 0.3) {
      text.delete(Math.floor(random() * length), 1)
    } else {
      text.insert(Math.floor(random() * (length + 1)), String.fromCharCode(97 + Math.floor(random() * 26)))
    }
  }
  await waitUntil(() => a.text.toString() === b.text.toString() && b.text.toString() === yws.text.toString() &&
    a.provider.unsyncedChanges === 0 && b.provider.unsyncedChanges === 0,
  20000, () => `convergence: ${JSON.stringify([a.text.toString(), b.text.toString(), yws.text.toString()])}, unsynced ${a.provider.unsyncedChanges}/${b.provider.unsyncedChanges}`)
  assert.ok(a.text.length > 0)

  a.provider.setAwarenessField('user', { name: 'Ada' })
  yws.provider.awareness.setLocalStateField('user', { name: 'Yan' })
  await waitUntil(() => b.provider.awareness.getStates().get(a.doc.clientID)?.user?.name === 'Ada', 10000, 'node 3 sees Ada from node 1')
  await waitUntil(() => b.provider.awareness.getStates().get(yws.doc.clientID)?.user?.name === 'Yan', 10000, 'node 3 sees Yan from node 2')
  await waitUntil(() => yws.provider.awareness.getStates().get(a.doc.clientID)?.user?.name === 'Ada', 10000, 'y-websocket on node 2 sees Ada')

  const late = attach(s, second, doc)
  await settled(late)
  await waitUntil(() => late.text.toString() === a.text.toString(), 10000, 'a late provider on node 2 has the text')
}))
