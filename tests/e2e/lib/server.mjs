// The one driver for the real `tandem` binary: spawn it on a free port with its own data
// directory, stop it with SIGTERM or SIGKILL, restart it on the same data directory, and a
// `scenario` wrapper that cleans up everything a test started and prints the servers' logs
// only when the test fails.
import { execFile, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { connect, destroy, openRaw } from './client.mjs'

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
export const TANDEM_BIN = process.env.TANDEM_BIN || join(repoRoot, 'target', 'debug', 'tandem')

const START_TIMEOUT_MS = 20000
const STOP_TIMEOUT_MS = 20000
const MAX_LOG_CHARS = 200000
const LISTENING_LINE = /^tandem listening on http:\/\/127\.0\.0\.1:(\d+)$/

/** The environment for the server: ours, minus every TANDEM_* setting that could override a test's flags. */
function serverEnv () {
  const env = { RUST_BACKTRACE: '1' }
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith('TANDEM_') && key !== 'RUST_LOG') env[key] = value
  }
  return env
}

export class TandemServer {
  /**
   * @param {object} options
   * @param {string[]} [options.args] extra flags after `serve --port 0 --data-dir <dir>`
   * @param {string} options.dataDir
   */
  constructor ({ args = [], dataDir }) {
    this.args = args
    this.dataDir = dataDir
    this.stdout = ''
    this.stderr = ''
    this.child = null
    this.port = null
    this.exit = null // { code, signal } once the process has exited
  }

  /** Spawns the binary; resolves once it has printed its listening line. */
  async start () {
    const child = spawn(TANDEM_BIN, ['serve', '--port', '0', '--data-dir', this.dataDir, ...this.args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: serverEnv()
    })
    this.child = child
    child.stderr.on('data', (chunk) => {
      this.stderr += chunk.toString()
      if (this.stderr.length > MAX_LOG_CHARS) this.stderr = '[...]\n' + this.stderr.slice(-MAX_LOG_CHARS / 2)
    })
    this.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.exit = { code, signal }
        resolve(this.exit)
      })
    })
    // 'close' comes after 'exit' once stdout and stderr are drained: all of stderr is in.
    this.closed = new Promise((resolve) => child.on('close', () => resolve(this.exit)))
    this.port = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`tandem printed no listening line within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS)
      child.on('error', (err) => { clearTimeout(timer); reject(err) })
      child.stdout.on('data', (chunk) => {
        this.stdout += chunk.toString()
        const lines = this.stdout.split('\n')
        if (lines.length < 2) return // no complete line yet
        clearTimeout(timer)
        const match = lines[0].match(LISTENING_LINE)
        if (match) resolve(Number(match[1]))
        else reject(new Error(`unexpected first stdout line: ${JSON.stringify(lines[0])}`))
      })
      this.exited.then(({ code, signal }) => {
        clearTimeout(timer)
        reject(new Error(`tandem exited during start-up (code ${code}, signal ${signal})`))
      })
    })
    return this
  }

  get wsUrl () { return `ws://127.0.0.1:${this.port}/ws` }
  get httpUrl () { return `http://127.0.0.1:${this.port}` }
  get running () { return this.child !== null && this.exit === null }

  /** SIGTERM; resolves with `{ code, signal }` once the process has exited. */
  async stop () {
    if (!this.running) return this.exit
    this.child.kill('SIGTERM')
    let timer
    const timeout = new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`tandem did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM`)), STOP_TIMEOUT_MS)
    })
    try {
      return await Promise.race([this.exited, timeout])
    } finally { clearTimeout(timer) }
  }

  /** SIGKILL: the process gets no chance to flush anything. */
  async kill () {
    if (!this.running) return this.exit
    this.child.kill('SIGKILL')
    return this.exited
  }

  /** GET `path`; resolves with the fetch Response. */
  get (path, headers = {}) {
    return fetch(this.httpUrl + path, { headers })
  }

  /** GET `path` with `Accept: application/json`; resolves with `{ status, body }`. */
  async getJson (path) {
    const res = await this.get(path, { accept: 'application/json' })
    const text = await res.text()
    let body
    try { body = JSON.parse(text) } catch { body = text }
    return { status: res.status, contentType: res.headers.get('content-type'), body }
  }

  /** `GET /api/docs/<name>` as a Yjs v1 update. */
  async getUpdate (docName) {
    const res = await this.get(`/api/docs/${docName}`)
    if (res.status !== 200) throw new Error(`GET /api/docs/${docName}: ${res.status} ${await res.text()}`)
    return { contentType: res.headers.get('content-type'), update: new Uint8Array(await res.arrayBuffer()) }
  }

  /** `GET /api/docs` as an array of entries (the server wraps it as `{ docs: [...] }`). */
  async listDocs () {
    const { status, body } = await this.getJson('/api/docs')
    if (status !== 200) throw new Error(`GET /api/docs: ${status} ${JSON.stringify(body)}`)
    const docs = Array.isArray(body) ? body : body.docs
    if (!Array.isArray(docs)) throw new Error(`GET /api/docs: no list in ${JSON.stringify(body)}`)
    return docs
  }
}

/**
 * Runs `tandem <args>` to completion with `input` on stdin (e.g. `user add ... --password-stdin`);
 * resolves with its stdout, rejects with its stderr when it fails.
 */
export function tandemCommand (args, input = '') {
  return new Promise((resolve, reject) => {
    const child = execFile(TANDEM_BIN, args, { env: serverEnv(), timeout: START_TIMEOUT_MS }, (error, stdout, stderr) => {
      if (error) reject(new Error(`tandem ${args.join(' ')}: ${error.message}\n${stderr}`))
      else resolve(stdout)
    })
    child.stdin.end(input)
  })
}

/**
 * Everything one test starts: servers, y-websocket clients, raw sockets, child processes, and
 * owned resources (a cluster's Redis, Postgres and balancer: see cluster.mjs).
 * `cleanup` ends all of them; `logs` gives every server's stderr, and every owned resource's
 * log, for a failure report.
 */
export class Scenario {
  constructor () {
    this.root = mkdtempSync(join(tmpdir(), 'tandem-e2e-'))
    this.servers = []
    this.clients = []
    this.sockets = []
    this.processes = []
    this.owned = []
    this.nDataDirs = 0
  }

  /** A new data directory's path (not created); `startServer` and `tandemCommand` take it. */
  newDataDir () {
    return join(this.root, `data-${this.nDataDirs++}`)
  }

  /**
   * A new server on `dataDir`, registered for cleanup and logs but not started yet: for a test
   * that needs the server object even when `start()` fails (it reads `exit` and `stderr`).
   */
  server (args = [], dataDir = this.newDataDir()) {
    const server = new TandemServer({ args, dataDir })
    this.servers.push(server)
    return server
  }

  /** A new server on `dataDir`, by default a new, empty one. */
  startServer (args = [], dataDir = this.newDataDir()) {
    return this.server(args, dataDir).start()
  }

  /** A new server process with the same flags on the same data directory (the old one must have exited). */
  restart (server) {
    if (server.running) throw new Error('restart of a server that is still running')
    return this.server(server.args, server.dataDir).start()
  }

  /**
   * Registers something the test started that is no server: `resource.stop()` runs at cleanup
   * (after the servers are killed, the last owned first) and `resource.logs()`, if any, joins
   * the failure report.
   */
  own (resource) {
    this.owned.push(resource)
    return resource
  }

  /** A stock y-websocket client on `docName` (see client.mjs `connect`). */
  connect (server, docName, options) {
    const client = connect(server, docName, options)
    this.clients.push(client)
    return client
  }

  /** A raw `ws` socket on `/ws/<docName>`, resolved once open. */
  async openRaw (server, docName) {
    const pending = openRaw(server, docName)
    this.sockets.push(pending.ws)
    return pending.opened
  }

  /** Registers a child process to be killed at cleanup. */
  track (child) {
    this.processes.push(child)
    return child
  }

  logs () {
    return [
      ...this.servers.map((server, idx) =>
        `--- tandem #${idx} (port ${server.port}, data ${server.dataDir}, exit ${JSON.stringify(server.exit)}) stderr ---\n${server.stderr}`
      ),
      ...this.owned.filter((resource) => typeof resource.logs === 'function').map((resource) => resource.logs())
    ].join('\n')
  }

  async cleanup () {
    destroy(...this.clients)
    for (const ws of this.sockets) ws.terminate()
    for (const child of this.processes) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    for (const server of this.servers) await server.kill()
    // Every owned resource gets its stop even when an earlier one fails; the first failure is
    // reported once the temp directory is gone.
    const failures = []
    for (const resource of [...this.owned].reverse()) {
      try { await resource.stop() } catch (err) { failures.push(err) }
    }
    rmSync(this.root, { recursive: true, force: true })
    if (failures.length > 0) throw failures[0]
  }
}

/**
 * Wraps a test body: `test('name', opts, scenario(async (s) => { ... }))`.
 * On failure the servers' stderr is printed; everything is cleaned up either way.
 */
export function scenario (body) {
  return async (t) => {
    const s = new Scenario()
    try {
      await body(s, t)
    } catch (err) {
      process.stderr.write(`\n=== ${t.name} failed; server logs follow ===\n${s.logs()}\n=== end of server logs ===\n`)
      throw err
    } finally {
      await s.cleanup()
    }
  }
}
