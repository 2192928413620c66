// Resumable uploads with the stock tus client (tus-js-client, as any tus-speaking tool would):
// an upload is cut off in the middle of a request, a fresh client resumes it from the offset
// the server reports (not from zero), and the stored file is byte-for-byte the original. A
// range request then reads a slice of it, and the ETag answers a conditional request with 304.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import * as tus from 'tus-js-client'
import { scenario } from '../lib/server.mjs'

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex')
const MiB = 1024 * 1024

test('a tus upload cut off mid-request resumes from the stored offset and arrives intact', scenario(async (s) => {
  const server = await s.startServer()
  const data = randomBytes(6 * MiB + 123)
  const endpoint = `${server.httpUrl}/api/uploads`
  const metadata = { path: 'builds/nightly.tar', filetype: 'application/x-tar', sha256: sha256(data) }

  // First attempt: one MiB per request; stopped (the request in flight torn down) once the
  // server holds at least two MiB.
  let uploadUrl = null
  await new Promise((resolve, reject) => {
    const upload = new tus.Upload(data, {
      endpoint,
      chunkSize: MiB,
      metadata,
      retryDelays: null,
      onProgress (sent) {
        if (sent > 2.5 * MiB && upload.url) {
          uploadUrl = upload.url
          upload.abort().then(resolve, reject)
        }
      },
      onSuccess: () => reject(new Error('the upload should have been cut off')),
      onError: reject
    })
    upload.start()
  })
  assert.ok(uploadUrl, 'the upload got a URL')

  // The file is not visible while incomplete.
  const listing = await (await fetch(`${server.httpUrl}/api/files`)).json()
  assert.deepEqual(listing.files.map((f) => f.path), [])

  // The server says how far it got; a fresh client resumes from there.
  const head = await fetch(uploadUrl, { method: 'HEAD', headers: { 'Tus-Resumable': '1.0.0' } })
  const offset = Number(head.headers.get('upload-offset'))
  assert.ok(offset >= 2 * MiB && offset < data.length, `offset ${offset}`)
  let firstProgress = null
  await new Promise((resolve, reject) => {
    const upload = new tus.Upload(data, {
      endpoint,
      uploadUrl,
      chunkSize: MiB,
      metadata,
      retryDelays: null,
      onProgress (sent) { if (firstProgress === null) firstProgress = sent },
      onSuccess: resolve,
      onError: reject
    })
    upload.start()
  })
  assert.ok(firstProgress >= offset, `resumed at ${firstProgress}, not from zero (server had ${offset})`)

  // Whole and in part, the bytes are the original's.
  const whole = await fetch(`${server.httpUrl}/api/files/builds/nightly.tar`)
  assert.equal(whole.status, 200)
  assert.equal(whole.headers.get('content-type'), 'application/x-tar')
  const body = Buffer.from(await whole.arrayBuffer())
  assert.equal(sha256(body), sha256(data))
  const etag = whole.headers.get('etag')
  assert.ok(etag)
  const slice = await fetch(`${server.httpUrl}/api/files/builds/nightly.tar`, { headers: { range: 'bytes=5000000-5000999' } })
  assert.equal(slice.status, 206)
  assert.equal(slice.headers.get('content-range'), `bytes 5000000-5000999/${data.length}`)
  assert.deepEqual(Buffer.from(await slice.arrayBuffer()), data.subarray(5000000, 5001000))
  const again = await fetch(`${server.httpUrl}/api/files/builds/nightly.tar`, { headers: { 'if-none-match': etag } })
  assert.equal(again.status, 304)
}))
