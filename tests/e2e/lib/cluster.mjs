// The driver for cluster mode: several `tandem` nodes share every document through a real Redis
// (one stream per document, the durable log; pub/sub for presence) and a real Postgres
// (snapshots), with a TCP balancer in this process in front of them. Redis runs with
// `appendonly yes` and `appendfsync always`, as the nodes require; Postgres 15 runs as the
// `postgres` user (initdb refuses root). Everything here is started on free loopback ports in
// fresh temp directories and stopped by PID, also after a failure.
import { execFile, execFileSync, spawn } from 'node:child_process'
import { chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Scenario } from './server.mjs'
import { waitUntil } from './client.mjs'

export const REDIS_SERVER = process.env.REDIS_SERVER || '/usr/bin/redis-server'
export const REDIS_CLI = process.env.REDIS_CLI || '/usr/bin/redis-cli'
export const POSTGRES_BIN_DIR = process.env.POSTGRES_BIN_DIR || '/usr/lib/postgresql/15/bin'

const START_TIMEOUT_MS = 20000
const STOP_TIMEOUT_MS = 10000
const COMMAND_TIMEOUT_MS = 30000
const START_ATTEMPTS = 3 // a free port can be taken between our probe and the bind
const MAX_LOG_CHARS = 200000

/** A TCP port nobody listened on a moment ago (the kernel's pick for port 0). */
export function freePort () {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.unref()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

/** Runs `file args` to completion; resolves with its stdout, rejects with its stderr. */
function run (file, args, options = {}) {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: COMMAND_TIMEOUT_MS, ...options }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${file} ${args.join(' ')}: ${error.message}\n${stderr}`))
      else resolve(stdout)
    })
  })
}

/** Appends `chunk` to a log string, keeping its tail when it grows too long. */
function appendLog (log, chunk) {
  log += chunk.toString()
  return log.length > MAX_LOG_CHARS ? '[...]\n' + log.slice(-MAX_LOG_CHARS / 2) : log
}

/** Resolves true if a Redis on `port` answers a PING with +PONG (not -LOADING, not silence). */
export function redisPing (port, timeoutMs = 1000) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1')
    let reply = ''
    const done = (ok) => {
      clearTimeout(timer)
      socket.destroy()
      resolve(ok)
    }
    const timer = setTimeout(() => done(false), timeoutMs)
    socket.on('connect', () => socket.write('PING\r\n'))
    socket.on('data', (chunk) => {
      reply += chunk.toString()
      if (reply.includes('\r\n')) done(reply.startsWith('+PONG'))
    })
    socket.on('error', () => done(false))
    socket.on('close', () => done(false))
  })
}

/** One `redis-server` process on a fixed port and directory; `restart` reuses both (and the AOF). */
export class Redis {
  /**
   * @param {object} options
   * @param {number} options.port
   * @param {string} options.dir working directory: the AOF lives here
   * @param {Record<string, string>} [options.config] settings that override the defaults below
   */
  constructor ({ port, dir, config = {} }) {
    this.port = port
    this.dir = dir
    this.config = {
      bind: '127.0.0.1',
      port: String(port),
      appendonly: 'yes',
      appendfsync: 'always',
      save: '',
      dir,
      daemonize: 'no',
      ...config
    }
    this.child = null
    this.exit = null
    this.log = ''
    this.removed = false
  }

  get url () { return `redis://127.0.0.1:${this.port}/` }
  get running () { return this.child !== null && this.exit === null }
  get pid () { return this.child?.pid }

  /** Spawns redis-server; resolves once it answers PING with PONG (after replaying its AOF). */
  async start () {
    if (this.running) throw new Error('redis-server is already running')
    const args = Object.entries(this.config).flatMap(([key, value]) => [`--${key}`, value])
    const child = spawn(REDIS_SERVER, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    this.child = child
    this.exit = null
    this.log = appendLog(this.log, `--- redis-server ${args.join(' ')} ---\n`)
    const onOutput = (chunk) => { this.log = appendLog(this.log, chunk) }
    child.stdout.on('data', onOutput)
    child.stderr.on('data', onOutput)
    this.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.exit = { code, signal }
        resolve(this.exit)
      })
    })
    let spawnError = null
    child.on('error', (err) => { spawnError = err })
    await waitUntil(async () => {
      if (spawnError) throw new Error(`cannot run ${REDIS_SERVER}: ${spawnError.message}`)
      if (this.exit) throw new Error(`redis-server exited during start-up (${JSON.stringify(this.exit)}):\n${this.log}`)
      return redisPing(this.port)
    }, START_TIMEOUT_MS, `redis-server on port ${this.port} to answer PING`)
    return this
  }

  /** SIGKILL: nothing gets flushed beyond what `appendfsync always` already wrote. */
  async kill () {
    if (!this.running) return this.exit
    this.child.kill('SIGKILL')
    return this.exited
  }

  /** A new process on the same port and directory (the old one must have exited). */
  restart () {
    if (this.running) throw new Error('restart of a redis-server that is still running')
    return this.start()
  }

  /** SIGTERM (SIGKILL after a timeout), then removes the directory. Safe to call twice. */
  async stop () {
    if (this.running) {
      this.child.kill('SIGTERM')
      let timer
      const timeout = new Promise((resolve) => { timer = setTimeout(resolve, STOP_TIMEOUT_MS) })
      await Promise.race([this.exited, timeout])
      clearTimeout(timer)
      if (this.running) await this.kill()
    }
    if (!this.removed) {
      rmSync(this.dir, { recursive: true, force: true })
      this.removed = true
    }
  }

  /** `redis-cli -p <port> ...args`; resolves with its stdout. */
  cli (...args) {
    return run(REDIS_CLI, ['-h', '127.0.0.1', '-p', String(this.port), ...args])
  }

  /** `XLEN key` as a number (0 for a key that does not exist). */
  async xlen (key) {
    const out = (await this.cli('XLEN', key)).trim()
    const n = Number(out)
    if (!Number.isInteger(n)) throw new Error(`XLEN ${key}: unexpected reply ${JSON.stringify(out)}`)
    return n
  }

  logs () {
    return `--- redis-server (port ${this.port}, dir ${this.dir}, pid ${this.pid}, exit ${JSON.stringify(this.exit)}) ---\n${this.log}`
  }
}

/**
 * A Redis on a free loopback port in a fresh temp directory, with `appendonly yes`,
 * `appendfsync always` and no RDB snapshots unless `config` overrides them
 * (e.g. `{ appendonly: 'no' }`).
 */
export async function startRedis ({ config = {} } = {}) {
  if (!existsSync(REDIS_SERVER)) throw new Error(`redis-server is required at ${REDIS_SERVER} (apt-get install -y redis-server)`)
  for (let attempt = 1; ; attempt++) {
    const redis = new Redis({ port: await freePort(), dir: mkdtempSync(join(tmpdir(), 'tandem-redis-')), config })
    try {
      return await redis.start()
    } catch (err) {
      await redis.stop()
      if (attempt >= START_ATTEMPTS || !/Address already in use/.test(redis.log)) throw err
    }
  }
}

/**
 * Postgres 15 in its own temp directory (data, socket and log), owned by the `postgres` user
 * when we are root, since initdb and postgres refuse to run as root.
 */
export class Postgres {
  constructor ({ root, port, asRoot }) {
    this.root = root
    this.dataDir = join(root, 'data')
    this.logFile = join(root, 'postgres.log')
    this.port = port
    this.asRoot = asRoot
    this.started = false
    this.stopped = false
    this.finalLog = null
  }

  get url () { return `postgres://postgres@127.0.0.1:${this.port}/tandem` }

  /** The postmaster's PID from `postmaster.pid`, or undefined when it is not running. */
  get pid () {
    try {
      return Number(readFileSync(join(this.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]) || undefined
    } catch { return undefined }
  }

  /** Runs one of the Postgres binaries as the `postgres` user (directly when we are not root). */
  pg (tool, args) {
    const file = join(POSTGRES_BIN_DIR, tool)
    return this.asRoot
      ? run('runuser', ['-u', 'postgres', '--', file, ...args], { cwd: this.root })
      : run(file, args, { cwd: this.root })
  }

  async init () {
    // --no-sync only skips initdb's own final fsync of the template files; the server runs with
    // fsync=on.
    await this.pg('initdb', ['-A', 'trust', '-U', 'postgres', '-D', this.dataDir, '--no-sync'])
  }

  async start () {
    const options = `-p ${this.port} -k ${this.root} -c listen_addresses=127.0.0.1 -c fsync=on`
    this.started = true
    await this.pg('pg_ctl', ['-D', this.dataDir, '-l', this.logFile, '-o', options, '-w', '-t', String(START_TIMEOUT_MS / 1000), 'start'])
    await run(join(POSTGRES_BIN_DIR, 'createdb'), ['-h', '127.0.0.1', '-p', String(this.port), '-U', 'postgres', 'tandem'])
    return this
  }

  /** `psql` on the `tandem` database; resolves with its unaligned, tuples-only output. */
  psql (sql) {
    return run(join(POSTGRES_BIN_DIR, 'psql'), ['-h', '127.0.0.1', '-p', String(this.port), '-U', 'postgres', '-d', 'tandem', '-XAtc', sql])
  }

  /** `pg_ctl stop -m fast` (SIGKILL of the postmaster by PID if that fails), then removes the directory. */
  async stop () {
    if (this.stopped) return
    this.stopped = true
    let failure = null
    if (this.started && this.pid !== undefined) {
      try {
        await this.pg('pg_ctl', ['-D', this.dataDir, '-m', 'fast', '-w', '-t', String(STOP_TIMEOUT_MS / 1000), 'stop'])
      } catch (err) {
        failure = err
        const pid = this.pid
        if (pid !== undefined) try { process.kill(pid, 'SIGKILL') } catch {}
      }
    }
    this.finalLog = this.readLog()
    rmSync(this.root, { recursive: true, force: true })
    if (failure) throw failure
  }

  readLog () {
    try { return readFileSync(this.logFile, 'utf8').slice(-MAX_LOG_CHARS) } catch { return '' }
  }

  logs () {
    return `--- postgres (port ${this.port}, dir ${this.root}) ---\n${this.finalLog ?? this.readLog()}`
  }
}

/** The uid and gid of the `postgres` user. */
function postgresUser () {
  const id = (flag) => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim())
  try {
    return { uid: id('-u'), gid: id('-g') }
  } catch {
    throw new Error('the postgres user is missing (apt-get install -y postgresql creates it)')
  }
}

/** Postgres 15 on a free loopback port with an empty database `tandem`; `url` names it. */
export async function startPostgres () {
  if (!existsSync(join(POSTGRES_BIN_DIR, 'initdb')) || !existsSync(join(POSTGRES_BIN_DIR, 'pg_ctl'))) {
    throw new Error(`Postgres 15 is required: no initdb and pg_ctl in ${POSTGRES_BIN_DIR} (apt-get install -y postgresql)`)
  }
  const asRoot = process.getuid?.() === 0
  for (let attempt = 1; ; attempt++) {
    const root = mkdtempSync(join(tmpdir(), 'tandem-pg-'))
    if (asRoot) {
      const { uid, gid } = postgresUser()
      chownSync(root, uid, gid)
    }
    const postgres = new Postgres({ root, port: await freePort(), asRoot })
    try {
      await postgres.init()
      return await postgres.start()
    } catch (err) {
      const log = postgres.readLog()
      await postgres.stop().catch(() => {})
      if (attempt >= START_ATTEMPTS || !/Address already in use/.test(log)) {
        throw new Error(`${err.message}\n--- postgres log ---\n${log}`)
      }
    }
  }
}

/**
 * A TCP balancer on a free loopback port: each incoming connection goes to a backend picked at
 * random (`random`, e.g. a seeded `prng`, picks it), bytes are piped both ways, and a close on
 * one side closes the other (a connection to a dead backend just closes). It has `port` and
 * `wsUrl`, so client.mjs's `connect(balancer, doc)` works through it.
 */
export class Balancer {
  constructor ({ random = Math.random } = {}) {
    this.random = random
    this.backends = []
    this.accepted = new Map() // backend port -> connections ever sent to it
    this.open = new Map() // backend port -> connections to it still open
    this.sockets = new Set()
    this.server = null
    this.port = null
  }

  get wsUrl () { return `ws://127.0.0.1:${this.port}/ws` }
  get httpUrl () { return `http://127.0.0.1:${this.port}` }

  async start () {
    this.server = net.createServer((socket) => this.#accept(socket))
    await new Promise((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(0, '127.0.0.1', resolve)
    })
    this.port = this.server.address().port
    return this
  }

  /** The backend ports new connections go to from now on; open connections stay where they are. */
  setBackends (ports) {
    this.backends = [...ports]
  }

  /** Connections ever sent to the backend on `port`. */
  connectionsTo (port) { return this.accepted.get(port) ?? 0 }

  /** Connections to the backend on `port` that are still open. */
  openConnectionsTo (port) { return this.open.get(port) ?? 0 }

  #track (socket) {
    this.sockets.add(socket)
    socket.on('close', () => this.sockets.delete(socket))
  }

  #accept (client) {
    this.#track(client)
    client.on('error', () => {})
    if (this.backends.length === 0) {
      client.destroy()
      return
    }
    const port = this.backends[Math.floor(this.random() * this.backends.length)]
    this.accepted.set(port, this.connectionsTo(port) + 1)
    this.open.set(port, this.openConnectionsTo(port) + 1)
    const upstream = net.connect(port, '127.0.0.1')
    this.#track(upstream)
    upstream.on('error', () => {})
    upstream.on('close', () => this.open.set(port, this.openConnectionsTo(port) - 1))
    client.pipe(upstream)
    upstream.pipe(client)
    // A clean end is passed on with end(), which lets buffered bytes (a close frame) out first;
    // a reset or a refused connection is passed on as a reset.
    const join = (from, to) => from.on('close', (hadError) => (hadError ? to.destroy() : to.end()))
    join(client, upstream)
    join(upstream, client)
  }

  /** Stops listening and resets every connection. */
  async close () {
    if (this.server === null) return
    const server = this.server
    this.server = null
    for (const socket of this.sockets) socket.destroy()
    await new Promise((resolve) => server.close(() => resolve()))
  }
}

/** Waits for every promise to settle, then throws the first rejection, if any. */
async function settled (promises) {
  const failed = (await Promise.allSettled(promises)).find((result) => result.status === 'rejected')
  if (failed) throw failed.reason
}

/** Where `moto_server` is when it is not on PATH (pyenv's shims). */
const MOTO_FALLBACK = '/root/.pyenv/shims/moto_server'
/** The bucket `startMoto` creates. */
export const MOTO_BUCKET = 'tandem'

/**
 * An S3-compatible server of our own: moto (`pip install 'moto[server]'`) on a free loopback
 * port, in memory, with bucket `MOTO_BUCKET`; `env` is what a node needs to reach it.
 */
export async function startMoto () {
  const program = existsSync(MOTO_FALLBACK) && !process.env.PATH.split(':').some((dir) => existsSync(join(dir, 'moto_server')))
    ? MOTO_FALLBACK
    : 'moto_server'
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'tandem-moto-'))
  const child = spawn(program, ['-H', '127.0.0.1', '-p', String(port)], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] })
  let log = ''
  child.stderr.on('data', (chunk) => { log = appendLog(log, chunk) })
  const url = `http://127.0.0.1:${port}`
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve))
      process.kill(child.pid, 'SIGKILL')
      await exited
    }
    rmSync(dir, { recursive: true, force: true })
  }
  try {
    await waitUntil(async () => {
      if (child.exitCode !== null) throw new Error(`moto_server exited: ${log}`)
      try { return (await fetch(`${url}/`)).ok } catch { return false }
    }, START_TIMEOUT_MS, 'moto_server answering')
    const made = await fetch(`${url}/${MOTO_BUCKET}`, { method: 'PUT' })
    if (!made.ok) throw new Error(`creating the bucket: ${made.status} ${await made.text()}`)
  } catch (err) {
    await stop()
    throw err
  }
  return {
    url,
    stop,
    logs: () => log,
    env: {
      AWS_ENDPOINT_URL: url,
      AWS_ALLOW_HTTP: 'true',
      AWS_REGION: 'us-east-1',
      AWS_ACCESS_KEY_ID: 'testing',
      AWS_SECRET_ACCESS_KEY: 'testing'
    }
  }
}

/**
 * The flags that make `tandem serve` a cluster node on these shared services: file bytes in
 * `blobDir`, or with `s3` in that bucket (the nodes then need the store's `AWS_*` variables).
 */
export function clusterFlags ({ redis, postgres, blobDir, s3 = null }) {
  const blobs = s3 ? ['--blob-store', `s3://${MOTO_BUCKET}/files`] : ['--blob-dir', blobDir]
  return ['--redis-url', redis.url, '--postgres-url', postgres.url, ...blobs]
}

/**
 * Redis, Postgres, a shared blob directory, `nodes` tandem nodes (each its own data directory,
 * flags `clusterFlags(...)` then `args`) and a balancer in front of the running ones.
 */
export class Cluster {
  constructor ({ scenario, args, s3 = false }) {
    this.ownsScenario = !scenario
    this.wantsS3 = s3
    this.s3 = null
    this.scenario = scenario ?? new Scenario()
    this.extraArgs = args
    this.nodes = [] // the current process of each node slot
    this.history = [] // every node process ever started, for stop()
    this.redis = null
    this.postgres = null
    this.balancer = null
    this.blobDir = join(this.scenario.root, 'blobs')
    this.stopped = false
  }

  get args () {
    return [...clusterFlags({ redis: this.redis, postgres: this.postgres, blobDir: this.blobDir, s3: this.s3 }), ...this.extraArgs]
  }

  /** The ports of the nodes that are running. */
  livePorts () {
    return this.nodes.filter((node) => node.running).map((node) => node.port)
  }

  async #startNode (slot, args, dataDir) {
    const node = this.scenario.server(args, dataDir)
    this.history.push(node)
    this.nodes[slot] = node
    await node.start()
    return node
  }

  /** Starts `n` nodes and points the balancer at them. */
  async startNodes (n) {
    await settled(Array.from({ length: n }, (_, slot) => this.#startNode(slot, this.args, this.scenario.newDataDir())))
    this.balancer.setBackends(this.livePorts())
  }

  /** kill -9 of node `i`; the balancer stops sending new connections to it at once. */
  async killNode (i) {
    const node = this.nodes[i]
    this.balancer.setBackends(this.livePorts().filter((port) => port !== node.port))
    return node.kill()
  }

  /** A new process for node `i` on the same data directory and flags, on a new port; the balancer follows. */
  async restartNode (i) {
    const old = this.nodes[i]
    if (old.running) throw new Error(`restart of node ${i}, which is still running`)
    const node = await this.#startNode(i, old.args, old.dataDir)
    this.balancer.setBackends(this.livePorts())
    return node
  }

  /** Stops every node (SIGKILL by PID), the balancer, Redis and Postgres, each even if another fails. */
  async stop () {
    if (this.stopped) return
    this.stopped = true
    const failures = []
    const attempt = async (step) => { try { await step() } catch (err) { failures.push(err) } }
    for (const node of this.history) await attempt(() => node.kill())
    await attempt(() => this.balancer?.close())
    await attempt(() => this.redis?.stop())
    await attempt(() => this.postgres?.stop())
    await attempt(() => this.s3?.stop())
    if (this.ownsScenario) await attempt(() => this.scenario.cleanup())
    if (failures.length > 0) throw failures[0]
  }

  /** Redis's and Postgres's logs (and the nodes' stderr when no scenario prints them). */
  logs () {
    return [
      this.ownsScenario ? this.scenario.logs() : '',
      this.redis ? this.redis.logs() : '',
      this.postgres ? this.postgres.logs() : ''
    ].filter(Boolean).join('\n')
  }
}

/**
 * A running cluster: `{ nodes, balancer, redis, postgres, s3, killNode(i), restartNode(i), stop() }`.
 * With `scenario` (a test's `s`) its nodes' logs join the failure report and the scenario's
 * cleanup stops it; without one, call `stop()`. `random` picks the balancer's backends; with
 * `s3` the nodes keep file bytes in a bucket on a moto server of their own instead of a
 * shared directory.
 */
export async function startCluster ({ nodes = 3, args = [], scenario = null, random, s3 = false } = {}) {
  const cluster = new Cluster({ scenario, args, s3 })
  scenario?.own(cluster)
  try {
    mkdirSync(cluster.blobDir, { recursive: true })
    // allSettled, not all: whatever did start is on `cluster` before a failure is thrown, so
    // stop() finds it.
    await settled([
      startRedis().then((redis) => { cluster.redis = redis }),
      startPostgres().then((postgres) => { cluster.postgres = postgres }),
      new Balancer({ random }).start().then((balancer) => { cluster.balancer = balancer }),
      s3 ? startMoto().then((moto) => { cluster.s3 = moto }) : null
    ])
    // The nodes inherit this process's environment (lib/server.mjs), so the store's settings
    // go there; each test file runs in a process of its own.
    if (cluster.s3) Object.assign(process.env, cluster.s3.env)
    await cluster.startNodes(nodes)
  } catch (err) {
    if (!scenario) await cluster.stop().catch(() => {})
    throw err
  }
  return cluster
}
