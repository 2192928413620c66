// The deployment README's Cluster section shows, end to end: Debian's haproxy in `mode tcp`,
// `balance roundrobin`, passing the client's address with the PROXY protocol v2, in front of
// three nodes started with `--proxy-protocol`. Stock y-websocket clients connect only to
// haproxy, land on different nodes, and converge on one text; every node then counts its share
// of the peers, so the edits really crossed between nodes.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { connect as netConnect } from 'node:net'
import { scenario } from '../lib/server.mjs'
import { startCluster, freePort } from '../lib/cluster.mjs'
import { synced, waitUntil } from '../lib/client.mjs'

const HAPROXY = '/usr/sbin/haproxy'
const DOC = 'team/haproxy.md'
const N_CLIENTS = 6

/** Resolves once something accepts TCP connections on `port`. */
async function listening (port) {
  await waitUntil(() => new Promise((resolve) => {
    const socket = netConnect(port, '127.0.0.1')
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => resolve(false))
  }), 10000, `haproxy listening on ${port}`)
}

test('haproxy in mode tcp, round-robin with PROXY v2, in front of three nodes: clients converge across them', { timeout: 60000 }, scenario(async (s) => {
  assert.ok(existsSync(HAPROXY), `${HAPROXY} is required (apt-get install -y haproxy)`)
  const cluster = await startCluster({ scenario: s, nodes: 3, args: ['--proxy-protocol'] })
  const port = await freePort()
  const config = join(s.root, 'haproxy.cfg')
  writeFileSync(config, [
    'defaults',
    '  mode tcp',
    '  timeout connect 5s',
    '  timeout client 1h',
    '  timeout server 1h',
    'frontend tandem',
    `  bind 127.0.0.1:${port}`,
    '  default_backend nodes',
    'backend nodes',
    '  balance roundrobin',
    ...cluster.nodes.map((node, i) => `  server n${i} 127.0.0.1:${node.port} send-proxy-v2`),
    ''
  ].join('\n'))
  const haproxy = spawn(HAPROXY, ['-db', '-f', config], { stdio: ['ignore', 'ignore', 'pipe'] })
  let haproxyLog = ''
  haproxy.stderr.on('data', (chunk) => { haproxyLog += chunk.toString() })
  s.own({
    stop: async () => {
      if (haproxy.exitCode === null) {
        haproxy.kill('SIGKILL')
        await new Promise((resolve) => haproxy.once('exit', resolve))
      }
    },
    logs: () => `haproxy:\n${haproxyLog}`
  })
  await listening(port)

  const front = { port, wsUrl: `ws://127.0.0.1:${port}/ws`, httpUrl: `http://127.0.0.1:${port}` }
  const clients = Array.from({ length: N_CLIENTS }, () => s.connect(front, DOC))
  await Promise.all(clients.map((client) => synced(client, 30000)))
  clients.forEach((client, i) => client.text.insert(0, `[${i}]`))
  const converged = () => clients.every((client) => client.text.toString() === clients[0].text.toString()) &&
    clients[0].text.length === N_CLIENTS * 3
  await waitUntil(converged, 15000, () => `the clients to converge (texts: ${clients.map((c) => JSON.stringify(c.text.toString())).join(', ')})`)
  for (let i = 0; i < N_CLIENTS; i++) assert.ok(clients[0].text.toString().includes(`[${i}]`))

  // Round-robin spread the six connections over the three nodes: each counts two peers.
  const peersOn = async (node) => {
    const list = await (await fetch(`http://127.0.0.1:${node.port}/api/docs`)).json()
    return list.docs.find((row) => row.name === DOC)?.peers ?? 0
  }
  const counts = await Promise.all(cluster.nodes.map(peersOn))
  assert.deepEqual(counts, [2, 2, 2], `peers per node: ${counts}`)
}))
