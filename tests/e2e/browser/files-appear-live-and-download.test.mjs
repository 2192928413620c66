// Files in the workspace: Alice uploads a build into a folder through the web client (tus, with
// a progress bar); Bob, on the workspace page all along, sees it appear without reloading, with
// Alice's name, downloads it and gets the same bytes; Alice uploads a new version, renames and
// deletes the file, and Bob's tree follows each change live. The activity feed names Alice.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { scenario } from '../lib/server.mjs'
import { SERVER_ARGS, withBrowser, screenshot } from '../lib/browser.mjs'

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex')

test('an upload appears live in another browser, downloads intact, and follows renames and deletes', scenario(withBrowser(async (s, t, person) => {
  const server = await s.startServer(SERVER_ARGS)
  const alice = await person(server, { name: 'Alice', color: '#16a34a' })
  const bob = await person(server, { name: 'Bob', color: '#7c3aed' })
  await bob.page.goto('/')
  await bob.page.locator('#live[data-live="true"]').waitFor()
  // Marks this page load: if Bob's page reloaded, the mark would be gone.
  await bob.page.evaluate(() => { window.__sameLoad = true })

  await alice.page.goto('/')
  await alice.page.locator('#live[data-live="true"]').waitFor()
  const build = randomBytes(3 * 1024 * 1024 + 17)
  await alice.page.fill('#upload-folder', 'builds')
  await alice.page.setInputFiles('#upload-input', { name: 'app v1.bin', mimeType: 'application/octet-stream', buffer: build })
  // A progress bar while it goes, then the row says it is stored.
  await alice.page.locator('#uploads li[data-path="builds/app v1.bin"]').waitFor()
  await alice.page.locator('#uploads li[data-path="builds/app v1.bin"][data-state="done"]').waitFor()

  // Bob sees it without reloading, with who uploaded it.
  const row = bob.page.locator('#tree li[data-folder="builds"] li[data-file="builds/app v1.bin"]')
  await row.waitFor({ timeout: 5000 })
  assert.match(await row.locator('.doc-meta').textContent(), /Alice/)
  assert.match(await row.locator('.doc-meta').textContent(), /3\.0 MB/)
  assert.equal(await bob.page.evaluate(() => window.__sameLoad), true, 'Bob\'s page did not reload')
  await bob.page.locator('#activity-list li[data-kind="file.uploaded"][data-path="builds/app v1.bin"]', { hasText: 'Alice' }).waitFor()
  await screenshot(bob.page, 'files-live.png')

  // Bob downloads it: the same bytes, under the file's name.
  const [download] = await Promise.all([
    bob.page.waitForEvent('download'),
    row.locator('a.file-link').click()
  ])
  assert.equal(download.suggestedFilename(), 'app v1.bin')
  const saved = readFileSync(await download.path())
  assert.equal(saved.length, build.length)
  assert.equal(sha256(saved), sha256(build))

  // A new version: Bob's row shows v2, and version 1 is still downloadable from the list.
  const build2 = randomBytes(200 * 1024)
  await alice.page.setInputFiles('#upload-input', { name: 'app v1.bin', mimeType: 'application/octet-stream', buffer: build2 })
  await row.locator('button.file-history', { hasText: 'v2' }).waitFor()
  await row.locator('button.file-history').click()
  const v1 = row.locator('.version-list li[data-version="1"] a')
  await v1.waitFor()
  const [old] = await Promise.all([bob.page.waitForEvent('download'), v1.click()])
  assert.equal(sha256(readFileSync(await old.path())), sha256(build))

  // Rename, then delete: Bob's tree follows each, still without reloading.
  alice.page.once('dialog', (dialog) => dialog.accept('builds/release/app.bin'))
  await alice.page.locator('#tree li[data-file="builds/app v1.bin"] button', { hasText: 'Rename' }).click()
  await bob.page.locator('#tree li[data-file="builds/release/app.bin"]').waitFor({ timeout: 5000 })
  await bob.page.locator('#tree li[data-file="builds/app v1.bin"]').waitFor({ state: 'detached' })
  alice.page.once('dialog', (dialog) => dialog.accept())
  await alice.page.locator('#tree li[data-file="builds/release/app.bin"] button', { hasText: 'Delete' }).click()
  await bob.page.locator('#tree li[data-file="builds/release/app.bin"]').waitFor({ state: 'detached', timeout: 5000 })
  await bob.page.locator('#activity-list li[data-kind="file.deleted"]', { hasText: 'Alice' }).waitFor()
  await bob.page.locator('#activity-list li[data-kind="file.renamed"]', { hasText: 'Alice' }).waitFor()
  assert.equal(await bob.page.evaluate(() => window.__sameLoad), true, 'Bob\'s page did not reload')
})))
