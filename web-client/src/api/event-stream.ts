// Reading a server-sent event stream (the body of `GET /api/events`) into `LiveEvent`s. The
// framing (`data:` lines, `event:`/`id:`/comment lines, LF, CRLF or CR line ends, a blank line
// ending an event) is left to `eventsource-parser`; this file only decodes the bytes and reads
// each event's data as JSON. Pure: it takes any `ReadableStream`, so the unit tests feed it one.
// eventsource-parser stays on 3.x (and vitest on 4.x): their next majors want Node 22, and the
// unit tests run on Node 20, the version on the CI machines.
import { createParser } from 'eventsource-parser'
import type { LiveEvent } from './types'

/**
 * Calls `onEvent` with every JSON event of `body` until it ends. An event whose data is not
 * JSON is skipped: it is not ours to interpret.
 */
export async function readEventStream(
  body: ReadableStream<Uint8Array>,
  onEvent: (event: LiveEvent) => void
): Promise<void> {
  const parser = createParser({
    onEvent(message) {
      // A throwing listener must not end the stream (and so force a reconnect): the stream
      // would reopen into the same event forever.
      try {
        onEvent(JSON.parse(message.data) as LiveEvent)
      } catch {
        // Not JSON, or the listener failed on it: either way, go on with the next event.
      }
    }
  })
  const reader = body.getReader()
  const decoder = new TextDecoder()
  for (;;) {
    const { value, done } = await reader.read()
    if (done) return
    parser.feed(decoder.decode(value, { stream: true }))
  }
}
