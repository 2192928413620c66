// Nothing any peer saw is lost: across a graceful restart and across kill -9.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { TandemServer } from '../lib/server.mjs'
import { connect, synced, waitUntil, destroy } from '../lib/client.mjs'

const servers = []
after(async () => { for (const s of servers) await s.cleanup() })

test('restart keeps content (SIGTERM exits 0)', async () => {
  let server = await new TandemServer().start()
  servers.push(server)
  const a = connect(server, 'keep/notes.md')
  const b = connect(server, 'keep/notes.md')
  await Promise.all([synced(a), synced(b)])
  a.text.insert(0, 'survives a restart')
  await waitUntil(() => b.text.toString() === 'survives a restart', 10000, 'delivery')
  destroy(a, b)
  assert.equal(await server.stop(), 0)
  server = await server.restart()
  servers.push(server)
  const c = connect(server, 'keep/notes.md')
  try {
    await synced(c)
    await waitUntil(() => c.text.toString() === 'survives a restart', 10000, 'content after restart')
    const { status, body } = await server.getJson('/api/docs/keep/notes.md')
    assert.equal(status, 200)
    assert.equal(body.t, 'survives a restart')
  } finally { destroy(c) }
})

test('kill -9 mid-stream loses none of the edits another peer had received', async () => {
  let server = await new TandemServer().start()
  servers.push(server)
  const writer = connect(server, 'crash/stream')
  const observer = connect(server, 'crash/stream')
  await Promise.all([synced(writer), synced(observer)])
  let i = 0
  let streaming = true
  const stream = (async () => {
    while (streaming) {
      writer.text.insert(writer.text.length, `[${i++}]`)
      await new Promise((resolve) => setTimeout(resolve, 1))
    }
  })()
  await waitUntil(() => (observer.text.toString().match(/\[\d+\]/g) || []).length >= 200, 20000, '200 edits observed')
  await server.kill()
  const seen = observer.text.toString().match(/\[\d+\]/g)
  streaming = false
  await stream
  destroy(writer, observer)
  server = await server.restart()
  servers.push(server)
  const fresh = connect(server, 'crash/stream')
  try {
    await synced(fresh)
    const text = fresh.text.toString()
    const missing = seen.filter((marker) => !text.includes(marker))
    assert.deepEqual(missing, [], `lost ${missing.length} of ${seen.length} observed edits`)
  } finally { destroy(fresh) }
})
