// Nodes and Redis die with kill -9 while writers keep typing, and no token anyone ever saw is
// lost. Five stock y-websocket clients behind the balancer each insert a unique token ten times
// a second; each records every token that ever appears in its text. Every ~3 s a random node is
// killed and restarted (ten times), and once Redis itself is killed: every writer must then be
// closed with 1013 ("try again later") and be refused while Redis is down, and all resume once
// it is back on the same port and directory (its AOF, written with `appendfsync always`, is
// replayed). The clients reconnect by themselves through the balancer.
//
// At the end the writers stop and converge, and a fresh client holds every token any of them
// ever saw. Then the whole cluster loses power: the writers are gone, every node and Redis are
// killed and restarted, and a fresh client still holds every token. Tokens that reached the
// other writers were relayed, and a node relays only what Redis has acknowledged, so this last
// step checks that what was relayed was durable, with no writer left to send it again.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { startCluster } from '../lib/cluster.mjs'
import { synced, waitUntil, prng, markersIn, destroy } from '../lib/client.mjs'

const DOC = 'chaos/tokens.md'
const N_NODES = 3
const N_WRITERS = 5
const WRITE_INTERVAL_MS = 100
const N_NODE_KILLS = 10
const REDIS_KILL_AFTER = 5 // node kills
const CYCLE_MS = 3000
const RECOVERY_TIMEOUT_MS = 15000
const TOKEN = /<\d+:\d+>/g
const SEED = 19

/** Offsets where a token may go without splitting another: the start and after each '>'. */
function boundaries (text) {
  const offsets = [0]
  for (let i = 0; i < text.length; i++) if (text[i] === '>') offsets.push(i + 1)
  return offsets
}

/** A writer through the balancer; `seen` collects every token that ever appears in its text. */
function writer (s, balancer, idx) {
  const client = s.connect(balancer, DOC)
  client.idx = idx
  client.next = 0
  client.seen = new Set()
  client.doc.on('update', () => {
    for (const token of markersIn(client.text.toString(), TOKEN)) client.seen.add(token)
  })
  return client
}

function write (client, rand) {
  const offsets = boundaries(client.text.toString())
  client.text.insert(offsets[rand.int(offsets.length)], `<${client.idx}:${client.next++}>`)
}

/**
 * Waits until every writer has received, from every other writer, the first token that one
 * wrote after `marks` were taken: all of them are connected again and edits flow both ways
 * between every pair.
 */
function everyoneHearsEveryone (writers, what) {
  const marks = writers.map((w) => w.next)
  const missing = () => writers.flatMap((r) => writers
    .filter((w) => w !== r && !r.seen.has(`<${w.idx}:${marks[w.idx]}>`))
    .map((w) => `${w.idx}->${r.idx}`))
  return waitUntil(() => missing().length === 0, RECOVERY_TIMEOUT_MS, () => `${what}: edits to flow again (missing ${missing()})`)
}

/** Waits out the rest of a chaos cycle that began at `startedAt`: pacing, not synchronisation. */
function restOfCycle (startedAt) {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, startedAt + CYCLE_MS - Date.now())))
}

test('kill -9 of nodes and of Redis under steady writing loses no token any client saw', { timeout: 80000 }, scenario(async (s) => {
  const cluster = await startCluster({ scenario: s, nodes: N_NODES })
  const writers = Array.from({ length: N_WRITERS }, (_, idx) => writer(s, cluster.balancer, idx))
  await Promise.all(writers.map((client) => synced(client, 30000)))
  const rand = prng(SEED)
  const timers = writers.map((client) => setInterval(() => write(client, rand), WRITE_INTERVAL_MS))
  try {
    await everyoneHearsEveryone(writers, 'at the start')
    for (let kill = 1; kill <= N_NODE_KILLS; kill++) {
      const startedAt = Date.now()
      const victim = rand.int(N_NODES)
      await cluster.killNode(victim)
      await cluster.restartNode(victim)
      await everyoneHearsEveryone(writers, `after kill ${kill} (node ${victim})`)
      await restOfCycle(startedAt)

      if (kill === REDIS_KILL_AFTER) {
        const redisStartedAt = Date.now()
        const closesBefore = writers.map((client) => client.closes.length)
        const closesSince = (client) => client.closes.slice(closesBefore[client.idx])
        await cluster.redis.kill()
        // Every writer sends an edit within 100 ms; its node cannot append it to Redis and
        // closes the connection with 1013. The next close is a refused rejoin.
        await waitUntil(() => writers.every((client) => closesSince(client).length >= 2), RECOVERY_TIMEOUT_MS,
          () => `every writer to be closed and refused while Redis is down (closes ${JSON.stringify(writers.map(closesSince))})`)
        for (const client of writers) {
          assert.equal(closesSince(client)[0].code, 1013,
            `writer ${client.idx}'s connection was closed with 1013 (closes ${JSON.stringify(closesSince(client))})`)
        }
        await cluster.redis.restart()
        await everyoneHearsEveryone(writers, 'after Redis came back')
        await restOfCycle(redisStartedAt)
      }
    }
  } finally {
    for (const timer of timers) clearInterval(timer)
  }

  const seenByAnyone = new Set(writers.flatMap((client) => [...client.seen]))
  await waitUntil(() => writers.every((client) => client.provider.synced && client.seen.size === seenByAnyone.size &&
      client.text.toString() === writers[0].text.toString()), 20000,
    () => `the writers to converge (tokens ${writers.map((client) => client.seen.size)} of ${seenByAnyone.size})`)
  const final = writers[0].text.toString()
  writers.forEach((client) => assert.equal(client.text.toString(), final, `writer ${client.idx} diverged`))
  assert.equal(markersIn(final, TOKEN).join(''), final, 'nothing but whole tokens')
  const written = writers.reduce((sum, client) => sum + client.next, 0)
  assert.equal(seenByAnyone.size, written, 'every token written was seen')

  const lostFrom = (text) => [...seenByAnyone].filter((token) => !text.includes(token))
  // A fresh client may land on a node whose tail of the stream is a moment behind the writers.
  const fresh = s.connect(cluster.balancer, DOC)
  await synced(fresh)
  await waitUntil(() => lostFrom(fresh.text.toString()).length === 0, 5000,
    () => `a fresh client to hold every token (lacks ${lostFrom(fresh.text.toString()).length} of ${seenByAnyone.size})`)
  assert.equal(fresh.text.toString(), final, 'the fresh client has the writers\' text')

  // The whole cluster loses power, with nobody left to send anything again.
  destroy(fresh, ...writers)
  await Promise.all(cluster.nodes.map((_, idx) => cluster.killNode(idx)))
  await cluster.redis.kill()
  await cluster.redis.restart()
  await Promise.all(cluster.nodes.map((_, idx) => cluster.restartNode(idx)))
  const afterPowerLoss = s.connect(cluster.balancer, DOC)
  await synced(afterPowerLoss)
  // Every node has just started: the one serving this client loaded the document from Redis
  // and Postgres before its sync step 2, so nothing may be missing here.
  const lost = lostFrom(afterPowerLoss.text.toString())
  assert.deepEqual(lost, [], `lost ${lost.length} of ${seenByAnyone.size} tokens`)
  assert.equal(afterPowerLoss.text.toString(), final)
}))
