// This browser's identity: the display name and colour chosen in the identity dialog
// (doc/identity.ts), remembered in localStorage under a key no other file reads. Signed in, the
// name shown is the account's (the server stamps it into presence anyway); only the colour is a
// choice then. With sign-in off, the stored name also names this browser to the server
// (`storedUserName`, read by api/http.ts).
import { currentSession } from './session'

export interface LocalUser {
  name: string
  color: string
  colorLight: string
}

const STORAGE_KEY = 'tandem.user'

/** Distinct, readable on white, and readable behind white label text. */
export const PALETTE = ['#e11d48', '#ea580c', '#ca8a04', '#16a34a', '#0891b2', '#2563eb', '#7c3aed', '#c026d3']

const ANIMALS = ['Otter', 'Heron', 'Lynx', 'Marten', 'Ibex', 'Puffin', 'Gecko', 'Bison', 'Koala', 'Raven']

function pick<T>(items: T[]): T {
  return items[Math.floor(Math.random() * items.length)]
}

function withLight(name: string, color: string): LocalUser {
  return { name, color, colorLight: `${color}33` }
}

/** The stored identity, or a fresh random one (stored at once, so it stays the same). */
export function loadUser(): LocalUser {
  try {
    const stored = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? 'null') as Partial<LocalUser> | null
    if (
      stored &&
      typeof stored.name === 'string' &&
      stored.name.trim() &&
      typeof stored.color === 'string' &&
      /^#[0-9a-f]{6}$/i.test(stored.color)
    ) {
      return withLight(stored.name.trim().slice(0, 64), stored.color)
    }
  } catch {
    // Unreadable storage: fall through to a fresh identity.
  }
  const user = withLight(`Anonymous ${pick(ANIMALS)}`, pick(PALETTE))
  saveUser(user)
  return user
}

/**
 * The display name stored in this browser, trimmed; null when none is stored. With sign-in off
 * it names this browser to the server (api/http.ts `anonymousName`).
 */
export function storedUserName(): string | null {
  try {
    const stored = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? 'null') as { name?: unknown } | null
    return typeof stored?.name === 'string' && stored.name.trim() !== '' ? stored.name.trim() : null
  } catch {
    return null
  }
}

/** The identity to show and publish: the stored one, named after the account when signed in. */
export function localUser(): LocalUser {
  const user = loadUser()
  const account = currentSession()
  return account !== null ? withLight(account.name, user.color) : user
}

export function saveUser(user: LocalUser): void {
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify({ name: user.name, color: user.color }))
  } catch {
    // Private mode may refuse storage; the identity then lasts for this tab only.
  }
}

/** A user as edited in the identity dialog. */
export function makeUser(name: string, color: string): LocalUser {
  return withLight(name.trim().slice(0, 64) || 'Anonymous', color)
}
