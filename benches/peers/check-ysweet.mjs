// Verifies the y-sweet wire facts documented in PROTOCOLS.md using raw `ws`
// sockets, printing the hex of every frame.
//
//   node check-ysweet.mjs      (starts .cargo/bin/y-sweet on a free port with a temp dir store)
//
// Exits non-zero if any check fails.
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { mkdtempSync, rmSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import * as encoding from 'lib0/encoding'
import * as Y from 'yjs'
import * as awarenessProtocol from 'y-protocols/awareness'
import WebSocket from 'ws'
import { RawClient, check, failed, sleep, hex, T, S, msg, step1Msg, step2Msg, updateMsg, parse, describe, is, checkBurst } from './check-util.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))
const bin = process.env.Y_SWEET_BIN ?? path.join(here, '.cargo/bin/y-sweet')
if (!existsSync(bin)) {
  console.error(`y-sweet binary not found at ${bin}; run install.sh first`)
  process.exit(2)
}

const DOC = 'd1'

// ---- start y-sweet
const store = mkdtempSync(path.join(tmpdir(), 'ysweet-check-'))
const args = ['serve', store, '--host', '127.0.0.1', '--port', '0']
console.log(`$ ${bin} ${args.join(' ')}`)
const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, NO_COLOR: '1', RUST_LOG: 'warn,y_sweet=info' } })
const port = await new Promise((resolve, reject) => {
  const rl = createInterface({ input: proc.stdout })
  // eslint-disable-next-line no-control-regex
  rl.on('line', (l) => { const m = /Listening on ws:\/\/127\.0\.0\.1:(\d+)/.exec(l.replace(/\x1b\[[0-9;]*m/g, '')); if (m) resolve(Number(m[1])) })
  proc.once('exit', (c) => reject(new Error(`y-sweet exited ${c}`)))
})
const http = `http://127.0.0.1:${port}`
const wsUrl = (doc) => `ws://127.0.0.1:${port}/d/${doc}/ws/${doc}`
console.log(`y-sweet at ${http}`)

try {
  // ---- HTTP API
  let r = await fetch(`${http}/ready`)
  check(r.status === 200 && (await r.json()).ok === true, 'GET /ready -> 200 {"ok":true}')
  r = await fetch(`${http}/doc/new`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ docId: DOC }) })
  const created = await r.json()
  check(r.status === 200 && created.docId === DOC, `POST /doc/new {"docId":"d1"} -> 200 ${JSON.stringify(created)}`)
  r = await fetch(`${http}/doc/new`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ docId: DOC }) })
  check(r.status === 200, 'POST /doc/new is idempotent for an existing docId (200 again)')
  r = await fetch(`${http}/doc/new`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ docId: 'bad.name' }) })
  check(r.status === 400, 'docId must match [A-Za-z0-9_-]+ (400 otherwise)')
  r = await fetch(`${http}/doc/${DOC}/auth`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })
  const auth = await r.json()
  check(r.status === 200 && auth.url === `ws://127.0.0.1:${port}/d/${DOC}/ws` && auth.token === undefined,
    `POST /doc/d1/auth -> ${JSON.stringify(auth)} (no token without --auth; client appends "/d1")`)

  // ---- A
  console.log(`\n# A: connect to ${wsUrl(DOC)} (no token) and send nothing`)
  const docA = new Y.Doc()
  docA.clientID = 1
  const a = new RawClient('A', wsUrl(DOC), describe)
  await a.open()
  const aS1 = await a.waitFor(is(T.Sync, S.Step1), 'server Step1 on connect')
  const aAw0 = await a.waitFor(is(T.Awareness), 'server awareness on connect')
  await sleep(200)
  check(a.frames.length === 2 && a.frames[0] === aS1 && a.frames[1] === aAw0,
    'on connect the server sends SyncStep1 then an Awareness frame (always, even when empty)')
  check(hex(aS1.bytes) === '00 00 01 00' && hex(aAw0.bytes) === '01 01 00', 'empty doc: 00 00 01 00, then 01 01 00 (awareness update with 0 clients)')
  a.send(step1Msg(docA), 'Sync Step1')
  const aS2 = await a.waitFor(is(T.Sync, S.Step2), 'Step2')
  check(hex(aS2.bytes) === '00 01 02 00 00', 'server answers a client Step1 with Step2 only')
  a.send(step2Msg(docA, parse(aS1.bytes).payload), 'Sync Step2 (reply to server Step1, empty)')
  await sleep(200)
  check(a.frames.length === 3, 'no acknowledgement of Step2')
  a.send(msg(T.SyncStatus, (e) => encoding.writeVarUint8Array(e, new Uint8Array([7]))), 'custom 102 (y-sweet sync-status ping)')
  const aPong = await a.waitFor(is(T.SyncStatus), 'echo of 102')
  check(hex(aPong.bytes) === '66 01 07', 'message type 102 is echoed back verbatim (y-sweet\'s "sync status" round trip)')

  // ---- B, on a doc that was never created via /doc/new
  console.log(`\n# B: connect to ${wsUrl(DOC)}`)
  const docB = new Y.Doc()
  docB.clientID = 2
  const b = new RawClient('B', wsUrl(DOC), describe)
  await b.open()
  const bS1 = await b.waitFor(is(T.Sync, S.Step1), 'Step1')
  b.send(step1Msg(docB), 'Sync Step1')
  await b.waitFor(is(T.Sync, S.Step2), 'Step2')
  b.send(step2Msg(docB, parse(bS1.bytes).payload), 'Sync Step2 (reply)')

  console.log('\n# A sends a Y update; B must receive it')
  const am = a.frames.length
  const bm = b.frames.length
  let update = null
  docA.once('update', (u) => { update = u })
  docA.getText('t').insert(0, 'hello')
  a.send(updateMsg(update), `Sync Update (${update.length}B: insert "hello")`)
  const bUp = await b.waitFor(is(T.Sync, S.Update), 'update at B', 3000, bm)
  Y.applyUpdate(docB, parse(bUp.bytes).payload)
  check(docB.getText('t').toString() === 'hello', 'B receives [0][2][varUint8Array update] and its doc reads "hello"')
  check(hex(bUp.bytes) === hex(updateMsg(update)), 'the relayed update is byte-identical here (yrs re-encodes it; do not rely on identity in general)')
  const aEcho = await a.waitFor(is(T.Sync, S.Update), 'echo at A', 1000, am).catch(() => null)
  check(aEcho !== null, 'sender A ALSO receives its own update back (every connection observes the doc)')

  await checkBurst(a, b, docA, docB)

  console.log('\n# QueryAwareness and Awareness')
  let bm2 = b.frames.length
  b.send(msg(T.QueryAwareness), 'QueryAwareness')
  const bQa = await b.waitFor(is(T.Awareness), 'awareness reply', 1000, bm2).catch(() => null)
  check(bQa !== null, 'QueryAwareness [3] is answered with the full awareness state')
  const awA = new awarenessProtocol.Awareness(docA)
  awA.setLocalState({ user: 'A' })
  const awUpd = awarenessProtocol.encodeAwarenessUpdate(awA, [docA.clientID])
  const am2 = a.frames.length
  bm2 = b.frames.length
  a.send(msg(T.Awareness, (e) => encoding.writeVarUint8Array(e, awUpd)), 'Awareness {user:"A"}')
  await b.waitFor(is(T.Awareness), 'awareness at B', 3000, bm2)
  const aAw = await a.waitFor(is(T.Awareness), 'awareness echo at A', 1000, am2).catch(() => null)
  check(aAw !== null, 'awareness is broadcast to all connections of the doc, the sender included')
  awA.destroy()

  console.log('\n# C: doc "fresh" never created with /doc/new')
  const c = new RawClient('C', wsUrl('fresh'), describe)
  await c.open()
  const cS1 = await c.waitFor(is(T.Sync, S.Step1), 'Step1')
  check(hex(cS1.bytes) === '00 00 01 00', 'without --auth the websocket route creates unknown docs on the fly')
  const badStatus = await new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/d/x/ws/y`)
    ws.on('unexpected-response', (_req, res) => { resolve(res.statusCode); res.resume(); ws.terminate() })
    ws.on('open', () => { resolve('open'); ws.terminate() })
    ws.on('error', () => {})
  })
  check(badStatus === 400, `/d/{a}/ws/{b} with a != b is refused with HTTP ${badStatus}`)

  r = await fetch(`${http}/d/${DOC}/as-update`)
  const snap = new Uint8Array(await r.arrayBuffer())
  const docS = new Y.Doc()
  Y.applyUpdate(docS, snap)
  check(docS.getText('t').toString() === docA.getText('t').toString(), `GET /d/d1/as-update returns the doc as a v1 update (${snap.length}B)`)

  await Promise.all([a.close(), b.close(), c.close()])
} catch (e) {
  console.error('FAIL', e.message)
  process.exitCode = 1
} finally {
  proc.kill('SIGINT')
  await new Promise((resolve) => { if (proc.exitCode !== null) resolve(); else proc.once('exit', resolve) })
  rmSync(store, { recursive: true, force: true })
}
if (failed()) process.exitCode = 1
console.log(process.exitCode ? '\ny-sweet: FAILED' : '\ny-sweet: all checks passed')
