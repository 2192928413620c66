// The workspace page: create a document by name, land in its editor, and find it in the tree
// (under its folder) with who is in it; the filter narrows the tree; a phone-sized screen works.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { SERVER_ARGS, withBrowser, openDoc, waitForText, waitForStatus, cursorToEnd, screenshot } from '../lib/browser.mjs'

test('create a document from the workspace, open it, and find it in the live tree', scenario(withBrowser(async (s, t, person) => {
  const server = await s.startServer(SERVER_ARGS)
  const alice = await person(server, { name: 'Alice', color: '#16a34a' })
  const page = alice.page

  await page.goto('/')
  await page.locator('#tree .empty').waitFor()
  // A bad name is refused in place.
  await page.fill('#new-doc-name', 'plans//q3.md')
  await page.click('#new-doc button[type=submit]')
  assert.match(await page.locator('#new-doc-error').textContent(), /folder names/)

  await page.fill('#new-doc-name', 'plans/q3 roadmap.md')
  await page.click('#new-doc button[type=submit]')
  await page.waitForURL('**/d/plans/q3%20roadmap.md')
  await page.locator('.cm-content').waitFor()
  await waitForStatus(page, { network: 'connected' })
  assert.equal(await page.locator('#doc-name').textContent(), 'q3 roadmap.md')
  assert.equal(await page.locator('#language').textContent(), 'Markdown')
  await cursorToEnd(page)
  await page.keyboard.type('# Q3 roadmap\n')
  await waitForStatus(page, { network: 'connected', saved: true })

  // Bob, on the workspace page, sees the new document under its folder with Alice in it.
  const bob = await person(server, { name: 'Bob', color: '#7c3aed' })
  await openDoc(bob, 'notes/todo.txt')
  await cursorToEnd(bob.page)
  await bob.page.keyboard.type('buy milk')
  await waitForStatus(bob.page, { network: 'connected', saved: true })
  await bob.page.goto('/')
  const row = bob.page.locator('#tree li[data-folder="plans"] li[data-doc="plans/q3 roadmap.md"]')
  await row.waitFor()
  await row.locator('.here', { hasText: 'Alice' }).waitFor()
  assert.match(await row.locator('.doc-meta').textContent(), /edited (just now|\d+ min ago)/)
  await bob.page.locator('#tree li[data-doc="notes/todo.txt"]').waitFor()

  // The filter narrows the tree.
  await bob.page.fill('#filter', 'roadmap')
  await bob.page.locator('#tree li[data-doc="notes/todo.txt"]').waitFor({ state: 'detached' })
  assert.equal(await bob.page.locator('#tree li[data-doc]').count(), 1)
  await bob.page.fill('#filter', '')
  await bob.page.locator('#tree li[data-doc="notes/todo.txt"]').waitFor()
  await screenshot(bob.page, 'workspace.png')

  // Opening from the tree.
  await bob.page.click('#tree a[href="/d/plans/q3%20roadmap.md"]')
  await bob.page.waitForURL('**/d/plans/q3%20roadmap.md')
  await waitForText(bob.page, (text) => text.includes('# Q3 roadmap'))

  // A phone-sized screen: the editor and the people strip fit, nothing overflows sideways.
  const phone = await person(server, { name: 'Phone', viewport: { width: 390, height: 844 } })
  await openDoc(phone, 'plans/q3 roadmap.md')
  await waitForText(phone.page, (text) => text.includes('# Q3 roadmap'))
  const overflow = await phone.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth)
  assert.ok(overflow <= 0, `no horizontal overflow on a phone (overflow ${overflow}px)`)
  await screenshot(phone.page, 'phone-editor.png')
  await phone.page.goto('/')
  await phone.page.locator('#tree li[data-doc="plans/q3 roadmap.md"]').waitFor()
  await screenshot(phone.page, 'phone-workspace.png')
})))
