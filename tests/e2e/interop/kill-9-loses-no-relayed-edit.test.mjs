// Every update is durable before it is relayed, so after `kill -9` nothing another peer had
// received is lost. A writer streams numbered appends, an observer records what reaches it, the
// server is killed mid-stream and restarted on the same data directory, three times over.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { synced, waitUntil, nextTurn, markersIn, destroy } from '../lib/client.mjs'

const DOC = 'crash/stream.md'
const N_ROUNDS = 3
const SEEN_PER_ROUND = 150
const MARKER = /\[\d+\]/g

/** The text after the first `n` appends: `[0][1]...[n-1]`. */
function prefix (n) {
  let text = ''
  for (let i = 0; i < n; i++) text += `[${i}]`
  return text
}

test('kill -9 in the middle of a stream of edits loses none that another peer had received', { timeout: 60000 }, scenario(async (s) => {
  let server = await s.startServer()
  const seenEver = new Set()
  for (let round = 0; round < N_ROUNDS; round++) {
    const writer = s.connect(server, DOC)
    const observer = s.connect(server, DOC)
    await Promise.all([synced(writer), synced(observer)])

    // What survived the previous kill: the appends form a chain, so the durable text is a
    // prefix of them, and it must include every marker the observer had seen.
    const survived = markersIn(writer.text.toString(), MARKER).length
    assert.equal(writer.text.toString(), prefix(survived), `round ${round}: the stored text is a prefix of the stream`)
    const lost = [...seenEver].filter((marker) => !writer.text.toString().includes(marker))
    assert.deepEqual(lost, [], `round ${round}: lost ${lost.length} of ${seenEver.size} edits a peer had received`)

    let next = survived
    let streaming = true
    const stream = (async () => {
      while (streaming) {
        writer.text.insert(writer.text.length, `[${next++}]`)
        await nextTurn()
      }
    })()
    await waitUntil(() => markersIn(observer.text.toString(), MARKER).length >= survived + SEEN_PER_ROUND, 30000,
      () => `the observer to see ${SEEN_PER_ROUND} new edits (has ${markersIn(observer.text.toString(), MARKER).length - survived})`)
    await server.kill()
    // Once the observer's connection has closed it has handled every frame it was sent.
    await waitUntil(() => observer.closes.length > 0, 10000, 'the observer to notice the kill')
    streaming = false
    await stream
    for (const marker of markersIn(observer.text.toString(), MARKER)) seenEver.add(marker)
    destroy(writer, observer)
    server = await s.restart(server)
  }

  const fresh = s.connect(server, DOC)
  await synced(fresh)
  const text = fresh.text.toString()
  const survived = markersIn(text, MARKER).length
  assert.equal(text, prefix(survived), 'the stored text is a prefix of the stream')
  const lost = [...seenEver].filter((marker) => !text.includes(marker))
  assert.deepEqual(lost, [], `lost ${lost.length} of ${seenEver.size} edits a peer had received`)
}))
