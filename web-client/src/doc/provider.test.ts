import { describe, expect, it } from 'vitest'
import pkg from '../../package.json'
import { PINNED } from './provider'

// provider.ts relies on undocumented internals of exactly these versions; package.json must pin
// them exactly, and an upgrade must come with a new reading of the sources provider.ts names.
describe('the provider adapter', () => {
  it('was checked against the versions package.json pins', () => {
    for (const [name, version] of Object.entries(PINNED)) {
      expect(pkg.dependencies[name as keyof typeof PINNED]).toBe(version)
    }
  })
})
