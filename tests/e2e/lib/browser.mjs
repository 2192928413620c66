// Real headless Chromium (Debian's /usr/bin/chromium) driven by playwright-core, against the web
// client the `tandem` binary serves. Each test gets its own browser; each simulated person gets
// their own browser context (separate storage, IndexedDB and network emulation).
import { mkdirSync } from 'node:fs'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import { waitUntil } from './client.mjs'

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium'
/** Screenshots land here; CI keeps them as artifacts, and people look at them. */
export const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), '..', 'artifacts')

const UI_TIMEOUT_MS = 15000

/** Launches Chromium with the flags this closed-network machine needs (no background traffic). */
export async function launch () {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'
    ]
  })
}

/**
 * A person: a fresh browser context whose stored identity is `name` and `color`, as if they
 * had set it in the identity dialog on an earlier visit.
 */
export async function person (browser, server, { name, color, viewport = { width: 1280, height: 800 } } = {}) {
  const context = await browser.newContext({ baseURL: server.httpUrl, viewport })
  if (name) {
    await context.addInitScript(([n, c]) => {
      if (!localStorage.getItem('tandem.user')) localStorage.setItem('tandem.user', JSON.stringify({ name: n, color: c }))
    }, [name, color || '#2563eb'])
  }
  const page = await context.newPage()
  page.setDefaultTimeout(UI_TIMEOUT_MS)
  const errors = []
  page.on('pageerror', (error) => errors.push(error))
  return { context, page, errors, name }
}

/** The document page's URL path for `name`. */
export function docPath (name) {
  return '/d/' + name.split('/').map(encodeURIComponent).join('/')
}

/** Opens the document page and waits until the editor is connected and synced. */
export async function openDoc (p, name) {
  await p.page.goto(docPath(name))
  await p.page.locator('.cm-content').waitFor()
  await waitForStatus(p.page, { network: 'connected' })
}

/** Waits until the status pill shows `network` (and `saved`, when given). */
export async function waitForStatus (page, { network, saved }) {
  let selector = '#status'
  if (network) selector += `[data-network="${network}"]`
  if (saved !== undefined) selector += `[data-saved="${saved}"]`
  await page.locator(selector).waitFor({ timeout: UI_TIMEOUT_MS })
}

/** What the editor shows (null while no editor is mounted, e.g. during a navigation). */
export function editorText (page) {
  return page.evaluate(() => window.tandem?.editor.view.state.doc.toString() ?? null)
}

/** Waits until the editor's text satisfies `predicate`; returns it. */
export async function waitForText (page, predicate, what = 'editor text') {
  let last = null
  const read = () => editorText(page).catch(() => null) // the page may be navigating
  await waitUntil(async () => (last = await read()) !== null && predicate(last), UI_TIMEOUT_MS, () => `${what} (now ${JSON.stringify(last)})`)
  return last
}

/** Moves the cursor to the end of the document (through the editor, as a keyboard would). */
export async function cursorToEnd (page) {
  await page.locator('.cm-content').click()
  await page.keyboard.press('Control+End')
}

/** Saves a screenshot as a test artifact; returns its path. */
export async function screenshot (page, file) {
  mkdirSync(ARTIFACTS, { recursive: true })
  const path = join(ARTIFACTS, file)
  await page.screenshot({ path })
  return path
}

/**
 * Wraps a scenario body with a browser that is closed afterwards; uncaught page errors fail
 * the test (each person's `errors`).
 */
export function withBrowser (body) {
  return async (s, t) => {
    const browser = await launch()
    const people = []
    try {
      await body(s, t, async (server, options) => {
        const p = await person(browser, server, options)
        people.push(p)
        return p
      })
      for (const p of people) {
        if (p.errors.length > 0) throw new Error(`page errors for ${p.name}: ${p.errors.map(String).join('; ')}`)
      }
    } finally {
      await browser.close()
    }
  }
}

/** Flags for servers in browser tests: the embedded client by default, or TANDEM_TEST_WEB_DIR. */
export const SERVER_ARGS = process.env.TANDEM_TEST_WEB_DIR ? ['--web-dir', process.env.TANDEM_TEST_WEB_DIR] : []
