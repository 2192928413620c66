// Shared helpers for check-ywebsocket.mjs / check-hocuspocus.mjs.
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import path from 'node:path'
import WebSocket from 'ws'

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
