// The browser client is just another y-websocket client: a stock Node client (yjs + y-websocket)
// editing the same root Y.Text ('content') converges with the page, in both directions.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { synced, waitUntil } from '../lib/client.mjs'
import { SERVER_ARGS, withBrowser, openDoc, cursorToEnd, waitForText, editorText } from '../lib/browser.mjs'

const DOC = 'interop/shared.js'

test('a document open in the browser and a Node y-websocket client converge', scenario(withBrowser(async (s, t, person) => {
  const server = await s.startServer(SERVER_ARGS)
  const node = s.connect(server, DOC)
  await synced(node)
  const ytext = node.doc.getText('content')
  ytext.insert(0, '// from node\n')

  const alice = await person(server, { name: 'Alice' })
  await openDoc(alice, DOC)
  await waitForText(alice.page, (text) => text === '// from node\n', 'node text in the browser')

  await cursorToEnd(alice.page)
  await alice.page.keyboard.type('const fromBrowser = true')
  await alice.page.keyboard.press('Escape') // close the completion popup, so Enter is a newline
  await alice.page.keyboard.press('Enter')
  // Concurrent edits on both sides.
  ytext.insert(0, '/* header */\n')
  await waitUntil(() => ytext.toString().includes('fromBrowser') && ytext.toString().includes('header'), 15000, () => `node text ${JSON.stringify(ytext.toString())}`)
  const browserText = await waitForText(alice.page, (text) => text === ytext.toString(), 'browser equal to node')
  assert.equal(browserText, ytext.toString())
  assert.equal(await editorText(alice.page), '/* header */\n// from node\nconst fromBrowser = true\n')
  // The browser's presence reaches the Node client with the user name.
  await waitUntil(() => [...node.provider.awareness.getStates().values()].some((st) => st.user?.name === 'Alice'), 15000, 'Alice in the Node client\'s awareness')

  // A hostile colour from another client is not put into the page's styles.
  node.provider.awareness.setLocalStateField('user', { name: 'Mallory', color: 'red;position:fixed;inset:0;z-index:99' })
  const avatar = alice.page.locator('#users li[data-name="Mallory"] .avatar')
  await avatar.waitFor()
  const style = await avatar.evaluate((el) => ({ position: getComputedStyle(el).position, background: getComputedStyle(el).backgroundColor }))
  assert.deepEqual(style, { position: 'static', background: 'rgb(100, 116, 139)' })
})))
