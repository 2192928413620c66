// A live document edited as a file: a stock y-websocket client types into `team/notes.md` while
// the same document is read and saved back through WebDAV (`protocol-spec/webdav.md`), as a
// desktop editor on a mounted share does. Both sets of changes end in the document, the client
// sees the WebDAV save arrive live, and the history credits the saver.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario } from '../lib/server.mjs'
import { synced, waitUntil } from '../lib/client.mjs'

const DOC = 'team/notes.md'

test('a WebDAV save merges with what a y-websocket client types meanwhile', { timeout: 60000 }, scenario(async (s) => {
  const server = await s.startServer()
  const dav = (method, headers = {}, body) =>
    fetch(`${server.httpUrl}/dav/${DOC}`, { method, headers, body })
  const client = s.connect(server, DOC)
  await synced(client)
  const content = client.doc.getText('content')
  content.insert(0, '# Notes\nFirst line from the browser.\n')

  // WebDAV reads the text the client typed, once the server holds it.
  let read
  await waitUntil(async () => {
    read = await dav('GET')
    return read.status === 200 && (await read.clone().text()).includes('First line')
  }, 10000, 'the document readable over WebDAV')
  assert.match(read.headers.get('content-type'), /^text\/markdown/)
  const base = await read.text()
  const tag = read.headers.get('etag')
  assert.ok(tag, 'an ETag')

  // The client goes on typing; the editor saves from the text it read.
  content.insert(content.length, 'Typed while the file was open.\n')
  await waitUntil(async () => (await (await dav('GET')).text()).includes('Typed while'), 10000, 'the live edit stored')
  const saved = await dav('PUT', { 'if-match': tag, 'x-tandem-user': 'Walt Webdav', 'content-type': 'text/markdown' },
    base.replace('First line from the browser.', 'First line, edited in a text editor.'))
  assert.equal(saved.status, 204, await saved.text())

  // The client sees the save live, and keeps its own edit.
  await waitUntil(() => content.toString().includes('edited in a text editor'), 10000,
    () => `the save reaches the client: ${JSON.stringify(content.toString())}`)
  const text = content.toString()
  assert.ok(text.includes('Typed while the file was open.'), text)
  assert.ok(!text.includes('First line from the browser.'), text)
  assert.equal(await (await dav('GET')).text(), text)

  // The history credits the saver.
  const history = await server.getJson(`/api/docs/${DOC}/history`)
  assert.equal(history.status, 200)
  assert.ok(history.body.entries.some((entry) => entry.author.name === 'Walt Webdav'), JSON.stringify(history.body))
}))
