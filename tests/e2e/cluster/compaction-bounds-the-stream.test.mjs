// Compaction keeps a document's Redis stream short under steady editing, and the state it
// leaves (a snapshot in Postgres plus the stream's tail) is the whole document. A writer on one
// node makes 2000 small edits over 10 s while a reader on a second node follows; the nodes
// compact after every 50 updates and trim entries older than 1 s. `XLEN tandem:doc:<doc>`,
// sampled throughout and after, stays under a bound far below the number of edits. Once both
// clients left and the nodes unloaded the document, fresh clients load the live text, on the
// third node (which never had the document) and on the writer's node.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { startCluster } from '../lib/cluster.mjs'
import { synced, waitUntil, prng, destroy } from '../lib/client.mjs'

const DOC = 'team/compacted.md'
const STREAM = `tandem:doc:${DOC}`
const COMPACT_AFTER_UPDATES = 50
const TRIM_MARGIN_S = 1
const ARGS = [
  '--compact-after-updates', String(COMPACT_AFTER_UPDATES),
  '--cluster-trim-margin', `${TRIM_MARGIN_S}s`,
  '--doc-unload-grace', '1s'
]
const RATE = 200 // edits per second, each its own update (the default limit is 500 messages/s)
const DURATION_S = 10
const N_EDITS = RATE * DURATION_S
// Right after a compaction the stream holds the entries of the last trim margin, RATE x 1 s of
// them; until the next compaction at most COMPACT_AFTER_UPDATES more arrive; and while a
// compaction writes its snapshot and trims, edits keep coming: we allow it another whole margin.
// 2 x 200 + 50 = 450, less than a quarter of the 2000 edits, so a stream that is never trimmed
// (or trimmed only when the document unloads) fails.
const XLEN_BOUND = RATE * 2 * TRIM_MARGIN_S + COMPACT_AFTER_UPDATES
const SAMPLE_EVERY_MS = 20
const SEED = 50

/** One small edit: a few letters typed somewhere, or one or two deleted. */
function edit (client, rand) {
  const length = client.text.length
  if (length > 0 && rand() < 0.2) client.text.delete(rand.int(length), Math.min(1 + rand.int(2), length))
  else client.text.insert(rand.int(length + 1), rand.letters(1 + rand.int(3)))
}

/** The node's `GET /api/docs` entry for DOC, if it lists one. */
async function entryOn (node) {
  return (await node.listDocs()).find((doc) => doc.name === DOC)
}

/**
 * Waits until `node` no longer has DOC loaded: it lists it as not loaded, or (a node that lists
 * only the documents it holds) not at all. The caller first saw it listed as loaded there.
 */
async function waitForUnload (node, name) {
  let entry
  await waitUntil(async () => {
    entry = await entryOn(node)
    return entry === undefined || (entry.loaded === false && entry.peers === 0)
  }, 15000, () => `${DOC} to be unloaded on the ${name} node (entry ${JSON.stringify(entry)})`)
}

test('compaction keeps the stream bounded under steady editing and loses nothing', { timeout: 60000 }, scenario(async (s) => {
  assert.ok(N_EDITS >= 4 * XLEN_BOUND, 'the bound is far below the number of edits')
  const cluster = await startCluster({ scenario: s, nodes: 3, args: ARGS })
  const [writerNode, readerNode, thirdNode] = cluster.nodes
  const writer = s.connect(writerNode, DOC)
  const reader = s.connect(readerNode, DOC)
  await Promise.all([synced(writer), synced(reader)])

  const samples = []
  let streaming = true
  const sampling = (async () => {
    while (streaming) {
      samples.push(await cluster.redis.xlen(STREAM))
      await new Promise((resolve) => setTimeout(resolve, SAMPLE_EVERY_MS)) // pacing, not synchronisation
    }
  })()
  const rand = prng(SEED)
  const startedAt = Date.now()
  try {
    for (let done = 0; done < N_EDITS;) {
      const due = Math.min(N_EDITS, Math.floor((Date.now() - startedAt) * RATE / 1000))
      for (; done < due; done++) edit(writer, rand)
      await new Promise((resolve) => setTimeout(resolve, 10)) // pacing at RATE, not synchronisation
    }
  } finally {
    streaming = false
    await sampling
  }
  const during = Math.max(...samples)
  assert.ok(during > 0, `the document's updates went to ${STREAM} (every sample was 0)`)
  assert.ok(during < XLEN_BOUND, `XLEN ${STREAM} reached ${during} while editing (bound ${XLEN_BOUND}, samples ${samples.length})`)

  await waitUntil(() => reader.text.toString() === writer.text.toString(), 15000,
    () => `the reader to catch up (${reader.text.length} of ${writer.text.length} chars)`)
  const live = writer.text.toString()
  for (const [name, node] of [['writer\'s', writerNode], ['reader\'s', readerNode]]) {
    const entry = await entryOn(node)
    assert.equal(entry?.loaded, true, `the ${name} node lists ${DOC} as loaded while its client is there (entry ${JSON.stringify(entry)})`)
  }
  destroy(writer, reader)
  await waitForUnload(writerNode, 'writer\'s')
  await waitForUnload(readerNode, 'reader\'s')
  const after = await cluster.redis.xlen(STREAM)
  assert.ok(after < XLEN_BOUND, `XLEN ${STREAM} is ${after} after the document unloaded (bound ${XLEN_BOUND})`)

  for (const [name, node] of [['third', thirdNode], ['writer\'s', writerNode]]) {
    const fresh = s.connect(node, DOC)
    await synced(fresh)
    // The node loaded the document (snapshot plus stream) before its sync step 2.
    assert.equal(fresh.text.toString(), live, `a fresh client on the ${name} node loads the live text`)
  }
}))
