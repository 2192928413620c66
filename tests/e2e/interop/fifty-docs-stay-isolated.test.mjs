// Fifty documents edited at the same time each end with exactly their own content: no update,
// peer count or stored byte crosses from one document to another.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { synced, waitUntil, nextTurn, markersIn } from '../lib/client.mjs'

const N_DOCS = 50
const N_EDITS = 10
const MARKER = /<d\d+ [wr]\d+>/g

const docName = (docIdx) => `iso/folder-${docIdx % 5}/doc-${docIdx}.md`

function expectedMarkers (docIdx) {
  const markers = []
  for (let edit = 0; edit < N_EDITS; edit++) markers.push(`<d${docIdx} w${edit}>`, `<d${docIdx} r${edit}>`)
  return markers.sort()
}

test('50 documents edited in parallel stay isolated', { timeout: 60000 }, scenario(async (s) => {
  const server = await s.startServer()
  const pairs = Array.from({ length: N_DOCS }, (_, docIdx) => [s.connect(server, docName(docIdx)), s.connect(server, docName(docIdx))])
  await Promise.all(pairs.flat().map((client) => synced(client, 30000)))
  // Both clients of every document edit at once, interleaved across documents.
  for (let edit = 0; edit < N_EDITS; edit++) {
    pairs.forEach(([writer, reader], docIdx) => {
      writer.text.insert(0, `<d${docIdx} w${edit}>`)
      reader.text.insert(reader.text.length, `<d${docIdx} r${edit}>`)
    })
    await nextTurn()
  }
  const complete = ([writer, reader]) => writer.text.toString() === reader.text.toString() &&
    markersIn(writer.text.toString(), MARKER).length === 2 * N_EDITS
  await waitUntil(() => pairs.every(complete), 45000,
    () => `every document to converge (${pairs.filter(complete).length} of ${N_DOCS} done)`)

  for (let docIdx = 0; docIdx < N_DOCS; docIdx++) {
    const [writer, reader] = pairs[docIdx]
    const text = writer.text.toString()
    assert.equal(reader.text.toString(), text)
    assert.deepEqual(markersIn(text, MARKER).sort(), expectedMarkers(docIdx), `${docName(docIdx)} holds exactly its own edits`)
    assert.equal(markersIn(text, MARKER).join(''), text, `${docName(docIdx)} holds nothing else`)
  }

  // The server's stored copies agree, one by one.
  const stored = await Promise.all(pairs.map((_, docIdx) => server.getJson(`/api/docs/${docName(docIdx)}`)))
  stored.forEach(({ status, body }, docIdx) => {
    assert.equal(status, 200, docName(docIdx))
    assert.deepEqual(body, { t: pairs[docIdx][0].text.toString() }, `stored ${docName(docIdx)}`)
  })
  // And the listing counts two peers and some stored bytes for each, under its own name.
  const listing = await server.listDocs()
  for (let docIdx = 0; docIdx < N_DOCS; docIdx++) {
    const entries = listing.filter((entry) => entry.name === docName(docIdx))
    assert.equal(entries.length, 1, `${docName(docIdx)} listed once`)
    assert.equal(entries[0].peers, 2, `${docName(docIdx)} peers`)
    assert.ok(entries[0].size_bytes > 0, `${docName(docIdx)} size_bytes`)
    assert.equal(typeof entries[0].updated_ms, 'number', `${docName(docIdx)} updated_ms`)
  }
  assert.equal(listing.filter((entry) => entry.name.startsWith('iso/')).length, N_DOCS, 'no other documents appeared')
}))
