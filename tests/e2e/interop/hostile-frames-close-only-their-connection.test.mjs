// Hostile frames over raw `ws` sockets: each closes its own connection with the documented close
// code, and nothing else notices. The server stays up, a document written before keeps its
// content, and a stock client that stayed connected throughout still converges.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { synced, waitUntil, closeOf, updateFrame, Y } from '../lib/client.mjs'

const MAX_FRAME_BYTES = 1024
const PRECIOUS = 'hostile/precious.md'
const VICTIM = 'hostile/victim.md'

/** A well-formed sync update whose frame is about 4 KiB: only its size is wrong. */
function oversizeUpdateFrame () {
  const doc = new Y.Doc()
  doc.getText('t').insert(0, 'INJECTED '.repeat(450))
  const frame = updateFrame(Y.encodeStateAsUpdate(doc))
  assert.ok(frame.length > 4 * MAX_FRAME_BYTES - 512)
  return frame
}

// 2^60 as a lib0 var-uint: eight bytes 0x80 (56 zero bits, continued) and 0x10.
const VAR_UINT_2_POW_60 = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10]

const CASES = [
  // [name, payload, expected close code]
  ['garbage bytes', Buffer.from([0xde, 0xad, 0xbe, 0xef]), 1002],
  ['empty frame', Buffer.alloc(0), 1002],
  ['truncated var-int', Buffer.from([0x80]), 1002],
  ['var-int over 64 bits', Buffer.alloc(11, 0xff), 1002],
  ['length prefix of 2^60', Buffer.from([0x00, 0x02, ...VAR_UINT_2_POW_60]), 1002],
  ['unknown sync sub-type', Buffer.from([0x00, 0x09]), 1002],
  ['text frame', 'hello', 1003],
  ['unknown message type', Buffer.from([0x07]), 1003],
  ['invalid update', Buffer.from([0x00, 0x02, 0x03, 0x7f, 0x00, 0x00]), 1007],
  ['awareness state that is not json', Buffer.from([0x01, 0x05, 0x01, 0x01, 0x01, 0x01, 0x7b]), 1007],
  [`frame over --max-frame-bytes ${MAX_FRAME_BYTES}`, Buffer.from(oversizeUpdateFrame()), 1009]
]

test('hostile frames close only their own connection with the expected close code', { timeout: 60000 }, scenario(async (s) => {
  const server = await s.startServer(['--max-frame-bytes', String(MAX_FRAME_BYTES)])
  const keeper = s.connect(server, PRECIOUS)
  const watcher = s.connect(server, PRECIOUS)
  await Promise.all([synced(keeper), synced(watcher)])
  keeper.text.insert(0, 'keep me')
  keeper.doc.getMap('m').set('k', 'v')
  await waitUntil(() => watcher.text.toString() === 'keep me' && watcher.doc.getMap('m').get('k') === 'v', 10000, 'the first edits to arrive')
  const watcherSocket = watcher.provider.ws
  const watcherStatuses = [...watcher.statuses]

  // Every case against a document nobody else uses, then against the precious one itself.
  const failures = []
  for (const docName of [VICTIM, PRECIOUS]) {
    for (const [name, payload, expectedCode] of CASES) {
      const raw = await s.openRaw(server, docName)
      raw.send(payload)
      let closed
      try {
        closed = await closeOf(raw)
      } catch (err) {
        failures.push(`${docName} / ${name}: ${err.message}`)
        raw.terminate()
        continue
      }
      if (closed.code !== expectedCode) {
        failures.push(`${docName} / ${name}: expected close ${expectedCode}, got ${closed.code} ${JSON.stringify(closed.reason)}`)
      } else if (closed.reason.length === 0 || Buffer.byteLength(closed.reason) > 123) {
        failures.push(`${docName} / ${name}: close reason ${JSON.stringify(closed.reason)} is empty or too long`)
      }
    }
  }
  assert.deepEqual(failures, [])

  const health = await server.get('/healthz')
  assert.equal(health.status, 200, 'the server is alive')

  // The precious document is untouched, and its stock client never lost its connection.
  const stored = await server.getJson(`/api/docs/${PRECIOUS}`)
  assert.deepEqual(stored.body, { t: 'keep me', m: { k: 'v' } })
  assert.equal(watcher.provider.ws, watcherSocket, 'the watcher kept its socket')
  assert.deepEqual(watcher.statuses, watcherStatuses, 'the watcher never disconnected')
  assert.deepEqual(watcher.closes, [])
  assert.equal(watcher.provider.wsconnected, true)
  keeper.text.insert(keeper.text.length, '!')
  await waitUntil(() => watcher.text.toString() === 'keep me!', 10000, () => `a new edit to converge (watcher has ${JSON.stringify(watcher.text.toString())})`)
  const newcomer = s.connect(server, PRECIOUS)
  await synced(newcomer)
  assert.equal(newcomer.text.toString(), 'keep me!')

  // None of the hostile frames wrote anything to the other document.
  const victim = await server.getJson(`/api/docs/${VICTIM}`)
  assert.ok(victim.status === 404 || (victim.status === 200 && !JSON.stringify(victim.body).includes('INJECTED')),
    `${VICTIM} holds nothing: ${victim.status} ${JSON.stringify(victim.body)}`)
}))
