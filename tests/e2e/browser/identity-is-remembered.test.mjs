// A person sets their display name and colour once in the identity dialog; it is remembered
// across reloads, and other people see it (people list and cursor label) without reloading.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { SERVER_ARGS, withBrowser, openDoc, cursorToEnd, waitForText } from '../lib/browser.mjs'

test('the identity dialog sets name and colour; others see it live; a reload keeps it', scenario(withBrowser(async (s, t, person) => {
  const server = await s.startServer(SERVER_ARGS)
  const newcomer = await person(server, {}) // no stored identity: gets a random one
  const alice = await person(server, { name: 'Alice' })
  await openDoc(newcomer, 'hello.txt')
  await openDoc(alice, 'hello.txt')
  const initial = await newcomer.page.locator('#identity .chip-name').textContent()
  assert.match(initial, /^Anonymous /)

  await newcomer.page.click('#identity')
  await newcomer.page.fill('#identity-name', 'Dana Scully')
  await newcomer.page.click('.swatch[data-color="#ca8a04"]')
  await newcomer.page.click('#identity-save')
  assert.equal(await newcomer.page.locator('#identity .chip-name').textContent(), 'Dana Scully')

  const before = await alice.page.locator('#users li[data-name="Dana Scully"]').getAttribute('data-client')
  await cursorToEnd(newcomer.page)
  await newcomer.page.keyboard.type('hi')
  await waitForText(alice.page, (text) => text.includes('hi'))
  const label = alice.page.locator('.tandem-caret-label', { hasText: 'Dana Scully' })
  await label.waitFor()
  const background = await label.evaluate((el) => getComputedStyle(el).backgroundColor)
  assert.equal(background, 'rgb(202, 138, 4)', 'the label has the chosen colour')

  // A new name with the same colour must still reach the label (a caret drawn by colour alone
  // would keep the old name).
  await newcomer.page.click('#identity')
  await newcomer.page.fill('#identity-name', 'Fox Mulder')
  await newcomer.page.click('#identity-save')
  await alice.page.locator('.tandem-caret-label', { hasText: 'Fox Mulder' }).waitFor()
  assert.equal(await alice.page.locator('.tandem-caret-label', { hasText: 'Dana Scully' }).count(), 0)
  await newcomer.page.click('#identity')
  await newcomer.page.fill('#identity-name', 'Dana Scully')
  await newcomer.page.click('#identity-save')
  await alice.page.locator('.tandem-caret-label', { hasText: 'Dana Scully' }).waitFor()

  await newcomer.page.reload()
  await newcomer.page.locator('.cm-content').waitFor()
  assert.equal(await newcomer.page.locator('#identity .chip-name').textContent(), 'Dana Scully')
  // The reloaded page is a new awareness client: Alice sees the old one leave and the new one
  // arrive under the remembered name.
  await alice.page.locator(`#users li[data-client="${before}"]`).waitFor({ state: 'detached' })
  await alice.page.locator(`#users li[data-name="Dana Scully"]:not([data-client="${before}"])`).waitFor()
})))
