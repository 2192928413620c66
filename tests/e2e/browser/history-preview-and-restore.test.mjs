// History in the web client: Alice writes a first draft and names a version; Bob, through a
// stock y-websocket client, keeps editing; Alice opens the history panel, sees the versions
// with their authors, previews the named one and the line diff against now, and restores it.
// The restore is a new edit on top: Bob's client receives the restored text live, and the
// panel lists a version made just before the restore, so the restore can be undone.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { synced, waitUntil } from '../lib/client.mjs'
import { SERVER_ARGS, withBrowser, openDoc, waitForText, waitForStatus, cursorToEnd, screenshot } from '../lib/browser.mjs'

const DOC = 'reports/q3.md'

test('versions are listed, previewed, diffed and restored live through the history panel', scenario(withBrowser(async (s, t, person) => {
  const server = await s.startServer(SERVER_ARGS)
  const alice = await person(server, { name: 'Alice', color: '#16a34a' })
  await openDoc(alice, DOC)
  await cursorToEnd(alice.page)
  await alice.page.keyboard.type('Revenue grew.\nCosts fell.\n')
  await waitForStatus(alice.page, { network: 'connected', saved: true })

  await alice.page.click('#history-toggle')
  await alice.page.fill('#version-name', 'First draft')
  await alice.page.click('#save-version')
  const named = alice.page.locator('#history-list li[data-kind="named"]', { hasText: 'First draft' })
  await named.waitFor()
  assert.match(await named.textContent(), /Alice/)

  // Bob, an unmodified y-websocket client, rewrites the text.
  const bob = s.connect(server, DOC)
  await synced(bob)
  const bobText = bob.doc.getText('content')
  await waitUntil(() => bobText.toString() === 'Revenue grew.\nCosts fell.\n', 10000, 'Bob has the draft')
  bob.doc.transact(() => {
    bobText.delete(0, bobText.length)
    bobText.insert(0, 'Revenue grew.\nCosts rose sharply.\nOutlook: cloudy.\n')
  })
  await waitForText(alice.page, (text) => text.includes('Outlook: cloudy.'))

  // Preview and diff of the named version against now.
  await named.locator('button').click()
  const diff = alice.page.locator('#history-diff')
  await diff.waitFor()
  assert.match(await diff.locator('.diff-line.removed').allTextContents().then((l) => l.join('\n')), /Costs fell\./)
  assert.match(await diff.locator('.diff-line.added').allTextContents().then((l) => l.join('\n')), /Outlook: cloudy\./)
  await alice.page.getByRole('button', { name: 'Preview' }).click()
  assert.equal(await alice.page.locator('#history-preview').textContent(), 'Revenue grew.\nCosts fell.\n')
  await screenshot(alice.page, 'history-panel.png')

  // Restore: Alice's editor and Bob's stock client both get the draft back, live.
  alice.page.once('dialog', (dialog) => dialog.accept())
  await alice.page.click('#restore-version')
  await waitUntil(() => bobText.toString() === 'Revenue grew.\nCosts fell.\n', 10000, () => `Bob sees the restored text (now ${JSON.stringify(bobText.toString())})`)
  await waitForText(alice.page, (text) => text === 'Revenue grew.\nCosts fell.\n')
  // The text from before the restore was kept as a version, and can be restored in turn.
  const before = alice.page.locator('#history-list li[data-kind="restore"]')
  await before.waitFor()
  await before.locator('button').click()
  await alice.page.getByRole('button', { name: 'Preview' }).click()
  assert.match(await alice.page.locator('#history-preview').textContent(), /Outlook: cloudy\./)
  // The document's activity names the restore.
  await alice.page.locator('#history #activity-list li[data-kind="version.restored"]', { hasText: 'Alice' }).waitFor()

  // Bob's later edit still merges with the restored text.
  bobText.insert(bobText.length, 'Signed off.\n')
  await waitForText(alice.page, (text) => text === 'Revenue grew.\nCosts fell.\nSigned off.\n')
})))
