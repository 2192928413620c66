// The admin view (`/admin`) with live data: two stock y-websocket clients and a Hocuspocus
// provider edit a document while an administrator watches. The charts draw the samples of
// `GET /api/admin/series` (updates/s above zero once the edits fall into a sample), the live
// documents list the document with its three peers, connections are counted by protocol, and
// the page stops asking while it is hidden and resumes when it is shown. Anyone else is told the
// view is for administrators only, sees no data, and the API refuses them too.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { scenario, tandemCommand } from '../lib/server.mjs'
import { synced, waitUntil } from '../lib/client.mjs'
import { attach, settled } from '../lib/hocuspocus.mjs'
import { SERVER_ARGS, withBrowser, screenshot } from '../lib/browser.mjs'

const DOC = 'team/notes.md'
const ACCOUNTS = {
  ada: { name: 'Ada Admin', password: 'ada administers this server', doc: '*=write', admin: true },
  alice: { name: 'Alice Martin', password: 'correct horse battery', doc: 'team/*=write' },
  bob: { name: 'Bob Stone', password: 'bob has a long password', doc: 'team/*=write' }
}
/** The series gains a sample every 10 s and the page asks every 5 s: a little over both, twice. */
const SAMPLE_WAIT_MS = 40000
/** Each workspace may store 1 MiB of files; the test uploads a quarter of it. */
const QUOTA_BYTES = 1024 * 1024
const REPORT_BYTES = 256 * 1024

/** A server with authentication on and the accounts above, created with the real CLI first. */
async function startAuthServer (s) {
  const dataDir = s.newDataDir()
  for (const [sub, account] of Object.entries(ACCOUNTS)) {
    const flags = ['user', 'add', sub, '--name', account.name, '--doc', account.doc, '--password-stdin', '--data-dir', dataDir]
    if (account.admin) flags.push('--admin')
    await tandemCommand(flags, `${account.password}\n`)
  }
  return s.startServer([...SERVER_ARGS, '--auth', 'jwt', '--workspace-quota-bytes', String(QUOTA_BYTES)], dataDir)
}

/** `PUT /api/files/<path>` with `bytes` zero bytes. */
async function upload (server, token, path, bytes) {
  const res = await fetch(`${server.httpUrl}/api/files/${path}`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'text/plain' },
    body: new Uint8Array(bytes)
  })
  assert.equal(res.status, 201, `PUT /api/files/${path}: ${await res.text()}`)
}

/** `POST /api/login` from the test itself. */
async function loginToken (server, sub) {
  const res = await fetch(`${server.httpUrl}/api/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: sub, password: ACCOUNTS[sub].password })
  })
  assert.equal(res.status, 200, `login of ${sub}`)
  return (await res.json()).token
}

/** Opens `path`, meets the sign-in form there, and signs in as `sub`, as a person would. */
async function signInAt (page, path, sub) {
  await page.goto(path)
  await page.locator('#sign-in').waitFor()
  await page.getByLabel('Username').fill(sub)
  await page.getByLabel('Password').fill(ACCOUNTS[sub].password)
  await page.getByRole('button', { name: 'Sign in' }).click()
}

/** A chart's plotted numbers, as its figure states them (charts.ts). */
function chartState (page, metric) {
  return page.locator(`.chart[data-metric="${metric}"]`).evaluate((figure) => ({
    points: Number(figure.dataset.points),
    peak: figure.dataset.peak === '' ? null : Number(figure.dataset.peak),
    latest: figure.dataset.latest === '' ? null : Number(figure.dataset.latest)
  }))
}

/** Waits until `metric`'s chart satisfies `predicate`; returns its state. */
async function waitForChart (page, metric, predicate, what) {
  let state = null
  await waitUntil(async () => predicate(state = await chartState(page, metric)), SAMPLE_WAIT_MS,
    () => `${what} (chart ${metric} now ${JSON.stringify(state)})`)
  return state
}

/** How many pixels of a chart's canvas have the line's colour (#4f46e5): the line and its dots. */
function linePixels (page, metric) {
  return page.locator(`.chart[data-metric="${metric}"] canvas`).evaluate((canvas) => {
    const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height)
    let n = 0
    for (let i = 0; i < data.length; i += 4) {
      if (data[i + 3] > 200 && Math.abs(data[i] - 79) < 24 && Math.abs(data[i + 1] - 70) < 24 && Math.abs(data[i + 2] - 229) < 24) n++
    }
    return n
  })
}

test('an administrator sees live documents, connections by protocol and charts of the last hour, refreshed while shown', scenario(withBrowser(async (s, t, person) => {
  const server = await startAuthServer(s)

  // Live data: Alice and Bob over y-websocket, Ada's provider over Hocuspocus, all on one doc,
  // and a file in the `team` workspace.
  const aliceToken = await loginToken(server, 'alice')
  await upload(server, aliceToken, 'team/report.txt', REPORT_BYTES)
  const alice = s.connect(server, DOC, { params: { token: aliceToken } })
  const bob = s.connect(server, DOC, { params: { token: await loginToken(server, 'bob') } })
  const tiptap = attach(s, server, DOC, { token: await loginToken(server, 'ada') })
  await Promise.all([synced(alice), synced(bob), settled(tiptap)])
  for (let i = 0; i < 40; i++) alice.text.insert(alice.text.length, `line ${i}\n`)
  await waitUntil(() => bob.text.toString().includes('line 39\n') && tiptap.text.toString().includes('line 39\n'),
    15000, 'the edits at Bob and at the Hocuspocus provider')
  // A refused request is logged as a warning, which the view lists.
  const missing = await server.get('/api/docs/team/missing.md', { accept: 'application/json', authorization: `Bearer ${aliceToken}` })
  assert.equal(missing.status, 404)

  // Ada signs in on /admin itself; the sign-in form says what the page is for.
  const ada = await person(server, { name: 'Ada' })
  const page = ada.page
  await signInAt(page, '/admin', 'ada')
  await page.locator('#admin').waitFor()
  assert.equal(new URL(page.url()).pathname, '/admin', 'signing in continues to the admin view')

  const docRow = page.locator(`#admin-docs tr[data-doc="${DOC}"]`)
  await page.locator(`#admin-docs tr[data-doc="${DOC}"][data-peers="3"]`).waitFor()
  assert.equal(await docRow.locator('.admin-peers').textContent(), '3')
  assert.equal(await docRow.locator('a').getAttribute('href'), '/d/team/notes.md')
  await page.locator('#admin-connections li[data-protocol="y-websocket"][data-count="2"]').waitFor()
  await page.locator('#admin-connections li[data-protocol="hocuspocus"][data-count="1"]').waitFor()
  await page.locator('#admin-connections li[data-protocol="total"][data-count="3"]').waitFor()
  assert.equal(await page.locator('#admin-connections li[data-protocol="hocuspocus"] .admin-tile-value').textContent(), '1')
  await page.locator('#live[data-live="true"]').waitFor()
  await page.locator('#admin-errors li[data-level="warn"]', { hasText: '/api/docs/team/missing.md' }).first().waitFor()
  const team = page.locator('#admin-storage tr[data-workspace="team"]')
  assert.ok(Number(await team.getAttribute('data-bytes')) >= REPORT_BYTES, 'the upload counts in the team workspace')
  assert.equal(await team.locator('[role="meter"]').getAttribute('aria-valuenow'), '25', 'a quarter of the quota')
  assert.match(await team.textContent(), /1 file.*25% of 1\.0 MB/)

  // The charts: a sample after the edits counts them; later samples see three people connected.
  const updates = await waitForChart(page, 'updates_per_second', (c) => c.peak > 0, 'a sample with updates')
  assert.ok(updates.points >= 2, `updates/s has the start-up sample and later ones (${updates.points})`)
  const latency = await waitForChart(page, 'commit_latency_ms', (c) => c.peak > 0, 'a sample with commits')
  assert.ok(latency.points >= 2)
  await waitForChart(page, 'connected_users', (c) => c.latest === 3, 'three signed-in people connected')
  for (const metric of ['updates_per_second', 'commit_latency_ms', 'connected_users']) {
    assert.equal(await page.locator(`.chart[data-metric="${metric}"] canvas`).count(), 1, `${metric} is drawn on a canvas`)
    // At least a dot of the line's colour: a lone value between gaps is drawn as one.
    assert.ok(await linePixels(page, metric) >= 10, `${metric}'s line is drawn`)
  }
  assert.notEqual(await page.locator('.chart[data-metric="updates_per_second"] .chart-now').textContent(), '–')
  assert.match(await page.locator('#admin-summary').textContent(), /^Up .* · 1 open document · 3 connections$/)
  await screenshot(page, 'admin-view.png')

  // Bob leaves: the next refresh shows two peers and one y-websocket connection.
  bob.provider.destroy()
  await page.locator(`#admin-docs tr[data-doc="${DOC}"][data-peers="2"]`).waitFor({ timeout: 15000 })
  await page.locator('#admin-connections li[data-protocol="y-websocket"][data-count="1"]').waitFor({ timeout: 15000 })

  // Hidden, the page stops asking; shown again, it asks at once.
  const setVisibility = (state) => page.evaluate((value) => {
    Object.defineProperty(document, 'visibilityState', { value, configurable: true })
    document.dispatchEvent(new Event('visibilitychange'))
  }, state)
  await setVisibility('hidden')
  await page.locator('#admin[data-refreshing="false"]').waitFor()
  const asked = page.waitForRequest((request) => new URL(request.url()).pathname === '/api/admin/overview', { timeout: 5000 })
  await setVisibility('visible')
  await page.locator('#admin[data-refreshing="true"]').waitFor()
  await asked

  // The workspace's top bar links administrators here.
  await page.goto('/')
  await page.locator('#admin-link').click()
  await page.locator('#admin').waitFor()
  assert.equal(new URL(page.url()).pathname, '/admin')
})))

test('anyone but an administrator is told the admin view is for administrators only, and gets no data', scenario(withBrowser(async (s, t, person) => {
  const server = await startAuthServer(s)
  const alice = s.connect(server, DOC, { params: { token: await loginToken(server, 'alice') } })
  await synced(alice)
  alice.text.insert(0, 'private text')

  // Signed out: the sign-in form on /admin says who the page is for.
  const bob = await person(server, { name: 'Bob' })
  const page = bob.page
  const adminCalls = []
  page.on('request', (request) => {
    if (new URL(request.url()).pathname.startsWith('/api/admin/')) adminCalls.push(request.url())
  })
  await page.goto('/admin')
  await page.locator('#sign-in').waitFor()
  assert.match(await page.locator('#sign-in .subtitle').textContent(), /administrators only/)

  // Signed in without the admin flag: refused, no data, and nothing asked of the admin API.
  await signInAt(page, '/admin', 'bob')
  await page.locator('#admin-refused').waitFor()
  assert.equal(await page.locator('#admin-refused h1').textContent(), 'Administrators only')
  assert.match(await page.locator('#admin-refused').textContent(), /The account Bob Stone is not one\./)
  assert.equal(await page.locator('#admin, .chart, canvas, #admin-docs').count(), 0, 'no admin view, no chart, no table')
  assert.equal(await page.getByText(DOC).count(), 0, 'no document is named')
  assert.deepEqual(adminCalls, [], 'the page asks the admin API nothing')
  await screenshot(page, 'admin-view-refused.png')

  // The workspace offers Bob no link to it.
  await page.goto('/')
  await page.locator('#tree').waitFor()
  assert.equal(await page.locator('#admin-link').count(), 0)

  // The API refuses Bob's token, and a request without one, whatever the page does.
  const bobToken = await loginToken(server, 'bob')
  for (const path of ['/api/admin/overview', '/api/admin/series']) {
    const refused = await server.get(path, { accept: 'application/json', authorization: `Bearer ${bobToken}` })
    assert.equal(refused.status, 403, path)
    assert.equal((await refused.json()).error, 'not_admin', path)
    assert.equal((await server.get(path, { accept: 'application/json' })).status, 401, `${path} without a token`)
  }
})))
