// With `--auth jwt` the web client shows a sign-in page first, on `/` and on `/d/<name>`, and
// goes on to the same page after signing in. People show up under their account names whatever
// they typed, a read-only account cannot change the text, and a short-lived login token is
// renewed before it expires, so the editor keeps syncing past the first token's expiry (the
// server closes expired connections with 4401; the client renews and reconnects).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario, tandemCommand } from '../lib/server.mjs'
import { waitUntil } from '../lib/client.mjs'
import { SERVER_ARGS, withBrowser, docPath, waitForStatus, waitForText, editorText, cursorToEnd, screenshot } from '../lib/browser.mjs'

const DOC = 'team/plan.md'
const ACCOUNTS = {
  alice: { name: 'Alice Martin', password: 'correct horse battery', doc: 'team/*=write' },
  bob: { name: 'Bob Stone', password: 'bob has a long password', doc: 'team/*=write' },
  carol: { name: 'Carol Reader', password: 'carol only reads here', doc: 'team/*=read' }
}

/** A server with authentication on and the accounts above, created with the real CLI first. */
async function startAuthServer (s, extraArgs = []) {
  const dataDir = s.newDataDir()
  for (const [sub, account] of Object.entries(ACCOUNTS)) {
    await tandemCommand(['user', 'add', sub, '--name', account.name, '--doc', account.doc, '--password-stdin', '--data-dir', dataDir], `${account.password}\n`)
  }
  return s.startServer([...SERVER_ARGS, '--auth', 'jwt', ...extraArgs], dataDir)
}

/** Fills in and sends the sign-in form through its labels, as a person would. */
async function submitSignIn (page, username, password) {
  await page.getByLabel('Username').fill(username)
  await page.getByLabel('Password').fill(password)
  await page.getByRole('button', { name: 'Sign in' }).click()
}

/** Opens `doc`, signs in as `sub`, and waits for the connected editor. */
async function signInToDoc (p, sub, doc = DOC) {
  await p.page.goto(docPath(doc))
  await p.page.locator('#sign-in').waitFor()
  await submitSignIn(p.page, sub, ACCOUNTS[sub].password)
  await p.page.locator('.cm-content').waitFor()
  await waitForStatus(p.page, { network: 'connected' })
}

/** `POST /api/login` from the test itself; the token for checks over HTTP. */
async function loginToken (server, sub) {
  const res = await fetch(`${server.httpUrl}/api/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: sub, password: ACCOUNTS[sub].password })
  })
  assert.equal(res.status, 200, `login of ${sub}`)
  return (await res.json()).token
}

/** The document's text as the server has it (`GET /api/docs/<name>` as JSON). */
async function serverText (server, token, doc = DOC) {
  const res = await fetch(`${server.httpUrl}/api/docs/${doc}`, { headers: { accept: 'application/json', authorization: `Bearer ${token}` } })
  assert.equal(res.status, 200, `GET /api/docs/${doc}`)
  return (await res.json()).content
}

test('the sign-in page refuses a wrong password, opens the editor with the right one, and signing out returns to it', scenario(withBrowser(async (s, t, person) => {
  const server = await startAuthServer(s)
  const auth = await server.getJson('/api/auth')
  assert.deepEqual({ status: auth.status, mode: auth.body.mode }, { status: 200, mode: 'jwt' })
  // A phone-sized screen: the form must fit without sideways scrolling.
  const alice = await person(server, { viewport: { width: 390, height: 740 } })
  const page = alice.page

  await page.goto(docPath(DOC))
  await page.locator('#sign-in').waitFor()
  assert.equal(await page.locator('.cm-content').count(), 0, 'no editor before signing in')
  await submitSignIn(page, 'alice', 'not the password')
  await page.locator('#signin-error', { hasText: 'Wrong username or password' }).waitFor()
  assert.equal(await page.getByLabel('Password').getAttribute('aria-invalid'), 'true')
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'no sideways scrolling on a phone')
  await screenshot(page, 'sign-in-wrong-password-phone.png')

  await submitSignIn(page, 'alice', ACCOUNTS.alice.password)
  await page.locator('.cm-content').waitFor()
  await waitForStatus(page, { network: 'connected' })
  assert.equal(new URL(page.url()).pathname, docPath(DOC), 'signing in continues to the page asked for')
  await cursorToEnd(page)
  await page.keyboard.type('# Plan\n')
  await waitForStatus(page, { network: 'connected', saved: true })
  assert.equal(await serverText(server, await loginToken(server, 'bob')), '# Plan\n')

  // The workspace lists the document; a reload keeps the session.
  await page.goto('/')
  await page.locator('#tree li[data-doc="team/plan.md"]').waitFor()
  await page.reload()
  await page.locator('#tree li[data-doc="team/plan.md"]').waitFor()

  await page.click('#sign-out')
  await page.locator('#sign-in').waitFor()
  assert.equal(await page.evaluate(() => localStorage.getItem('tandem.session')), null, 'signing out forgets the token')

  // Guessing: after a few wrong passwords the server says to wait, and the form says how long.
  for (let attempt = 0; attempt < 10; attempt++) {
    await submitSignIn(page, 'alice', `guess ${attempt}`)
    await page.waitForFunction(() => !document.querySelector('#signin-submit').disabled ||
      document.querySelector('#signin-error').dataset.kind === 'too_many_attempts')
    if (await page.locator('#signin-error[data-kind="too_many_attempts"]').count() > 0) break
  }
  assert.match(await page.locator('#signin-error').textContent(), /Too many sign-in attempts\. Try again in \d+ (seconds|minutes)\./)
  assert.match(await page.locator('#signin-submit').textContent(), /Try again in/)
  assert.ok(await page.locator('#signin-submit').isDisabled(), 'the button waits out the Retry-After')
})))

test('two accounts see each other under their account names, whatever name they typed', scenario(withBrowser(async (s, t, person) => {
  const server = await startAuthServer(s)
  // Alice once typed another name into the identity dialog (it is stored in this browser).
  const alice = await person(server, { name: 'Typed Nickname', color: '#e11d48' })
  const bob = await person(server, { name: 'Bobby Tables', color: '#2563eb' })
  await signInToDoc(alice, 'alice')
  await signInToDoc(bob, 'bob')

  await alice.page.locator('#users li[data-name="Bob Stone"]').waitFor()
  await bob.page.locator('#users li[data-name="Alice Martin"]').waitFor()
  assert.equal(await alice.page.locator('#identity .chip-name').textContent(), 'Alice Martin')
  assert.equal(await bob.page.locator('#users li[data-name="Typed Nickname"]').count(), 0)

  // The identity dialog shows the account's name as text and offers only the colour.
  await alice.page.click('#identity')
  assert.equal(await alice.page.locator('#identity-name').count(), 0, 'no name field when signed in')
  assert.match(await alice.page.locator('#identity-account').textContent(), /Alice Martin/)
  await alice.page.click('.swatch[data-color="#16a34a"]')
  await alice.page.click('#identity-save')
  const aliceAtBob = bob.page.locator('#users li[data-name="Alice Martin"] .avatar')
  await waitUntil(async () => (await aliceAtBob.evaluate((el) => getComputedStyle(el).backgroundColor)) === 'rgb(22, 163, 74)', 15000, 'Alice\'s new colour at Bob')

  // Even a page that publishes another name is shown under its account's: the server stamps it.
  await alice.page.evaluate(() => window.tandem.connection.provider.awareness.setLocalStateField('user', { name: 'Mallory', color: '#ca8a04', colorLight: '#ca8a0433' }))
  await waitUntil(async () => (await aliceAtBob.evaluate((el) => getComputedStyle(el).backgroundColor)) === 'rgb(202, 138, 4)', 15000, 'the posing update at Bob')
  assert.equal(await bob.page.locator('#users li[data-name="Mallory"]').count(), 0, 'nobody can pose under another name')
  await screenshot(bob.page, 'sign-in-two-accounts-bob.png')
})))

test('a read-only account sees a read-only badge and cannot change the text', scenario(withBrowser(async (s, t, person) => {
  const server = await startAuthServer(s)
  const alice = await person(server, { name: 'Alice' })
  const carol = await person(server, { name: 'Carol' })
  await signInToDoc(alice, 'alice')
  await cursorToEnd(alice.page)
  await alice.page.keyboard.type('written by alice')
  await waitForStatus(alice.page, { network: 'connected', saved: true })

  await signInToDoc(carol, 'carol')
  await waitForText(carol.page, (text) => text === 'written by alice')
  await carol.page.locator('#read-only:visible').waitFor()
  assert.equal(await carol.page.locator('.cm-content').getAttribute('contenteditable'), 'false', 'opened read-only from the start')
  await carol.page.locator('.cm-content').click()
  await carol.page.keyboard.type('carol was here')
  await carol.page.keyboard.press('Backspace')
  assert.equal(await editorText(carol.page), 'written by alice', 'typing does nothing')
  await screenshot(carol.page, 'sign-in-read-only-carol.png')

  // If the editor were writable after all, the server's refusal makes it read-only.
  await carol.page.evaluate(() => {
    document.getElementById('read-only').hidden = true
    window.tandem.editor.setReadOnly(false)
  })
  await carol.page.locator('.cm-content[contenteditable="true"]').waitFor()
  await cursorToEnd(carol.page)
  await carol.page.keyboard.type('X')
  await carol.page.locator('#read-only:visible').waitFor()
  await carol.page.locator('.cm-content[contenteditable="false"]').waitFor()

  // Nothing of Carol's reached Alice or the server. Alice's next edit proves the channel works.
  await cursorToEnd(alice.page)
  await alice.page.keyboard.type('!')
  await waitForText(carol.page, (text) => text.includes('!'), 'Alice\'s next edit at Carol')
  assert.equal(await editorText(alice.page), 'written by alice!')
  await waitForStatus(alice.page, { network: 'connected', saved: true })
  assert.equal(await serverText(server, await loginToken(server, 'alice')), 'written by alice!')
})))

test('a short-lived token is renewed: the editor keeps syncing past the first token\'s expiry', scenario(withBrowser(async (s, t, person) => {
  const TTL_S = 20
  const server = await startAuthServer(s, ['--login-token-ttl', `${TTL_S}s`, '--jwt-leeway', '1s'])
  const alice = await person(server, { name: 'Alice' })
  const bob = await person(server, { name: 'Bob' })
  await signInToDoc(alice, 'alice')
  await signInToDoc(bob, 'bob')
  const first = await alice.page.evaluate(() => JSON.parse(localStorage.getItem('tandem.session')))
  assert.ok(first.expiresAt - Date.now() / 1000 <= TTL_S + 2, 'the server issued a short-lived token')
  await alice.page.evaluate(() => {
    window.closeCodes = []
    window.tandem.connection.provider.on('connection-close', (event) => window.closeCodes.push(event?.code ?? null))
  })

  // Type a line every two seconds until well past the first token's expiry (and the server's
  // 4401 close); each must reach Bob.
  const until = (first.expiresAt + 6) * 1000
  let n = 0
  while (Date.now() < until) {
    await cursorToEnd(alice.page)
    await alice.page.keyboard.type(`line ${++n}\n`)
    await waitForText(bob.page, (text) => text.includes(`line ${n}\n`), `line ${n} at Bob`)
    await alice.page.waitForTimeout(2000)
  }
  const second = await alice.page.evaluate(() => JSON.parse(localStorage.getItem('tandem.session')))
  assert.notEqual(second.token, first.token, 'the token was renewed')
  assert.ok(second.expiresAt > first.expiresAt)
  const closeCodes = await alice.page.evaluate(() => window.closeCodes)
  assert.ok(closeCodes.includes(4401), `the old token's connection was closed with 4401 (closes: ${JSON.stringify(closeCodes)})`)
  await waitForStatus(alice.page, { network: 'connected', saved: true })
  await waitForStatus(bob.page, { network: 'connected', saved: true })
  assert.equal(await editorText(bob.page), await editorText(alice.page))
  assert.equal(await alice.page.locator('#sign-in').count(), 0, 'never sent back to the sign-in page')
})))
