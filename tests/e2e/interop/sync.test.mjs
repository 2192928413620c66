// Co-editing with unmodified yjs + y-websocket clients.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { TandemServer } from '../lib/server.mjs'
import { connect, synced, waitUntil, prng, destroy } from '../lib/client.mjs'

let server
before(async () => { server = await new TandemServer().start() })
after(async () => { await server.cleanup() })

function randomEdits (client, rand, n) {
  for (let i = 0; i < n; i++) {
    const len = client.text.length
    if (len > 0 && rand() < 0.3) {
      const pos = Math.floor(rand() * len)
      client.text.delete(pos, Math.min(len - pos, 1 + Math.floor(rand() * 3)))
    } else {
      const pos = Math.floor(rand() * (len + 1))
      client.text.insert(pos, String.fromCharCode(97 + Math.floor(rand() * 26)).repeat(1 + Math.floor(rand() * 3)))
    }
  }
}

test('two clients converge after concurrent random inserts and deletes', async () => {
  const a = connect(server, 'team/converge.md')
  const b = connect(server, 'team/converge.md')
  try {
    await Promise.all([synced(a), synced(b)])
    const rand = prng(42)
    for (let round = 0; round < 20; round++) {
      randomEdits(a, rand, 5)
      randomEdits(b, rand, 5)
      await new Promise((resolve) => setImmediate(resolve))
    }
    await waitUntil(() => a.text.toString() === b.text.toString() && a.text.length > 0, 15000, 'convergence')
    assert.equal(a.text.toString(), b.text.toString())
  } finally { destroy(a, b) }
})

test('a late joiner gets the full state', async () => {
  const a = connect(server, 'late/joiner')
  try {
    await synced(a)
    a.text.insert(0, 'written before anyone else came')
    const b = connect(server, 'late/joiner')
    try {
      await synced(b)
      await waitUntil(() => b.text.toString() === 'written before anyone else came', 10000, 'late joiner state')
    } finally { destroy(b) }
  } finally { destroy(a) }
})

test('a client that edits offline merges with what others did meanwhile', async () => {
  const a = connect(server, 'offline/merge')
  const b = connect(server, 'offline/merge')
  try {
    await Promise.all([synced(a), synced(b)])
    a.text.insert(0, 'base.')
    await waitUntil(() => b.text.toString() === 'base.', 10000, 'base text')
    b.provider.disconnect()
    b.text.insert(b.text.length, ' offline-b.')
    a.text.insert(a.text.length, ' online-a.')
    b.provider.connect()
    const done = () => ['base.', ' offline-b.', ' online-a.'].every((s) => a.text.toString().includes(s)) &&
      a.text.toString() === b.text.toString()
    await waitUntil(done, 15000, 'offline merge')
  } finally { destroy(a, b) }
})

test('20 clients x 50 edits converge', async () => {
  const clients = Array.from({ length: 20 }, () => connect(server, 'crowd/doc'))
  try {
    await Promise.all(clients.map((c) => synced(c)))
    for (let edit = 0; edit < 50; edit++) {
      clients.forEach((c, i) => c.text.insert(0, `<${i}:${edit}>`))
      await new Promise((resolve) => setImmediate(resolve))
    }
    const expected = 20 * 50
    const count = (c) => (c.text.toString().match(/<\d+:\d+>/g) || []).length
    await waitUntil(() => clients.every((c) => count(c) === expected), 30000, 'all 1000 edits everywhere')
    const first = clients[0].text.toString()
    for (const c of clients) assert.equal(c.text.toString(), first)
    for (let i = 0; i < 20; i++) for (let e = 0; e < 50; e++) assert.ok(first.includes(`<${i}:${e}>`))
  } finally { destroy(...clients) }
})

test('50 documents in parallel stay isolated', async () => {
  const pairs = Array.from({ length: 50 }, (_, i) => [connect(server, `iso/${i}`), connect(server, `iso/${i}`)])
  try {
    await Promise.all(pairs.flat().map((c) => synced(c)))
    pairs.forEach(([w], i) => w.text.insert(0, `only doc ${i}`))
    await waitUntil(() => pairs.every(([, r], i) => r.text.toString() === `only doc ${i}`), 20000, 'every doc delivered')
    pairs.forEach(([w, r], i) => {
      assert.equal(w.text.toString(), `only doc ${i}`)
      assert.equal(r.text.toString(), `only doc ${i}`)
    })
  } finally { destroy(...pairs.flat()) }
})

test('a 5 MB paste is delivered', async () => {
  const a = connect(server, 'big/paste')
  const b = connect(server, 'big/paste')
  try {
    await Promise.all([synced(a), synced(b)])
    const paste = 'lorem ipsum dolor sit amet\n'.repeat(Math.ceil(5 * 1024 * 1024 / 27))
    a.text.insert(0, paste)
    await waitUntil(() => b.text.length === paste.length, 30000, '5 MB delivered')
    assert.equal(b.text.toString(), paste)
  } finally { destroy(a, b) }
})
