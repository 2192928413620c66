// Verifies the Hocuspocus v4 wire facts documented in PROTOCOLS.md using raw
// `ws` sockets (no @hocuspocus/provider), printing the hex of every frame.
//
//   node check-hocuspocus.mjs            (starts hocuspocus.mjs on a free port)
//   node check-hocuspocus.mjs http://127.0.0.1:PORT   (use a running server)
//
// Exits non-zero if any check fails.
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as Y from 'yjs'
import * as awarenessProtocol from 'y-protocols/awareness'
import { startServer, RawClient, check, failed, sleep, hex } from './check-util.mjs'

const DOC = 'd1'
// Hocuspocus MessageType (server/src/types.ts)
const T = { Sync: 0, Awareness: 1, Auth: 2, QueryAwareness: 3, SyncReply: 4, Stateless: 5, BroadcastStateless: 6, CLOSE: 7, SyncStatus: 8, Ping: 9, Pong: 10 }
const TN = Object.fromEntries(Object.entries(T).map(([k, v]) => [v, k]))
// y-protocols sync sub-types
const S = { Step1: 0, Step2: 1, Update: 2 }
const SN = ['Step1', 'Step2', 'Update']
// @hocuspocus/common AuthMessageType
const A = { Token: 0, PermissionDenied: 1, Authenticated: 2 }
const AN = ['Token', 'PermissionDenied', 'Authenticated']

const msg = (doc, type, write = () => {}) => {
  const e = encoding.createEncoder()
  encoding.writeVarString(e, doc)
  encoding.writeVarUint(e, type)
  write(e)
  return encoding.toUint8Array(e)
}
const authMsg = (doc, token) => msg(doc, T.Auth, (e) => { encoding.writeVarUint(e, A.Token); encoding.writeVarString(e, token) })
const step1Msg = (doc, ydoc) => msg(doc, T.Sync, (e) => { encoding.writeVarUint(e, S.Step1); encoding.writeVarUint8Array(e, Y.encodeStateVector(ydoc)) })
const step2Msg = (doc, ydoc, sv) => msg(doc, T.Sync, (e) => { encoding.writeVarUint(e, S.Step2); encoding.writeVarUint8Array(e, Y.encodeStateAsUpdate(ydoc, sv)) })
const updateMsg = (doc, update) => msg(doc, T.Sync, (e) => { encoding.writeVarUint(e, S.Update); encoding.writeVarUint8Array(e, update) })

/** Decode a server->client frame into { doc, type, sub, payload, text }. */
function parse (bytes) {
  const d = decoding.createDecoder(bytes)
  const doc = decoding.readVarString(d)
  const type = decoding.readVarUint(d)
  const out = { doc, type, sub: null, payload: null, str: null }
  switch (type) {
    case T.Sync: case T.SyncReply:
      out.sub = decoding.readVarUint(d)
      out.payload = decoding.readVarUint8Array(d)
      break
    case T.Awareness:
      out.payload = decoding.readVarUint8Array(d)
      break
    case T.Auth:
      out.sub = decoding.readVarUint(d)
      if (decoding.hasContent(d)) out.str = decoding.readVarString(d)
      break
    case T.SyncStatus:
      out.sub = decoding.readVarUint(d)
      break
    case T.Stateless:
      out.str = decoding.readVarString(d)
      break
    case T.CLOSE: // server->client carries a reason; client->server is just [doc][7]
      if (decoding.hasContent(d)) out.str = decoding.readVarString(d)
      break
  }
  out.rest = decoding.hasContent(d) ? bytes.length - d.pos : 0
  return out
}
function describe (bytes) {
  const m = parse(bytes)
  let s = `doc=${JSON.stringify(m.doc)} type=${m.type}(${TN[m.type] ?? '?'})`
  if (m.type === T.Sync || m.type === T.SyncReply) s += ` ${SN[m.sub]} payload=${m.payload.length}B`
  if (m.type === T.Auth) s += ` ${AN[m.sub]} ${JSON.stringify(m.str)}`
  if (m.type === T.SyncStatus) s += ` applied=${m.sub}`
  if (m.type === T.Awareness) s += ` awareness=${m.payload.length}B`
  if (m.str !== null && m.type !== T.Auth) s += ` ${JSON.stringify(m.str)}`
  if (m.rest) s += ` (+${m.rest} trailing bytes)`
  return s
}
const is = (type, sub = null) => (f) => { const m = parse(f.bytes); return m.doc === DOC && m.type === type && (sub === null || m.sub === sub) }

const server = await startServer('hocuspocus.mjs', process.argv[2])
console.log(`hocuspocus at ${server.url}`)

try {
  // ---------------------------------------------------------------- A
  console.log('\n# A: connect, send Auth then SyncStep1 back-to-back (no waiting)')
  const docA = new Y.Doc()
  docA.clientID = 1
  const a = new RawClient('A', `${server.url}/`, describe)
  await a.open()
  await sleep(200)
  check(a.frames.length === 0, 'server sends nothing on connect (no SyncStep1, no awareness) until the client authenticates')
  a.send(authMsg(DOC, ''), 'Auth Token ""')
  a.send(step1Msg(DOC, docA), 'Sync Step1 (empty state vector)')
  const aAuth = await a.waitFor(is(T.Auth, A.Authenticated), 'Authenticated')
  check(hex(aAuth.bytes) === hex(msg(DOC, T.Auth, (e) => { encoding.writeVarUint(e, A.Authenticated); encoding.writeVarString(e, 'read-write') })),
    'auth reply = [varstring doc][2 Auth][2 Authenticated][varstring "read-write"]')
  const aS1 = await a.waitFor(is(T.Sync, S.Step1), 'server Step1')
  const aS2 = await a.waitFor(is(T.Sync, S.Step2), 'server Step2')
  check(a.frames.indexOf(aAuth) < a.frames.indexOf(aS1) && a.frames.indexOf(aS1) < a.frames.indexOf(aS2),
    'order after Auth+Step1: Authenticated, then server SyncStep1, then SyncStep2 (Step1 comes BEFORE Step2)')
  check(a.frames.length === 3, `exactly 3 frames so far (got ${a.frames.length})`)
  // answer the server's step1
  const srvSv = parse(aS1.bytes).payload
  let mark = a.frames.length
  a.send(step2Msg(DOC, docA, srvSv), 'Sync Step2 (reply to server Step1; empty update)')
  const aSt = await a.waitFor(is(T.SyncStatus), 'SyncStatus after Step2', 3000, mark)
  check(parse(aSt.bytes).sub === 1, 'server acks a client Step2 with SyncStatus [doc][8][1] (even when it carries no changes)')

  // ---------------------------------------------------------------- B
  console.log('\n# B: connect, send SyncStep1 BEFORE Auth (server must queue it until Auth)')
  const docB = new Y.Doc()
  docB.clientID = 2
  const b = new RawClient('B', `${server.url}/some/ignored/path?x=1`, describe)
  await b.open()
  b.send(step1Msg(DOC, docB), 'Sync Step1 (sent before Auth)')
  await sleep(200)
  check(b.frames.length === 0, 'nothing comes back for pre-auth messages (they are queued)')
  b.send(authMsg(DOC, 'any-token'), 'Auth Token "any-token"')
  await b.waitFor(is(T.Auth, A.Authenticated), 'Authenticated')
  const bS2 = await b.waitFor(is(T.Sync, S.Step2), 'server Step2')
  const bS1 = await b.waitFor(is(T.Sync, S.Step1), 'server Step1')
  check(bS2 && bS1, 'queued Step1 is processed after auth (URL path is ignored by hocuspocus)')
  mark = b.frames.length
  b.send(step2Msg(DOC, docB, parse(bS1.bytes).payload), 'Sync Step2 (reply to server Step1)')
  await b.waitFor(is(T.SyncStatus, 1), 'SyncStatus', 3000, mark)

  // ---------------------------------------------------------------- update A -> B
  console.log('\n# A sends a Y update; B must receive it')
  const aMark = a.frames.length
  const bMark = b.frames.length
  let update = null
  docA.once('update', (u) => { update = u })
  docA.getText('t').insert(0, 'hello')
  a.send(updateMsg(DOC, update), `Sync Update (${update.length}B: insert "hello")`)
  const bUp = await b.waitFor(is(T.Sync, S.Update), 'update at B', 3000, bMark)
  check(hex(bUp.bytes) === hex(updateMsg(DOC, update)), 'B receives [doc][0][2][varUint8Array update] byte-identical to what A sent')
  Y.applyUpdate(docB, parse(bUp.bytes).payload)
  check(docB.getText('t').toString() === 'hello', 'B\'s doc now reads "hello"')
  const aAck = await a.waitFor(is(T.SyncStatus), 'SyncStatus at A', 3000, aMark)
  check(parse(aAck.bytes).sub === 1, 'sender A gets SyncStatus [doc][8][1] for its update')
  const aEcho = await a.waitFor(is(T.Sync, S.Update), 'echo at A', 1000, aMark).catch(() => null)
  check(aEcho !== null, 'sender A ALSO receives its own update back (broadcast includes the origin connection)')
  if (aEcho) check(a.frames.indexOf(aAck) < a.frames.indexOf(aEcho), 'at the sender the SyncStatus arrives before the echoed update')
  const bAck = b.frames.slice(bMark).find(is(T.SyncStatus))
  check(!bAck, 'receivers get no SyncStatus for other clients\' updates')

  console.log('\n# A sends 5 updates back-to-back: how many frames reach B?')
  {
    const bm5 = b.frames.length
    const am5 = a.frames.length
    const ups = []
    const h = (u) => ups.push(u)
    docA.on('update', h)
    for (let i = 0; i < 5; i++) docA.getText('t').insert(docA.getText('t').length, String(i))
    docA.off('update', h)
    const frames = ups.map((u) => updateMsg(DOC, u))
    console.log(`  A -> 5 x Sync Update (sent in one synchronous burst)`)
    for (const f of frames) a.ws.send(f)
    await sleep(500)
    const got = b.frames.slice(bm5).filter(is(T.Sync, S.Update))
    for (const f of got) Y.applyUpdate(docB, parse(f.bytes).payload)
    check(docB.getText('t').toString() === 'hello01234', 'B converges to "hello01234"')
    const acks = a.frames.slice(am5).filter(is(T.SyncStatus)).length
    check(acks === 5, `A gets one SyncStatus per update it sent (${acks})`)
    console.log(`  INFO: B received ${got.length} update frame(s) for 5 sent updates (flushDelay 0 merges updates applied in the same event-loop turn with Y.mergeUpdates)`)
  }

  // ---------------------------------------------------------------- awareness
  console.log('\n# QueryAwareness and Awareness')
  let bm = b.frames.length
  b.send(msg(DOC, T.QueryAwareness), 'QueryAwareness')
  await sleep(300)
  check(b.frames.length === bm, 'QueryAwareness [doc][3] gets NO reply over a websocket connection in v4')
  const awA = new awarenessProtocol.Awareness(docA)
  awA.setLocalState({ user: 'A' })
  const awUpd = awarenessProtocol.encodeAwarenessUpdate(awA, [docA.clientID])
  const am = a.frames.length
  bm = b.frames.length
  a.send(msg(DOC, T.Awareness, (e) => encoding.writeVarUint8Array(e, awUpd)), 'Awareness {user:"A"}')
  await b.waitFor(is(T.Awareness), 'awareness at B', 3000, bm)
  const aAw = await a.waitFor(is(T.Awareness), 'awareness echo at A', 1000, am).catch(() => null)
  check(aAw !== null, 'awareness is broadcast to all connections of the doc, the sender included')
  awA.destroy()

  // ---------------------------------------------------------------- late joiner
  console.log('\n# C joins late, with a second doc multiplexed on the same socket')
  const docC = new Y.Doc()
  const c = new RawClient('C', `${server.url}/`, describe)
  await c.open()
  await sleep(100)
  check(c.frames.length === 0, 'still nothing on connect')
  c.send(authMsg(DOC, ''), 'Auth Token ""')
  c.send(step1Msg(DOC, docC), 'Sync Step1')
  c.send(authMsg('d2', ''), 'Auth Token "" for doc "d2" (same socket)')
  const cAw = await c.waitFor(is(T.Awareness), 'current awareness at C')
  const cS2 = await c.waitFor(is(T.Sync, S.Step2), 'Step2 at C')
  check(c.frames.indexOf(cAw) < c.frames.indexOf(cS2), 'when the doc has awareness states, they are sent right after Authenticated (before Step1/Step2)')
  Y.applyUpdate(docC, parse(cS2.bytes).payload)
  check(docC.getText('t').toString() === docA.getText('t').toString(), 'late joiner gets the full content in Step2')
  await c.waitFor((f) => { const m = parse(f.bytes); return m.doc === 'd2' && m.type === T.Auth && m.sub === A.Authenticated }, 'Authenticated for d2')
  check(true, 'one socket can carry several documents (each message is addressed by its doc name)')

  // ---------------------------------------------------------------- CLOSE
  console.log('\n# C sends CLOSE for d1')
  const cm = c.frames.length
  c.send(msg(DOC, T.CLOSE), 'CLOSE')
  const cClose = await c.waitFor(is(T.CLOSE), 'CLOSE reply', 3000, cm).catch(() => null)
  check(cClose !== null && parse(cClose.bytes).str === 'provider_initiated', 'server answers [doc][7][varstring "provider_initiated"] and detaches the doc; socket stays open')
  check(c.ws.readyState === 1, 'websocket still open after CLOSE')

  // ---------------------------------------------------------------- official provider interop
  console.log('\n# The official @hocuspocus/provider (devDependency) on the same doc: what it sends, and interop with raw A')
  {
    const { HocuspocusProvider, HocuspocusProviderWebsocket } = await import('@hocuspocus/provider')
    const { default: WS } = await import('ws')
    const sent = []
    class LoggingWS extends WS {
      send (data, ...rest) {
        const bytes = new Uint8Array(data)
        sent.push(bytes)
        let desc
        try { desc = describe(bytes) } catch (e) { desc = `<undecodable: ${e.message}>` }
        console.log(`  P -> [${hex(bytes)}]  ${desc}`)
        return super.send(data, ...rest)
      }
    }
    const docP = new Y.Doc()
    const socket = new HocuspocusProviderWebsocket({ url: `${server.url}/`, WebSocketPolyfill: LoggingWS })
    const provider = new HocuspocusProvider({ websocketProvider: socket, name: DOC, document: docP })
    provider.attach() // v4: a provider given a shared websocketProvider must be attached explicitly
    await new Promise((resolve, reject) => {
      provider.on('synced', resolve)
      setTimeout(() => reject(new Error('provider did not sync')), 3000)
    })
    const first = parse(sent[0])
    check(first.type === T.Auth && first.sub === A.Token, 'provider\'s first frame is Auth/Token')
    const ad = decoding.createDecoder(sent[0])
    decoding.readVarString(ad); decoding.readVarUint(ad); decoding.readVarUint(ad)
    const tok = decoding.readVarString(ad)
    const ver = decoding.hasContent(ad) ? decoding.readVarString(ad) : null
    console.log(`  INFO: provider auth = token ${JSON.stringify(tok)} + trailing providerVersion ${JSON.stringify(ver)}`)
    check(parse(sent[1]).type === T.Sync && parse(sent[1]).sub === S.Step1, 'provider sends SyncStep1 right after Auth, without waiting for Authenticated')
    check(docP.getText('t').toString() === docA.getText('t').toString(), 'provider synced the raw clients\' content')
    const am6 = a.frames.length
    docP.getText('t').insert(0, '>')
    const aGot = await a.waitFor(is(T.Sync, S.Update), 'provider edit at A', 3000, am6)
    Y.applyUpdate(docA, parse(aGot.bytes).payload)
    check(docA.getText('t').toString().startsWith('>'), 'raw A receives the provider\'s edit')
    provider.destroy()
    socket.destroy()
  }

  console.log('\n# Handshake example bytes for doc "d1" (empty client doc)')
  console.log(`  auth   : ${hex(authMsg(DOC, ''))}`)
  console.log(`  step1  : ${hex(step1Msg(DOC, new Y.Doc()))}`)
  console.log(`  update : ${hex(updateMsg(DOC, update))}`)

  await Promise.all([a.close(), b.close(), c.close()])
} catch (e) {
  console.error('FAIL', e.message)
  process.exitCode = 1
} finally {
  await server.stop()
}
if (failed()) process.exitCode = 1
console.log(process.exitCode ? '\nhocuspocus: FAILED' : '\nhocuspocus: all checks passed')
process.exit() // the provider's reconnect timers would otherwise keep node alive
