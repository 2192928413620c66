// A bad document name is refused with HTTP 400 before the WebSocket upgrade, while good names,
// slashes included, upgrade.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import { randomBytes } from 'node:crypto'
import { scenario } from '../lib/server.mjs'
import { WebSocket } from '../lib/client.mjs'

const BAD_PATHS = [
  '/ws/a/../b',
  '/ws/a/./b',
  '/ws/..',
  '/ws/%2e%2e/b',
  '/ws/a%2Fb',
  '/ws/a%2fb',
  '/ws/a%5Cb',
  '/ws/a\\b',
  '/ws/a//b',
  '/ws//etc/passwd',
  '/ws/a/',
  '/ws/a%00b',
  '/ws/a%0Ab',
  '/ws/a%FFb',
  '/ws/' + 'x'.repeat(256)
]
const GOOD_PATHS = ['/ws/team/notes.md', '/ws/caf%C3%A9/men%C3%BC', '/ws/' + 'x'.repeat(255), '/ws/with?query=ignored']

const UPGRADE_HEADERS = () => ({
  connection: 'Upgrade',
  upgrade: 'websocket',
  'sec-websocket-version': '13',
  'sec-websocket-key': randomBytes(16).toString('base64')
})

/**
 * A GET of `rawPath` exactly as given (a WHATWG URL, as `ws` and `fetch` use, would normalise
 * the dot segments away), by default as a WebSocket upgrade request. Resolves with the status
 * and body, or status 101 for an upgrade.
 */
function request (server, rawPath, headers = UPGRADE_HEADERS()) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: server.port, path: rawPath, headers })
    req.setTimeout(10000, () => req.destroy(new Error(`no answer to ${rawPath}`)))
    req.on('upgrade', (res, socket) => { socket.destroy(); resolve({ status: res.statusCode }) })
    req.on('response', (res) => {
      let body = ''
      res.on('data', (chunk) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode, body, contentType: res.headers['content-type'] }))
    })
    req.on('error', reject)
    req.end()
  })
}

/** What a stock `ws` client sees: the status of an `unexpected-response`, or 101 if it opened. */
function wsClientStatus (url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url)
    const timer = setTimeout(() => { ws.terminate(); reject(new Error(`no answer from ${url}`)) }, 10000)
    ws.on('unexpected-response', (req, res) => { clearTimeout(timer); req.destroy(); resolve(res.statusCode) })
    ws.on('open', () => { clearTimeout(timer); ws.terminate(); resolve(101) })
    ws.on('error', () => {})
  })
}

test('bad document names get HTTP 400 before the upgrade', { timeout: 60000 }, scenario(async (s) => {
  const server = await s.startServer()
  const failures = []
  for (const path of BAD_PATHS) {
    const res = await request(server, path)
    if (res.status !== 400) {
      failures.push(`${path}: status ${res.status}`)
      continue
    }
    let error
    try { error = JSON.parse(res.body).error } catch { error = `not json: ${JSON.stringify(res.body)}` }
    if (error !== 'bad_doc_name') failures.push(`${path}: error ${error}`)
  }
  for (const path of GOOD_PATHS) {
    const res = await request(server, path)
    if (res.status !== 101) failures.push(`${path} (a good name): status ${res.status} ${res.body}`)
  }
  assert.deepEqual(failures, [])

  // The stock `ws` client reports the refusal as an unexpected response with status 400.
  for (const name of ['a%2Fb', 'a//b', 'x'.repeat(256)]) {
    assert.equal(await wsClientStatus(`${server.wsUrl}/${name}`), 400, name)
  }
  assert.equal(await wsClientStatus(`${server.wsUrl}/team/notes.md`), 101)

  // The same names are refused by the HTTP API too, and the server is still up.
  for (const path of ['/api/docs/a%2Fb', '/api/docs/a/../b']) {
    const res = await request(server, path).catch((err) => ({ status: err.message }))
    assert.equal(res.status, 400, path)
  }
  assert.equal((await server.get('/healthz')).status, 200)
}))
