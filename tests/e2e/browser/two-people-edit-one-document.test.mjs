// Two people in two browser contexts type at the same time into one document: both end with
// the same text holding both inputs; each sees the other in the people list and the other's
// cursor with a name label; undo takes back only one's own typing.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { SERVER_ARGS, withBrowser, openDoc, cursorToEnd, waitForText, editorText, waitForStatus, screenshot } from '../lib/browser.mjs'

const DOC = 'team/pair notes.md'

test('two browsers type concurrently, converge, see each other, and undo only their own edits', scenario(withBrowser(async (s, t, person) => {
  const server = await s.startServer(SERVER_ARGS)
  const alice = await person(server, { name: 'Alice', color: '#e11d48' })
  const bob = await person(server, { name: 'Bob', color: '#2563eb' })
  await openDoc(alice, DOC)
  await openDoc(bob, DOC)

  // Both type at once, each on their own line.
  await cursorToEnd(alice.page)
  await alice.page.keyboard.type('# Pair notes\n')
  await waitForText(bob.page, (text) => text.includes('# Pair notes'))
  await cursorToEnd(bob.page)
  const aliceLine = 'alice writes the intro paragraph'
  const bobLine = 'bob lists the open questions'
  await Promise.all([
    alice.page.keyboard.type(aliceLine, { delay: 15 }),
    bob.page.keyboard.type(bobLine, { delay: 15 })
  ])
  const both = (text) => text.includes(aliceLine.slice(0, 10)) && text.includes('bob lists') && text.length === '# Pair notes\n'.length + aliceLine.length + bobLine.length
  const aliceText = await waitForText(alice.page, both, 'both lines at Alice')
  const bobText = await waitForText(bob.page, (text) => text === aliceText, 'Bob equal to Alice')
  assert.equal(bobText, aliceText)

  // Presence: names in the list, and a labelled remote cursor.
  await alice.page.locator('#users li[data-name="Bob"]').waitFor()
  await bob.page.locator('#users li[data-name="Alice"]').waitFor()
  await alice.page.locator('.tandem-caret-label', { hasText: 'Bob' }).waitFor()
  await bob.page.locator('.tandem-caret-label', { hasText: 'Alice' }).waitFor()
  // Bob selects a word; Alice sees a selection highlight in Bob's colour.
  await bob.page.keyboard.press('Shift+Control+ArrowLeft')
  await alice.page.locator('.tandem-selection').first().waitFor()

  // Both edits reached the server.
  await waitForStatus(alice.page, { network: 'connected', saved: true })
  await waitForStatus(bob.page, { network: 'connected', saved: true })
  await screenshot(alice.page, 'two-people-alice.png')
  await screenshot(bob.page, 'two-people-bob.png')

  // Undo in Bob's editor removes Bob's typing only.
  await bob.page.keyboard.press('ArrowRight')
  await bob.page.keyboard.type(' and more')
  await waitForText(alice.page, (text) => text.includes('and more'))
  await bob.page.keyboard.press('Control+z')
  const afterUndo = await waitForText(alice.page, (text) => !text.includes('and more'), 'Bob undo seen by Alice')
  assert.ok(afterUndo.includes('alice writes'), 'Alice\'s line survives Bob\'s undo')
  for (let i = 0; i < 10; i++) await bob.page.keyboard.press('Control+z')
  const bobAfter = await waitForText(bob.page, (text) => !text.includes('bob lists'), 'Bob fully undone')
  assert.ok(bobAfter.includes('alice writes the intro paragraph'), 'undo never removes the other person\'s text')
  assert.ok(bobAfter.includes('# Pair notes'))
  await waitForText(alice.page, (text) => text === bobAfter)
  assert.equal(await editorText(alice.page), await editorText(bob.page))
})))
