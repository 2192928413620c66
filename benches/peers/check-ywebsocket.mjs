// Verifies the @y/websocket-server 0.1.1 wire facts documented in
// PROTOCOLS.md using raw `ws` sockets, printing the hex of every frame.
//
//   node check-ywebsocket.mjs            (starts ywebsocket.mjs on a free port)
//   node check-ywebsocket.mjs http://127.0.0.1:PORT   (use a running server)
//
// Exits non-zero if any check fails.
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as Y from 'yjs'
import * as awarenessProtocol from 'y-protocols/awareness'
import { startServer, RawClient, check, failed, sleep, hex } from './check-util.mjs'

const DOC = 'd1'
const T = { Sync: 0, Awareness: 1, Auth: 2, QueryAwareness: 3 }
const TN = ['Sync', 'Awareness', 'Auth', 'QueryAwareness']
const S = { Step1: 0, Step2: 1, Update: 2 }
const SN = ['Step1', 'Step2', 'Update']

const msg = (type, write = () => {}) => {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, type)
  write(e)
  return encoding.toUint8Array(e)
}
const step1Msg = (ydoc) => msg(T.Sync, (e) => { encoding.writeVarUint(e, S.Step1); encoding.writeVarUint8Array(e, Y.encodeStateVector(ydoc)) })
const step2Msg = (ydoc, sv) => msg(T.Sync, (e) => { encoding.writeVarUint(e, S.Step2); encoding.writeVarUint8Array(e, Y.encodeStateAsUpdate(ydoc, sv)) })
const updateMsg = (update) => msg(T.Sync, (e) => { encoding.writeVarUint(e, S.Update); encoding.writeVarUint8Array(e, update) })

function parse (bytes) {
  const d = decoding.createDecoder(bytes)
  const type = decoding.readVarUint(d)
  const out = { type, sub: null, payload: null }
  if (type === T.Sync) { out.sub = decoding.readVarUint(d); out.payload = decoding.readVarUint8Array(d) }
  if (type === T.Awareness) out.payload = decoding.readVarUint8Array(d)
  out.rest = decoding.hasContent(d) ? bytes.length - d.pos : 0
  return out
}
function describe (bytes) {
  const m = parse(bytes)
  let s = `type=${m.type}(${TN[m.type] ?? '?'})`
  if (m.type === T.Sync) s += ` ${SN[m.sub]} payload=${m.payload.length}B`
  if (m.type === T.Awareness) s += ` awareness=${m.payload.length}B`
  if (m.rest) s += ` (+${m.rest} trailing bytes)`
  return s
}
const is = (type, sub = null) => (f) => { const m = parse(f.bytes); return m.type === type && (sub === null || m.sub === sub) }

const server = await startServer('ywebsocket.mjs', process.argv[2])
console.log(`y-websocket at ${server.url}`)

try {
  console.log(`\n# A: connect to ${server.url}/${DOC} and send nothing`)
  const docA = new Y.Doc()
  docA.clientID = 1
  const a = new RawClient('A', `${server.url}/${DOC}`, describe)
  await a.open()
  const aS1 = await a.waitFor(is(T.Sync, S.Step1), 'server Step1 on connect')
  await sleep(200)
  check(a.frames.length === 1 && a.frames[0] === aS1, 'on connect the server sends exactly one frame, SyncStep1 [0][0][varUint8Array sv] (no awareness: the doc has no states yet)')
  check(hex(aS1.bytes) === '00 00 01 00', 'empty doc: Step1 = 00 00 01 00')
  a.send(step1Msg(docA), 'Sync Step1')
  const aS2 = await a.waitFor(is(T.Sync, S.Step2), 'Step2')
  check(hex(aS2.bytes) === '00 01 02 00 00', 'server answers a client Step1 with Step2 only (00 01 02 00 00 for an empty doc); it does NOT send another Step1')
  a.send(step2Msg(docA, parse(aS1.bytes).payload), 'Sync Step2 (reply to server Step1, empty)')
  await sleep(200)
  check(a.frames.length === 2, 'no acknowledgement of Step2 / updates (there is no SyncStatus in y-websocket)')

  console.log(`\n# B: connect to ${server.url}/${DOC}?query=ignored`)
  const docB = new Y.Doc()
  docB.clientID = 2
  const b = new RawClient('B', `${server.url}/${DOC}?query=ignored`, describe)
  await b.open()
  const bS1 = await b.waitFor(is(T.Sync, S.Step1), 'server Step1 on connect')
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
  check(hex(bUp.bytes) === hex(updateMsg(update)), 'B receives [0][2][varUint8Array update] byte-identical to what A sent')
  Y.applyUpdate(docB, parse(bUp.bytes).payload)
  check(docB.getText('t').toString() === 'hello', 'B\'s doc now reads "hello"')
  const aEcho = await a.waitFor(is(T.Sync, S.Update), 'echo at A', 1000, am).catch(() => null)
  check(aEcho !== null, 'sender A ALSO receives its own update back (broadcast includes the origin connection)')

  console.log('\n# A sends 5 updates back-to-back: how many frames reach B?')
  {
    const bm5 = b.frames.length
    const ups = []
    const h = (u) => ups.push(u)
    docA.on('update', h)
    for (let i = 0; i < 5; i++) docA.getText('t').insert(docA.getText('t').length, String(i))
    docA.off('update', h)
    console.log('  A -> 5 x Sync Update (sent in one synchronous burst)')
    for (const u of ups) a.ws.send(updateMsg(u))
    await sleep(500)
    const got = b.frames.slice(bm5).filter(is(T.Sync, S.Update))
    for (const f of got) Y.applyUpdate(docB, parse(f.bytes).payload)
    check(docB.getText('t').toString() === 'hello01234', 'B converges to "hello01234"')
    check(got.length === 5, `B receives one update frame per update sent (${got.length}/5): no merging`)
  }

  console.log('\n# QueryAwareness and Awareness')
  let bm2 = b.frames.length
  b.send(msg(T.QueryAwareness), 'QueryAwareness')
  await sleep(300)
  check(b.frames.length === bm2, 'QueryAwareness [3] is ignored (no reply)')
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

  console.log('\n# C joins late')
  const c = new RawClient('C', `${server.url}/${DOC}`, describe)
  await c.open()
  const cS1 = await c.waitFor(is(T.Sync, S.Step1), 'Step1')
  const cAw = await c.waitFor(is(T.Awareness), 'awareness')
  check(c.frames.indexOf(cS1) === 0 && c.frames.indexOf(cAw) === 1, 'late joiner: Step1 (with the doc\'s state vector) then current awareness, unprompted')
  c.send(step1Msg(new Y.Doc()), 'Sync Step1 (empty)')
  const cS2 = await c.waitFor(is(T.Sync, S.Step2), 'Step2')
  const docC = new Y.Doc()
  Y.applyUpdate(docC, parse(cS2.bytes).payload)
  check(docC.getText('t').toString() === docA.getText('t').toString(), 'late joiner gets the full content in Step2')

  console.log(`\n# D connects to another doc name (${server.url}/d2): isolated`)
  const d = new RawClient('D', `${server.url}/d2`, describe)
  await d.open()
  const dS1 = await d.waitFor(is(T.Sync, S.Step1), 'Step1')
  check(hex(dS1.bytes) === '00 00 01 00', 'doc "d2" is empty: URL path selects the doc')

  console.log('\n# Handshake example bytes (empty client doc)')
  console.log(`  client step1 : ${hex(step1Msg(new Y.Doc()))}`)
  console.log(`  update       : ${hex(updateMsg(update))}`)

  await Promise.all([a.close(), b.close(), c.close(), d.close()])
} catch (e) {
  console.error('FAIL', e.message)
  process.exitCode = 1
} finally {
  await server.stop()
}
if (failed()) process.exitCode = 1
console.log(process.exitCode ? '\ny-websocket: FAILED' : '\ny-websocket: all checks passed')
