// Files in cluster mode: a file uploaded through node 1 (with the stock tus client, and with a
// plain PUT) is acknowledged only once its bytes are in the shared blob directory (or, with
// `--blob-store`, in a bucket on a real S3-compatible server, moto) and its metadata in
// Postgres, so after node 1 is killed with kill -9 nodes 2 and 3 list it and serve it byte for
// byte, with the same ETag node 1 gave it.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import * as tus from 'tus-js-client'
import { scenario } from '../lib/server.mjs'
import { startCluster } from '../lib/cluster.mjs'

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex')
const MiB = 1024 * 1024

for (const store of ['a shared directory', 'an S3 bucket']) {
  test(`a file uploaded through node 1 downloads intact from nodes 2 and 3 after node 1 is killed with kill -9 (${store})`, { timeout: 60000 }, scenario(async (s) => {
    const cluster = await startCluster({ scenario: s, nodes: 3, s3: store === 'an S3 bucket' })
    const [first, second, third] = cluster.nodes

    const tarball = randomBytes(4 * MiB + 321)
    await new Promise((resolve, reject) => {
      const upload = new tus.Upload(tarball, {
        endpoint: `${first.httpUrl}/api/uploads`,
        chunkSize: MiB,
        metadata: { path: 'builds/release.tar', filetype: 'application/x-tar', sha256: sha256(tarball) },
        retryDelays: null,
        onSuccess: resolve,
        onError: reject
      })
      upload.start()
    })
    const notes = randomBytes(300 * 1024)
    const put = await fetch(`${first.httpUrl}/api/files/builds/notes.bin`, { method: 'PUT', body: notes })
    assert.equal(put.status, 201, await put.text())

    const etags = {}
    for (const path of ['builds/release.tar', 'builds/notes.bin']) {
      const res = await fetch(`${first.httpUrl}/api/files/${path}`)
      assert.equal(res.status, 200)
      etags[path] = res.headers.get('etag')
      assert.ok(etags[path], `an ETag for ${path}`)
      await res.arrayBuffer()
    }

    await cluster.killNode(0)

    for (const node of [second, third]) {
      const listing = await (await fetch(`${node.httpUrl}/api/files`)).json()
      assert.deepEqual(listing.files.map((f) => f.path).sort(), ['builds/notes.bin', 'builds/release.tar'])
      for (const [path, original] of [['builds/release.tar', tarball], ['builds/notes.bin', notes]]) {
        const res = await fetch(`${node.httpUrl}/api/files/${path}`)
        assert.equal(res.status, 200, `${path} on node ${node.port}`)
        assert.equal(res.headers.get('etag'), etags[path])
        const body = Buffer.from(await res.arrayBuffer())
        assert.equal(body.length, original.length)
        assert.equal(sha256(body), sha256(original), `${path} is byte-identical on node ${node.port}`)
      }
    }
  }))
}
