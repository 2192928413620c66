// Stock y-websocket clients spread over two cluster nodes by the balancer edit one document at
// the same time (inserts and deletes of whole markers at random places) and all end with the
// same text, holding exactly the markers inserted and not deleted: every update crossed from
// one node to the other through Redis. A late joiner connected to the third node, which no
// client used and which never loaded the document, gets all of it from the shared storage.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { startCluster } from '../lib/cluster.mjs'
import { synced, waitUntil, prng, markersIn } from '../lib/client.mjs'

const DOC = 'team/cluster-converge.md'
const N_CLIENTS = 6
const N_ROUNDS = 40
const MAX_PAUSE_MS = 15
const MARKER = /<\d+:\d+>/g
// With this seed the balancer's first six picks send clients to both of its two backends.
const BALANCER_SEED = 33
const EDIT_SEED = 3

/** Offsets where a marker may go without splitting another: the start and after each '>'. */
function boundaries (text) {
  const offsets = [0]
  for (let i = 0; i < text.length; i++) if (text[i] === '>') offsets.push(i + 1)
  return offsets
}

test('clients on different nodes edit concurrently and converge; a client on a third node gets everything', { timeout: 60000 }, scenario(async (s) => {
  const cluster = await startCluster({ scenario: s, nodes: 3, random: prng(BALANCER_SEED) })
  const [first, second, third] = cluster.nodes
  cluster.balancer.setBackends([first.port, second.port])
  const clients = Array.from({ length: N_CLIENTS }, () => s.connect(cluster.balancer, DOC))
  await Promise.all(clients.map((client) => synced(client, 30000)))
  assert.ok(cluster.balancer.connectionsTo(first.port) > 0 && cluster.balancer.connectionsTo(second.port) > 0,
    `the balancer used both nodes (${cluster.balancer.connectionsTo(first.port)} and ${cluster.balancer.connectionsTo(second.port)} connections)`)

  const rand = prng(EDIT_SEED)
  const inserted = new Set()
  const deleted = new Set()
  for (let round = 0; round < N_ROUNDS; round++) {
    clients.forEach((client, clientIdx) => {
      const text = client.text.toString()
      const markers = markersIn(text, MARKER)
      if (markers.length > 0 && rand() < 0.2) {
        // A marker is one contiguous run of the local text, so this removes exactly it.
        const marker = markers[rand.int(markers.length)]
        client.text.delete(text.indexOf(marker), marker.length)
        deleted.add(marker)
      } else {
        const offsets = boundaries(text)
        const marker = `<${clientIdx}:${round}>`
        client.text.insert(offsets[rand.int(offsets.length)], marker)
        inserted.add(marker)
      }
    })
    // A random pause (pacing, not synchronisation) lets some edits arrive before the next
    // round while others stay concurrent.
    await new Promise((resolve) => setTimeout(resolve, rand.int(MAX_PAUSE_MS)))
  }

  const expected = new Set([...inserted].filter((marker) => !deleted.has(marker)))
  const holdsExpected = (client) => {
    const markers = markersIn(client.text.toString(), MARKER)
    return markers.length === expected.size && markers.every((marker) => expected.has(marker))
  }
  await waitUntil(() => clients.every(holdsExpected), 30000,
    () => `every client to hold the ${expected.size} surviving markers (counts ${clients.map((c) => markersIn(c.text.toString(), MARKER).length)})`)
  const converged = clients[0].text.toString()
  clients.forEach((client, clientIdx) => assert.equal(client.text.toString(), converged, `client ${clientIdx} diverged`))
  assert.equal(markersIn(converged, MARKER).join(''), converged, 'nothing but whole markers')

  assert.equal(cluster.balancer.connectionsTo(third.port), 0, 'no client went to the third node')
  const late = s.connect(third, DOC)
  await synced(late)
  // y-websocket reports `synced` once it applied the node's sync step 2, which the node sends
  // only after loading the document from the shared storage: nothing may be missing here.
  assert.equal(late.text.toString(), converged)
}))
