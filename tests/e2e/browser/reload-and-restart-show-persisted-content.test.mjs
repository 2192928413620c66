// What was typed is stored: a reload shows it, a browser with empty storage shows it, and so
// does a new server process on the same data directory after SIGTERM.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { SERVER_ARGS, withBrowser, openDoc, cursorToEnd, waitForText, waitForStatus, docPath } from '../lib/browser.mjs'

const DOC = 'src/main.rs'
const CODE = 'fn main() {\nprintln!("hello from tandem");\n'

test('a reload, a fresh browser and a restarted server all show the persisted content', scenario(withBrowser(async (s, t, person) => {
  let server = await s.startServer(SERVER_ARGS)
  const alice = await person(server, { name: 'Alice' })
  await openDoc(alice, DOC)
  await cursorToEnd(alice.page)
  await alice.page.keyboard.type(CODE)
  await waitForStatus(alice.page, { network: 'connected', saved: true })
  const typed = await waitForText(alice.page, (text) => text.includes('hello from tandem'))

  // Rust highlighting, chosen by the .rs extension.
  assert.equal(await alice.page.locator('#language').textContent(), 'Rust')
  const styled = await alice.page.locator('.cm-line span[class]').count()
  assert.ok(styled > 0, 'a .rs document is syntax highlighted')

  // Search (Ctrl+F) finds text and selects it.
  await alice.page.keyboard.press('Control+f')
  const query = alice.page.locator('.cm-search input[name=search]')
  await query.waitFor()
  await query.pressSequentially('hello')
  await query.press('Enter')
  const selected = await alice.page.evaluate(() => {
    const { state } = window.tandem.editor.view
    return state.sliceDoc(state.selection.main.from, state.selection.main.to)
  })
  assert.equal(selected, 'hello')
  await alice.page.keyboard.press('Escape')

  await alice.page.reload()
  await waitForText(alice.page, (text) => text === typed, 'content after reload')

  // The server, not only this browser, has it.
  const fresh = await person(server, { name: 'Fresh' })
  await fresh.page.goto(docPath(DOC))
  await waitForText(fresh.page, (text) => text === typed, 'content in a browser with no local copy')
  await fresh.context.close()
  await alice.context.close()

  assert.equal((await server.stop()).code, 0)
  server = await s.restart(server)
  const later = await person(server, { name: 'Later' })
  await later.page.goto(docPath(DOC))
  await waitForText(later.page, (text) => text === typed, 'content after a server restart')
})))
