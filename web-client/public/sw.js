// Tandem's service worker: keeps the app shell (index.html and the hashed bundles it names)
// so that a reload while offline still opens the editor, which then shows what IndexedDB holds.
// Documents never pass through here: they travel over the WebSocket and live in IndexedDB.
// Navigations are network-first (a deploy is picked up at once); hashed assets cache-first.
const CACHE = 'tandem-shell-v1'
const SHELL = '/index.html'
const STATIC = ['/favicon.svg', '/manifest.webmanifest']

/** The /assets/ URLs an index.html names. */
function assetsOf(html) {
  return [...html.matchAll(/(?:src|href)="(\/assets\/[^"]+)"/g)].map((m) => m[1])
}

/**
 * Caches `response` (an index.html) as the shell: first every asset it names, then the shell
 * itself, then drops assets it no longer names. A shell is never cached without its assets, and
 * updates run one after another, so two navigations across a deploy cannot prune each other's.
 */
let shellUpdates = Promise.resolve()
function storeShell(response) {
  shellUpdates = shellUpdates
    .catch(() => {})
    .then(async () => {
      const cache = await caches.open(CACHE)
      const html = await response.clone().text()
      const wanted = new Set(assetsOf(html))
      await Promise.all(
        [...wanted].map(async (url) => {
          if (!(await cache.match(url))) await cache.add(url)
        })
      )
      await cache.put(SHELL, response)
      for (const request of await cache.keys()) {
        const path = new URL(request.url).pathname
        if (path.startsWith('/assets/') && !wanted.has(path)) await cache.delete(request)
      }
    })
  return shellUpdates
}

self.addEventListener('install', (event) => {
  event.waitUntil(
    (async () => {
      const response = await fetch('/', { cache: 'no-cache' })
      if (response.ok) await storeShell(response)
      await (await caches.open(CACHE)).addAll(STATIC).catch(() => {})
      await self.skipWaiting()
    })()
  )
})

self.addEventListener('activate', (event) => {
  event.waitUntil(
    (async () => {
      for (const key of await caches.keys()) if (key !== CACHE) await caches.delete(key)
      await self.clients.claim()
    })()
  )
})

self.addEventListener('fetch', (event) => {
  const request = event.request
  const url = new URL(request.url)
  if (request.method !== 'GET' || url.origin !== self.location.origin) return
  if (url.pathname.startsWith('/api/') || url.pathname.startsWith('/ws/') || url.pathname === '/healthz') return

  if (request.mode === 'navigate') {
    event.respondWith(
      (async () => {
        try {
          const response = await fetch(request)
          if (response.ok && (response.headers.get('content-type') || '').startsWith('text/html')) {
            event.waitUntil(storeShell(response.clone()).catch(() => {}))
          }
          return response
        } catch (error) {
          const cached = await caches.match(SHELL)
          if (cached) return cached
          throw error
        }
      })()
    )
    return
  }

  if (url.pathname.startsWith('/assets/')) {
    event.respondWith(
      (async () => {
        const cached = await caches.match(request)
        if (cached) return cached
        const response = await fetch(request)
        if (response.ok) {
          const cache = await caches.open(CACHE)
          event.waitUntil(cache.put(request, response.clone()))
        }
        return response
      })()
    )
    return
  }

  event.respondWith(
    fetch(request).catch(async (error) => {
      const cached = await caches.match(request)
      if (cached) return cached
      throw error
    })
  )
})
