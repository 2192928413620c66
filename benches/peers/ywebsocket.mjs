// Starts @y/websocket-server 0.1.1 (the reference y-websocket server) for
// Tandem's benchmarks: in-memory only (no YPERSISTENCE), gc on, bound to
// 127.0.0.1.
//
//   node ywebsocket.mjs PORT      (PORT 0 = let the OS pick one)
//
// Prints exactly one line `listening http://127.0.0.1:PORT` on stdout once the
// socket is bound. Doc name = URL path after the first slash, query stripped
// (ws://127.0.0.1:PORT/my-doc -> "my-doc"), exactly as upstream's bin/server.js.
import http from 'node:http'
import { WebSocketServer } from 'ws'

// Upstream enables persistence only when YPERSISTENCE is set; make sure it is
// not, and keep gc on (upstream disables gc when GC=false|0).
delete process.env.YPERSISTENCE
delete process.env.GC
delete process.env.CALLBACK_URL

const { setupWSConnection } = await import('@y/websocket-server/utils')

const port = Number.parseInt(process.argv[2] ?? '0', 10)
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`usage: node ywebsocket.mjs PORT (got ${process.argv[2]})`)
  process.exit(2)
}

const wss = new WebSocketServer({ noServer: true })
wss.on('connection', (conn, req) => setupWSConnection(conn, req, { gc: true }))

const server = http.createServer((_req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain' })
  res.end('okay')
})
server.on('upgrade', (req, socket, head) => {
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req))
})

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening http://127.0.0.1:${server.address().port}\n`)
})

const shutdown = () => {
  for (const c of wss.clients) c.terminate()
  server.close(() => process.exit(0))
  setTimeout(() => process.exit(0), 1000).unref()
}
process.on('SIGINT', shutdown)
process.on('SIGTERM', shutdown)
