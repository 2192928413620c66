// Shared helpers for the check-*.mjs scripts, and the plain y-websocket framing that
// check-ywebsocket.mjs and check-ysweet.mjs both speak (Hocuspocus prefixes the doc name).
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import path from 'node:path'
import WebSocket from 'ws'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as Y from 'yjs'

const here = path.dirname(fileURLToPath(import.meta.url))

export const hex = (u8) => Buffer.from(u8).toString('hex').replace(/(..)(?!$)/g, '$1 ')

/**
 * Start `node <script> 0` (unless `url` is given) and resolve with
 * { url: 'ws://127.0.0.1:PORT', stop() }.
 */
export async function startServer (script, url) {
  if (url) return { url: url.replace(/^http/, 'ws'), stop: async () => {} }
  const proc = spawn(process.execPath, [path.join(here, script), '0'], {
    cwd: here,
    stdio: ['ignore', 'pipe', 'inherit']
  })
  const line = await new Promise((resolve, reject) => {
    const rl = createInterface({ input: proc.stdout })
    rl.once('line', resolve)
    proc.once('exit', (code) => reject(new Error(`${script} exited with ${code} before listening`)))
  })
  const m = /^listening http:\/\/127\.0\.0\.1:(\d+)$/.exec(line)
  if (!m) throw new Error(`unexpected first line from ${script}: ${JSON.stringify(line)}`)
  proc.stdout.on('data', (d) => process.stdout.write(`[${script} stdout] ${d}`))
  return {
    url: `ws://127.0.0.1:${m[1]}`,
    stop: () => new Promise((resolve) => {
      if (proc.exitCode !== null) return resolve()
      proc.once('exit', resolve)
      proc.kill('SIGTERM')
    })
  }
}

/**
 * Raw binary WebSocket client that logs every received frame as hex
 * (plus a decoded description) and lets the caller await specific frames.
 */
export class RawClient {
  constructor (name, url, describe) {
    this.name = name
    this.url = url
    this.describe = describe
    this.frames = [] // { bytes, desc, t }
    this.waiters = []
    this.t0 = Date.now()
  }

  open () {
    return new Promise((resolve, reject) => {
      this.ws = new WebSocket(this.url)
      this.ws.binaryType = 'nodebuffer'
      this.ws.on('open', resolve)
      this.ws.on('error', reject)
      this.ws.on('close', (code, reason) => {
        console.log(`  ${this.name} <- CLOSE code=${code} reason=${JSON.stringify(String(reason))}`)
      })
      this.ws.on('message', (data, isBinary) => {
        const bytes = new Uint8Array(data)
        let desc
        try { desc = this.describe(bytes) } catch (e) { desc = `<undecodable: ${e.message}>` }
        const frame = { bytes, desc, isBinary, t: Date.now() - this.t0 }
        this.frames.push(frame)
        console.log(`  ${this.name} <- [${hex(bytes)}]  ${isBinary ? '' : '(TEXT) '}${desc}`)
        this.waiters = this.waiters.filter((w) => {
          if (w.pred(frame)) { w.resolve(frame); return false }
          return true
        })
      })
    })
  }

  send (bytes, what) {
    console.log(`  ${this.name} -> [${hex(bytes)}]  ${what}`)
    this.ws.send(bytes)
  }

  /** Resolve with the first frame (already received after index `from`, or future) matching pred. */
  waitFor (pred, what, timeoutMs = 3000, from = 0) {
    const seen = this.frames.slice(from).find(pred)
    if (seen) return Promise.resolve(seen)
    return new Promise((resolve, reject) => {
      const w = { pred, resolve }
      this.waiters.push(w)
      setTimeout(() => {
        if (this.waiters.includes(w)) {
          this.waiters = this.waiters.filter((x) => x !== w)
          reject(new Error(`${this.name}: timed out waiting for ${what}`))
        }
      }, timeoutMs)
    })
  }

  close () {
    return new Promise((resolve) => {
      if (this.ws.readyState === WebSocket.CLOSED) return resolve()
      this.ws.once('close', resolve)
      this.ws.close()
    })
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

let failures = 0
export function check (cond, what) {
  console.log(`${cond ? 'ok  ' : 'FAIL'} ${what}`)
  if (!cond) failures++
}
export const failed = () => failures

// ---- plain y-websocket framing (y-sweet adds message type 102, its sync status)
export const T = { Sync: 0, Awareness: 1, Auth: 2, QueryAwareness: 3, SyncStatus: 102 }
export const TN = { 0: 'Sync', 1: 'Awareness', 2: 'Auth', 3: 'QueryAwareness', 102: 'SyncStatus(custom)' }
export const S = { Step1: 0, Step2: 1, Update: 2 }
export const SN = ['Step1', 'Step2', 'Update']

export const msg = (type, write = () => {}) => {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, type)
  write(e)
  return encoding.toUint8Array(e)
}
export const step1Msg = (ydoc) => msg(T.Sync, (e) => { encoding.writeVarUint(e, S.Step1); encoding.writeVarUint8Array(e, Y.encodeStateVector(ydoc)) })
export const step2Msg = (ydoc, sv) => msg(T.Sync, (e) => { encoding.writeVarUint(e, S.Step2); encoding.writeVarUint8Array(e, Y.encodeStateAsUpdate(ydoc, sv)) })
export const updateMsg = (update) => msg(T.Sync, (e) => { encoding.writeVarUint(e, S.Update); encoding.writeVarUint8Array(e, update) })

export function parse (bytes) {
  const d = decoding.createDecoder(bytes)
  const type = decoding.readVarUint(d)
  const out = { type, sub: null, payload: null }
  if (type === T.Sync) { out.sub = decoding.readVarUint(d); out.payload = decoding.readVarUint8Array(d) }
  if (type === T.Awareness || type === T.SyncStatus) out.payload = decoding.readVarUint8Array(d)
  out.rest = decoding.hasContent(d) ? bytes.length - d.pos : 0
  return out
}
export function describe (bytes) {
  const m = parse(bytes)
  let s = `type=${m.type}(${TN[m.type] ?? '?'})`
  if (m.type === T.Sync) s += ` ${SN[m.sub]} payload=${m.payload.length}B`
  if (m.type === T.Awareness) s += ` awareness=${m.payload.length}B`
  if (m.type === T.SyncStatus) s += ` payload=${hex(m.payload)}`
  if (m.rest) s += ` (+${m.rest} trailing bytes)`
  return s
}
export const is = (type, sub = null) => (f) => { const m = parse(f.bytes); return m.type === type && (sub === null || m.sub === sub) }

/** A sends five updates in one synchronous burst; B must get one frame per update. */
export async function checkBurst (a, b, docA, docB) {
  console.log('\n# A sends 5 updates back-to-back: how many frames reach B?')
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
