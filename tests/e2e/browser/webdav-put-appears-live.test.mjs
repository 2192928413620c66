// A file saved into the mounted share shows up in everyone's workspace: Bob has the workspace
// page open; a file is PUT through WebDAV (as a file manager dropping it into the folder
// does), and Bob's tree shows it, with its size and the saver's name, without a reload; a
// download gives the same bytes. Deleting it over WebDAV takes it out of the tree again.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { scenario } from '../lib/server.mjs'
import { SERVER_ARGS, withBrowser, screenshot } from '../lib/browser.mjs'

test('a file PUT through WebDAV appears in the workspace tree without a reload', scenario(withBrowser(async (s, t, person) => {
  const server = await s.startServer(SERVER_ARGS)
  const bob = await person(server, { name: 'Bob', color: '#7c3aed' })
  await bob.page.goto('/')
  await bob.page.locator('#live[data-live="true"]').waitFor()
  await bob.page.evaluate(() => { window.__sameLoad = true })

  const dav = (method, path, body) => fetch(`${server.httpUrl}/dav/${path}`, {
    method, body, headers: { 'x-tandem-user': 'Dana Desktop' }
  })
  assert.equal((await dav('MKCOL', 'builds')).status, 201)
  const bytes = randomBytes(40 * 1024)
  const put = await dav('PUT', 'builds/release.zip', bytes)
  assert.equal(put.status, 201, await put.text())

  const row = bob.page.locator('#tree li[data-folder="builds"] li[data-file="builds/release.zip"]')
  await row.waitFor({ timeout: 5000 })
  assert.match(await row.locator('.doc-meta').textContent(), /Dana Desktop/)
  assert.equal(await bob.page.evaluate(() => window.__sameLoad), true, 'Bob\'s page did not reload')
  await screenshot(bob.page, 'webdav-put-live.png')

  const [download] = await Promise.all([
    bob.page.waitForEvent('download'),
    row.locator('a.file-link').click()
  ])
  assert.equal(download.suggestedFilename(), 'release.zip')

  assert.equal((await dav('DELETE', 'builds/release.zip')).status, 204)
  await row.waitFor({ state: 'detached', timeout: 5000 })
  assert.equal(await bob.page.evaluate(() => window.__sameLoad), true, 'still the same page load')
})))
