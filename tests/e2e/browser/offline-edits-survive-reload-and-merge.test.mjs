// Bob goes offline (context.setOffline), keeps editing, reloads the page while still offline
// (the service worker serves the app, IndexedDB the edits), and comes back: nothing is lost,
// Alice's edits made meanwhile merge, and both end with the same text.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { SERVER_ARGS, withBrowser, openDoc, cursorToEnd, waitForText, editorText, waitForStatus, screenshot, docPath } from '../lib/browser.mjs'

const DOC = 'offline/trip.md'

test('edits made offline survive a reload while offline and merge when the connection returns', scenario(withBrowser(async (s, t, person) => {
  const server = await s.startServer(SERVER_ARGS)
  const alice = await person(server, { name: 'Alice', color: '#e11d48' })
  const bob = await person(server, { name: 'Bob', color: '#2563eb' })
  await openDoc(alice, DOC)
  await openDoc(bob, DOC)
  await cursorToEnd(alice.page)
  await alice.page.keyboard.type('Packing list\n')
  await waitForText(bob.page, (text) => text === 'Packing list\n')
  await waitForStatus(bob.page, { network: 'connected', saved: true })
  // The service worker must control the page before the network goes away.
  await bob.page.waitForFunction(() => navigator.serviceWorker.controller !== null)

  await bob.context.setOffline(true)
  await waitForStatus(bob.page, { network: 'offline' })
  await cursorToEnd(bob.page)
  await bob.page.keyboard.type('- tent (bob, offline)\n')
  await waitForStatus(bob.page, { network: 'offline', saved: false })
  await screenshot(bob.page, 'offline-bob.png')

  // Meanwhile Alice edits; she cannot see Bob's offline line.
  await cursorToEnd(alice.page)
  await alice.page.keyboard.type('- stove (alice)\n')
  await waitForStatus(alice.page, { network: 'connected', saved: true })
  assert.ok(!(await editorText(alice.page)).includes('tent'), 'an offline edit must not reach Alice')

  // Reload while offline: the page opens from the service worker, the text from IndexedDB.
  await bob.page.reload()
  await bob.page.locator('.cm-content').waitFor()
  await waitForText(bob.page, (text) => text.includes('- tent (bob, offline)'), 'Bob\'s offline edit after an offline reload')
  await waitForStatus(bob.page, { network: 'offline', saved: false })
  await bob.page.keyboard.press('Control+End')
  await bob.page.keyboard.type('- map (bob, after reload)\n')

  await bob.context.setOffline(false)
  await waitForStatus(bob.page, { network: 'connected', saved: true })
  const merged = await waitForText(alice.page, (text) => text.includes('tent') && text.includes('map'), 'Bob\'s offline edits at Alice')
  for (const line of ['Packing list', '- tent (bob, offline)', '- stove (alice)', '- map (bob, after reload)']) {
    assert.ok(merged.includes(line), `merged text has ${line}`)
  }
  await waitForText(bob.page, (text) => text === merged, 'Bob equal to Alice')

  // And the server has it: a fresh person (no IndexedDB) sees the same text.
  const carol = await person(server, { name: 'Carol' })
  await carol.page.goto(docPath(DOC))
  await waitForText(carol.page, (text) => text === merged, 'a fresh browser sees the merged text')
})))
