import { describe, expect, it } from 'vitest'
import { readEventStream } from './event-stream'
import type { LiveEvent } from './types'

/** A body that delivers `chunks` one read at a time, as a network would. */
function body(...chunks: string[]): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder()
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(encoder.encode(chunk))
      controller.close()
    }
  })
}

async function read(...chunks: string[]): Promise<LiveEvent[]> {
  const events: LiveEvent[] = []
  await readEventStream(body(...chunks), (event) => events.push(event))
  return events
}

describe('readEventStream', () => {
  it('reads one JSON event per blank-line-terminated block', async () => {
    expect(await read('data: {"type":"hello"}\n\ndata: {"type":"resync"}\n\n')).toEqual([
      { type: 'hello' },
      { type: 'resync' }
    ])
  })

  it('joins events split anywhere across chunks, inside a character too', async () => {
    const text = 'data: {"type":"doc_presence","doc":"über","peers":2}\n\n'
    const bytes = new TextEncoder().encode(text)
    const events: LiveEvent[] = []
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        for (const b of bytes) controller.enqueue(new Uint8Array([b]))
        controller.close()
      }
    })
    await readEventStream(stream, (event) => events.push(event))
    expect(events).toEqual([{ type: 'doc_presence', doc: 'über', peers: 2 }])
  })

  it('accepts CRLF and CR-only line ends', async () => {
    // A CR that ends a chunk may be half of a CRLF, so the CR-only event is followed by more.
    expect(
      await read('data: {"type":"hello"}\r\n\r\ndata: {"type":"resync"}\r\r', 'data: {"type":"hello"}\n\n')
    ).toEqual([{ type: 'hello' }, { type: 'resync' }, { type: 'hello' }])
  })

  it('joins multi-line data with newlines', async () => {
    expect(await read('data: {"type":\ndata: "hello"}\n\n')).toEqual([{ type: 'hello' }])
  })

  it('ignores comments, event names, ids and retry fields', async () => {
    expect(await read(': keep-alive\n\nevent: message\nid: 7\nretry: 1000\ndata: {"type":"hello"}\n\n')).toEqual([
      { type: 'hello' }
    ])
  })

  it('accepts data without the space after the colon', async () => {
    expect(await read('data:{"type":"hello"}\n\n')).toEqual([{ type: 'hello' }])
  })

  it('skips data that is not JSON, and an event not yet ended when the stream ends', async () => {
    expect(await read('data: not json\n\ndata: {"type":"hello"}\n\ndata: {"type":"resync"}')).toEqual([
      { type: 'hello' }
    ])
  })

  it('goes on after a listener throws', async () => {
    const seen: string[] = []
    await readEventStream(body('data: {"type":"hello"}\n\ndata: {"type":"resync"}\n\n'), (event) => {
      seen.push(event.type)
      if (event.type === 'hello') throw new Error('listener bug')
    })
    expect(seen).toEqual(['hello', 'resync'])
  })
})
