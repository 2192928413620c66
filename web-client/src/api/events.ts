// The workspace's live events (`GET /api/events`, protocol-spec/http.md): a server-sent event
// stream of JSON messages about docs and files the token may read. It is read with `fetch`
// rather than `EventSource` so the token travels in the Authorization header, never in a URL.
// The stream ends when the token expires or the server restarts; it is opened again (with the
// current token) after a short back-off, and every (re)connection starts with `hello`, after
// which a view reloads what it shows: nothing said while it was away is missed.
import { readEventStream } from './event-stream'
import { apiFetch } from './http'
import type { LiveEvent } from './types'

const RETRY_MIN_MS = 500
const RETRY_MAX_MS = 15000

/**
 * Calls `onEvent` with every event until the returned function is called. `onState` hears
 * whether the stream is connected.
 */
export function subscribeEvents(
  onEvent: (event: LiveEvent) => void,
  onState: (connected: boolean) => void = () => {}
): () => void {
  let stopped = false
  let controller: AbortController | null = null
  let delay = RETRY_MIN_MS

  const run = async (): Promise<void> => {
    while (!stopped) {
      controller = new AbortController()
      try {
        const response = await apiFetch('/api/events', {
          headers: { accept: 'text/event-stream' },
          signal: controller.signal
        })
        if (response.ok && response.body !== null) {
          onState(true)
          delay = RETRY_MIN_MS
          await readEventStream(response.body, onEvent)
        }
      } catch {
        // Offline, aborted or cut off: try again below.
      }
      onState(false)
      if (stopped) return
      await new Promise((resolve) => setTimeout(resolve, delay))
      delay = Math.min(delay * 2, RETRY_MAX_MS)
    }
  }
  void run()
  return () => {
    stopped = true
    controller?.abort()
  }
}
