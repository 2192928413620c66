// The words of a WebDAV lock badge ("Locked by Ann"). Pure: tree-view.ts draws the badge, and the
// listing it comes from reloads on the `file_locked` and `file_unlocked` events (page.ts).
import type { LockInfo } from '../api/types'

/** Who holds `lock`, for people: its account, else its owner text, else a WebDAV client. */
export function lockHolder(lock: LockInfo): string {
  const principal = lock.principal?.trim()
  if (principal) return principal
  const owner = lock.owner?.trim()
  if (owner) return owner
  return 'a WebDAV client'
}

/** "Locked by Ann". */
export function lockLabel(lock: LockInfo): string {
  return `Locked by ${lockHolder(lock)}`
}

/** The badge's tooltip: who, through what, since where, until when, and what it means. */
export function lockTitle(lock: LockInfo, now = Date.now()): string {
  const owner = lock.owner?.trim()
  const who = lock.principal && owner && owner !== lock.principal ? `${lock.principal} (${owner})` : lockHolder(lock)
  const where =
    lock.deep && lock.path !== '' ? ` with the folder ${lock.path}/` : lock.deep ? ' with the whole workspace' : ''
  const minutes = Math.max(0, Math.ceil((lock.expires_at - now) / 60000))
  const until = minutes <= 1 ? 'for another minute at most' : `for up to ${minutes} more minutes`
  const scope = lock.shared ? 'A shared lock' : 'Locked'
  return `${scope} through WebDAV by ${who}${where}, ${until} unless renewed; changes from anyone else are refused`
}
