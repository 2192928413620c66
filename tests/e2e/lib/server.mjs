// Spawns the real `tandem` binary on a free port with its own data directory.
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { once } from 'node:events'

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
export const TANDEM_BIN = process.env.TANDEM_BIN || join(repoRoot, 'target', 'debug', 'tandem')

export class TandemServer {
  constructor (args = [], dataDir = null) {
    this.args = args
    this.dataDir = dataDir || mkdtempSync(join(tmpdir(), 'tandem-e2e-'))
    this.ownsDataDir = !dataDir
    this.stderr = ''
    this.child = null
    this.port = null
  }

  /** Starts the server; resolves once it prints its listening line. */
  async start () {
    this.child = spawn(TANDEM_BIN, ['serve', '--port', '0', '--data-dir', this.dataDir, ...this.args], {
      stdio: ['ignore', 'pipe', 'pipe']
    })
    this.child.stderr.on('data', (chunk) => { this.stderr += chunk.toString() })
    this.exited = once(this.child, 'exit')
    const port = await new Promise((resolve, reject) => {
      let out = ''
      const timer = setTimeout(() => reject(new Error(`tandem did not start:\n${this.stderr}`)), 20000)
      this.child.stdout.on('data', (chunk) => {
        out += chunk.toString()
        const match = out.match(/tandem listening on http:\/\/127\.0\.0\.1:(\d+)/)
        if (match) { clearTimeout(timer); resolve(Number(match[1])) }
      })
      this.child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`tandem exited with ${code}:\n${this.stderr}`)) })
    })
    this.port = port
    return this
  }

  get wsUrl () { return `ws://127.0.0.1:${this.port}/ws` }
  get httpUrl () { return `http://127.0.0.1:${this.port}` }

  /** SIGTERM; resolves with the exit code. */
  async stop () {
    if (!this.child || this.child.exitCode !== null) return this.child?.exitCode
    this.child.kill('SIGTERM')
    const [code] = await this.exited
    return code
  }

  /** SIGKILL: no chance to flush anything. */
  async kill () {
    if (!this.child || this.child.exitCode !== null) return
    this.child.kill('SIGKILL')
    await this.exited
  }

  /** A new server process on the same data directory. */
  async restart () {
    const next = new TandemServer(this.args, this.dataDir)
    next.ownsDataDir = this.ownsDataDir
    this.ownsDataDir = false
    return next.start()
  }

  async cleanup () {
    await this.kill()
    if (this.ownsDataDir) rmSync(this.dataDir, { recursive: true, force: true })
  }

  async getJson (path) {
    const res = await fetch(this.httpUrl + path, { headers: { accept: 'application/json' } })
    return { status: res.status, body: await res.json() }
  }
}
