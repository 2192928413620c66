// A node acknowledges an edit once Redis has it, so Redis must write every command to its AOF
// and fsync it before answering (`appendonly yes`, `appendfsync always`); otherwise a Redis
// crash would lose edits other peers already received. A node pointed at a Redis configured any
// other way refuses to start: it exits non-zero, never listens, and says which setting is wrong.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { scenario } from '../lib/server.mjs'
import { clusterFlags, startPostgres, startRedis } from '../lib/cluster.mjs'

/** Starts a node on a Redis with `config` and expects it to refuse, naming the setting. */
async function assertRefused (s, config) {
  const redis = s.own(await startRedis({ config }))
  for (const [key, value] of Object.entries(config)) {
    assert.equal((await redis.cli('CONFIG', 'GET', key)).trim().split('\n')[1], value, `the Redis runs with ${key} ${value}`)
  }
  const postgres = s.own(await startPostgres())
  const blobDir = join(s.root, 'blobs')
  mkdirSync(blobDir)
  const node = s.server(clusterFlags({ redis, postgres, blobDir }))
  await assert.rejects(node.start(), /exited during start-up/)
  await node.closed
  assert.equal(node.exit.signal, null, 'the node exited by itself')
  assert.notEqual(node.exit.code, 0, 'the node exited with a failure code')
  assert.equal(node.port, null, 'the node never listened')
  assert.match(node.stderr, /appendonly|appendfsync/, 'stderr names the Redis setting')
}

test('a node refuses to start on a Redis without appendonly', { timeout: 60000 }, scenario(async (s) => {
  await assertRefused(s, { appendonly: 'no' })
}))

test('a node refuses to start on a Redis that fsyncs its AOF only every second', { timeout: 60000 }, scenario(async (s) => {
  await assertRefused(s, { appendonly: 'yes', appendfsync: 'everysec' })
}))
