import { describe, expect, it } from 'vitest'
import type { LockInfo } from '../api/types'
import { lockHolder, lockLabel, lockTitle } from './lock'

function lock(extra: Partial<LockInfo> = {}): LockInfo {
  return { path: 'team/a.txt', deep: false, shared: false, owner: null, principal: null, expires_at: 0, ...extra }
}

describe('lock badge', () => {
  it('names the account, else the owner, else a WebDAV client', () => {
    expect(lockLabel(lock({ principal: 'ann', owner: "ann's laptop" }))).toBe('Locked by ann')
    expect(lockLabel(lock({ owner: ' mailto:bob@example.com ' }))).toBe('Locked by mailto:bob@example.com')
    expect(lockHolder(lock({ principal: ' ', owner: '' }))).toBe('a WebDAV client')
  })

  it('says where a deep lock comes from and how long it lasts', () => {
    const now = 1_000_000
    const title = lockTitle(
      lock({ principal: 'ann', owner: 'laptop', deep: true, path: 'team', expires_at: now + 10 * 60000 }),
      now
    )
    expect(title).toBe(
      'Locked through WebDAV by ann (laptop) with the folder team/, for up to 10 more minutes unless renewed; changes from anyone else are refused'
    )
    expect(lockTitle(lock({ shared: true, deep: true, path: '', expires_at: now - 5 }), now)).toBe(
      'A shared lock through WebDAV by a WebDAV client with the whole workspace, for another minute at most unless renewed; changes from anyone else are refused'
    )
  })
})
