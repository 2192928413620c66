// Vite builds the client into dist/, which the `tandem` binary embeds (release builds) or reads
// from disk (debug builds). Hashed file names under assets/ let the server cache them forever.
// `test` configures the unit tests (`npm test`): the pure parts, in Node, without a browser.
/// <reference types="vitest/config" />
import { defineConfig } from 'vite'

export default defineConfig({
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    // No dynamic imports: one JS and one CSS file, both named by index.html, which the service
    // worker precaches so that the editor still opens when the page is reloaded offline.
    chunkSizeWarningLimit: 2048
  },
  test: {
    include: ['src/**/*.test.ts'],
    environment: 'node'
  },
  server: {
    // `npm run dev` proxies the API and the WebSocket to a tandem on the default port.
    proxy: {
      '/api': 'http://127.0.0.1:8080',
      '/ws': { target: 'ws://127.0.0.1:8080', ws: true }
    }
  }
})
