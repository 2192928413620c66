import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { execSync, spawn } from 'node:child_process'
const mk = (port) => { const doc = new Y.Doc(); const p = new WebsocketProvider(`ws://127.0.0.1:${port}/ws`, 'smoke/b.md', doc, { WebSocketPolyfill: WebSocket }); const closes=[]; p.on('connection-close', (e) => closes.push(e?.code)); return { doc, p, text: doc.getText('content'), closes } }
const a = mk(18081), b = mk(18082)
await new Promise(r => setTimeout(r, 800))
const pid = execSync("pgrep -f 'redis-server 127.0.0.1:16379'").toString().trim().split('\n')[0]
console.log('killing redis', pid)
execSync(`kill -9 ${pid}`)
for (let i = 0; i < 20; i++) { a.text.insert(a.text.length, `[a${i}]`); b.text.insert(0, `[b${i}]`); await new Promise(r => setTimeout(r, 50)) }
console.log('closes while down', a.closes, b.closes)
spawn('redis-server', ['--bind','127.0.0.1','--port','16379','--appendonly','yes','--appendfsync','always','--save','','--dir','/tmp/smoke/r'], { detached: true, stdio: 'ignore' }).unref()
const t0 = Date.now()
while ((a.text.toString() !== b.text.toString() || a.text.length < 200) && Date.now() - t0 < 15000) await new Promise(r => setTimeout(r, 50))
console.log('converged after redis restart', a.text.toString() === b.text.toString(), a.text.length, Date.now() - t0, a.closes, b.closes)
a.p.destroy(); b.p.destroy(); process.exit(0)
