// Presence (awareness) crosses cluster nodes through Redis pub/sub: a state set by a client on
// one node reaches a client on another node within 500 ms, and when the first node dies with
// kill -9 (so nobody sends a removal for its peers) the other nodes drop its peers' presence
// within 5 s. Clients time out presence only after 30 s, so a removal within 5 s comes from the
// cluster.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { startCluster } from '../lib/cluster.mjs'
import { synced, waitUntil } from '../lib/client.mjs'

const ARRIVAL_DEADLINE_MS = 500
const REMOVAL_DEADLINE_MS = 5000
const ADA = { name: 'Ada', color: '#30bced' }

function userOf (client, clientID) {
  return client.provider.awareness.getStates().get(clientID)?.user
}

/** A client on the first node and one on the third, both synced on `doc`. */
async function clientsOnFirstAndThird (s, doc) {
  const cluster = await startCluster({ scenario: s, nodes: 3 })
  const onFirst = s.connect(cluster.nodes[0], doc)
  const onThird = s.connect(cluster.nodes[2], doc)
  await Promise.all([synced(onFirst), synced(onThird)])
  return { cluster, onFirst, onThird }
}

test('presence set on one node reaches a client on another node within 500 ms', { timeout: 60000 }, scenario(async (s) => {
  const { onFirst, onThird } = await clientsOnFirstAndThird(s, 'presence/cross-node')
  const setAt = Date.now()
  onFirst.provider.awareness.setLocalStateField('user', ADA)
  await waitUntil(() => userOf(onThird, onFirst.doc.clientID)?.name === 'Ada', 10000, 'the client on node 3 to see Ada')
  const elapsed = Date.now() - setAt
  assert.ok(elapsed <= ARRIVAL_DEADLINE_MS, `presence took ${elapsed} ms to cross nodes (at most ${ARRIVAL_DEADLINE_MS})`)
  assert.deepEqual(userOf(onThird, onFirst.doc.clientID), ADA)
}))

test('presence of the peers of a node killed with kill -9 is removed on the other nodes within 5 s', { timeout: 60000 }, scenario(async (s) => {
  const { cluster, onFirst, onThird } = await clientsOnFirstAndThird(s, 'presence/node-dies')
  onFirst.provider.awareness.setLocalStateField('user', ADA)
  const adaId = onFirst.doc.clientID
  await waitUntil(() => userOf(onThird, adaId)?.name === 'Ada', 10000, 'the client on node 3 to see Ada')

  const killedAt = Date.now()
  await cluster.killNode(0)
  await waitUntil(() => !onThird.provider.awareness.getStates().has(adaId), REMOVAL_DEADLINE_MS,
    'the client on node 3 to drop the presence of a peer of the killed node')
  assert.ok(Date.now() - killedAt <= REMOVAL_DEADLINE_MS)
  // Ada's client keeps retrying the dead node's port, so it cannot have re-announced herself
  // elsewhere; the client on node 3 is still connected and keeps its own presence.
  assert.ok(onThird.provider.wsconnected, 'the client on node 3 stayed connected')
  assert.ok(onThird.provider.awareness.getStates().has(onThird.doc.clientID))
}))
