// WebDAV locks in the web client (protocol-spec/webdav.md, "Locks"): a file locked by Ann shows
// "Locked by ann" in Bob's workspace tree; when an administrator breaks the lock, the badge goes
// from Bob's tree without a reload (the `file_unlocked` event). The node runs in cluster mode so
// the lock can be written the way a node writes it when a WebDAV client locks, as a row of
// `tandem_locks` in Postgres (protocol-spec/cluster.md); the WebDAV routes are tested elsewhere.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { startCluster } from '../lib/cluster.mjs'
import { SERVER_ARGS, withBrowser, screenshot } from '../lib/browser.mjs'

const TOKEN = 'urn:uuid:0b1c2d3e-4f50-4617-8899-aabbccddeeff'

test('a locked file shows who holds it, and the badge clears live when the lock is broken', scenario(withBrowser(async (s, t, person) => {
  const cluster = await startCluster({ nodes: 1, args: SERVER_ARGS, scenario: s })
  const node = cluster.nodes[0]
  const put = await fetch(`${node.httpUrl}/api/files/team/report.pdf`, { method: 'PUT', body: 'pdf bytes' })
  assert.equal(put.status, 201, await put.text())
  const now = Date.now()
  await cluster.postgres.psql(
    'INSERT INTO tandem_locks (token, path, deep, shared, owner, principal, created_ms, timeout_ms, expires_ms) ' +
    `VALUES ('${TOKEN}', 'team/report.pdf', false, false, '<D:owner xmlns:D="DAV:">ann''s laptop</D:owner>', 'ann', ${now}, 3600000, ${now + 3600000})`
  )

  const bob = await person(node, { name: 'Bob', color: '#7c3aed' })
  await bob.page.goto('/')
  await bob.page.locator('#live[data-live="true"]').waitFor()
  await bob.page.evaluate(() => { window.__sameLoad = true })
  const badge = bob.page.locator('#tree li[data-file="team/report.pdf"] .lock-badge')
  await badge.waitFor()
  assert.equal(await badge.textContent(), 'Locked by ann')
  assert.match(await badge.getAttribute('title'), /ann \(ann's laptop\)/)
  await screenshot(bob.page, 'lock-badge.png')

  // Bob's upload over it is refused, naming Ann.
  const refused = await fetch(`${node.httpUrl}/api/files/team/report.pdf`, { method: 'PUT', body: 'bob' })
  assert.equal(refused.status, 423)
  assert.equal((await refused.json()).lock.principal, 'ann')

  const broken = await fetch(`${node.httpUrl}/api/locks/${TOKEN}`, { method: 'DELETE' })
  assert.equal(broken.status, 204, await broken.text())
  await badge.waitFor({ state: 'detached', timeout: 5000 })
  await bob.page.locator('#tree li[data-file="team/report.pdf"]').waitFor()
  assert.equal(await bob.page.evaluate(() => window.__sameLoad), true, 'Bob\'s page did not reload')
})))
