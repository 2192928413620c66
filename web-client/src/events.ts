// The workspace's live events (`GET /api/events`, protocol-spec/http.md): a server-sent event
// stream of JSON messages about docs and files the token may read. It is read with `fetch`
// rather than `EventSource` so the token travels in the Authorization header, never in a URL.
// The stream ends when the token expires or the server restarts; it is opened again (with the
// current token) after a short back-off, and every (re)connection starts with `hello`, after
// which a view reloads what it shows: nothing said while it was away is missed.
import { apiFetch } from './session'

/** Who did something, as the server names them. */
export interface Actor {
  sub: string | null
  name: string
}

/** The messages the stream carries (the `type` tag), as far as the client uses them. */
export type LiveEvent =
  | { type: 'hello' }
  | { type: 'resync' }
  | { type: 'doc_changed', doc: string, actor: Actor, at_ms: number }
  | { type: 'doc_presence', doc: string, peers: number }
  | { type: 'file_uploaded', path: string, version: number, actor: Actor }
  | { type: 'file_renamed', from: string, to: string, actor: Actor }
  | { type: 'file_deleted', path: string, actor: Actor }
  | { type: 'version_created', doc: string, version: number }
  | { type: 'version_restored', doc: string, version: number }
  | { type: 'activity', entry: ActivityEntry }

/** One line of the activity feed (`GET /api/activity`). */
export interface ActivityEntry {
  id: number
  kind: string
  path: string
  actor: Actor
  started_ms: number
  ended_ms: number
  n_updates?: number
  details?: Record<string, unknown>
}

const RETRY_MIN_MS = 500
const RETRY_MAX_MS = 15000

/**
 * Calls `onEvent` with every event until the returned function is called. `onState` hears
 * whether the stream is connected.
 */
export function subscribeEvents (onEvent: (event: LiveEvent) => void, onState: (connected: boolean) => void = () => {}): () => void {
  let stopped = false
  let controller: AbortController | null = null
  let delay = RETRY_MIN_MS

  const run = async (): Promise<void> => {
    while (!stopped) {
      controller = new AbortController()
      try {
        const response = await apiFetch('/api/events', { headers: { accept: 'text/event-stream' }, signal: controller.signal })
        if (response.ok && response.body !== null) {
          onState(true)
          delay = RETRY_MIN_MS
          await readStream(response.body, onEvent)
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

/** Reads `data:` lines of an event stream until it ends. */
async function readStream (body: ReadableStream<Uint8Array>, onEvent: (event: LiveEvent) => void): Promise<void> {
  const reader = body.getReader()
  const decoder = new TextDecoder()
  let buffer = ''
  let data: string[] = []
  for (;;) {
    const { value, done } = await reader.read()
    if (done) return
    buffer += decoder.decode(value, { stream: true })
    let newline: number
    while ((newline = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, newline).replace(/\r$/, '')
      buffer = buffer.slice(newline + 1)
      if (line === '') {
        if (data.length > 0) {
          try {
            onEvent(JSON.parse(data.join('\n')) as LiveEvent)
          } catch {
            // Not JSON: not ours to interpret.
          }
        }
        data = []
      } else if (line.startsWith('data:')) {
        data.push(line.slice(line.startsWith('data: ') ? 6 : 5))
      }
    }
  }
}

/** Calls `fn` once, `ms` after the last of a burst of calls. */
export function debounce (fn: () => void, ms: number): () => void {
  let timer: ReturnType<typeof setTimeout> | undefined
  return () => {
    clearTimeout(timer)
    timer = setTimeout(fn, ms)
  }
}
