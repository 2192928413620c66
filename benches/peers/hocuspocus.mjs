// Starts @hocuspocus/server v4 for Tandem's benchmarks: no extensions (so no
// persistence), no onAuthenticate hook (any token, including "", is
// accepted), default debounce (2000 ms) / maxDebounce (10000 ms), default
// flushDelay 0 (broadcasts coalesced per event-loop turn), bound to 127.0.0.1.
//
//   node hocuspocus.mjs PORT      (PORT 0 = let the OS pick one)
//
// Prints exactly one line `listening http://127.0.0.1:PORT` on stdout once the
// socket is bound. The WebSocket endpoint is ws://127.0.0.1:PORT/ (any path);
// the document is chosen per message, not by URL (see PROTOCOLS.md).
import { Server } from '@hocuspocus/server'

const port = Number.parseInt(process.argv[2] ?? '0', 10)
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`usage: node hocuspocus.mjs PORT (got ${process.argv[2]})`)
  process.exit(2)
}

const server = new Server({
  // Server.listen(port) ignores a falsy port argument, so pass it (even 0)
  // through the configuration instead.
  port,
  address: '127.0.0.1',
  quiet: true, // no start screen: our stdout carries only the listening line
  extensions: [],
  // stopOnSignals defaults to true: SIGINT/SIGTERM run server.destroy() and exit 0
})

await server.listen()
process.stdout.write(`listening http://127.0.0.1:${server.address.port}\n`)
