// Hostile input closes only its own connection, with the documented close code.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import { TandemServer } from '../lib/server.mjs'
import { connect, synced, waitUntil, destroy, WebSocket } from '../lib/client.mjs'

let server
before(async () => { server = await new TandemServer(['--max-frame-bytes', '1024']).start() })
after(async () => { await server.cleanup() })

function closeOf (payload, docName = 'hostile/victim') {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${server.wsUrl}/${docName}`)
    const timer = setTimeout(() => reject(new Error('no close within 10 s')), 10000)
    ws.on('open', () => ws.send(payload))
    ws.on('close', (code, reason) => { clearTimeout(timer); resolve({ code, reason: reason.toString() }) })
    ws.on('error', () => {})
  })
}

// 2^60 as a lib0 var-uint: nine bytes of 0x80 then 0x10.
const huge = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10]

test('hostile frames close only their connection; the server and other docs are untouched', async () => {
  const keeper = connect(server, 'hostile/precious')
  const watcher = connect(server, 'hostile/precious')
  try {
    await Promise.all([synced(keeper), synced(watcher)])
    keeper.text.insert(0, 'keep me')
    await waitUntil(() => watcher.text.toString() === 'keep me', 10000, 'initial delivery')
    const cases = [
      ['garbage', Buffer.from([0xde, 0xad, 0xbe, 0xef]), 1002],
      ['truncated var-int', Buffer.from([0x80]), 1002],
      ['length prefix of 2^60', Buffer.from([0, 2, ...huge]), 1002],
      ['text frame', 'hello', 1003],
      ['invalid update', Buffer.from([0, 2, 3, 0x7f, 0, 0]), 1007],
      ['unknown message type', Buffer.from([7]), 1003],
      ['oversize frame', Buffer.alloc(4096), 1009]
    ]
    for (const [name, payload, code] of cases) {
      const closed = await closeOf(payload)
      assert.equal(closed.code, code, `${name}: ${closed.reason}`)
      assert.ok(closed.reason.length > 0, `${name} has a reason`)
    }
    const health = await fetch(`${server.httpUrl}/healthz`)
    assert.equal(health.status, 200)
    assert.equal(watcher.provider.wsconnected, true)
    keeper.text.insert(keeper.text.length, '!')
    await waitUntil(() => watcher.text.toString() === 'keep me!', 10000, 'delivery after the attacks')
    const { body } = await server.getJson('/api/docs/hostile/precious')
    assert.equal(body.t, 'keep me!')
  } finally { destroy(keeper, watcher) }
})

function rawGet (path) {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port: server.port, path }, (res) => {
      let body = ''
      res.on('data', (chunk) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode, body }))
    }).on('error', reject)
  })
}

test('bad document names get HTTP 400 before the upgrade', async () => {
  for (const path of ['/ws/a/../b', '/ws/a%2Fb', '/ws//etc/passwd', '/ws/a//b', '/ws/']) {
    const res = await rawGet(path)
    assert.equal(res.status, 400, path)
    assert.equal(JSON.parse(res.body).error, 'bad_doc_name', path)
  }
  const status = await new Promise((resolve) => {
    const ws = new WebSocket(`${server.wsUrl}/a%2Fb`)
    ws.on('unexpected-response', (req, res) => resolve(res.statusCode))
    ws.on('open', () => resolve(101))
    ws.on('error', () => {})
  })
  assert.equal(status, 400)
})
