// Verifies the @y/websocket-server 0.1.1 wire facts documented in
// PROTOCOLS.md using raw `ws` sockets, printing the hex of every frame.
//
//   node check-ywebsocket.mjs            (starts ywebsocket.mjs on a free port)
//   node check-ywebsocket.mjs http://127.0.0.1:PORT   (use a running server)
//
// Exits non-zero if any check fails.
import * as encoding from 'lib0/encoding'
import * as Y from 'yjs'
import * as awarenessProtocol from 'y-protocols/awareness'
import { startServer, RawClient, check, failed, sleep, hex, T, S, msg, step1Msg, step2Msg, updateMsg, parse, describe, is, checkBurst } from './check-util.mjs'

const DOC = 'd1'

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

  await checkBurst(a, b, docA, docB)

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
