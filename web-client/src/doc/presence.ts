// The awareness `user` field y-codemirror.next and the other Yjs editors read to draw remote
// cursors and name labels (`name`, `color`, `colorLight`), and the people it says are here.
import type { Awareness } from 'y-protocols/awareness'
import type { LocalUser } from '../auth/profile'

/** Publishes `user` in the awareness state that every peer of the document sees. */
export function publishUser(awareness: Awareness, user: LocalUser): void {
  awareness.setLocalStateField('user', user)
}

/** A person in the document, from the awareness states (one per tab). */
export interface Presence {
  clientId: number
  name: string
  color: string
  self: boolean
}

export function presentUsers(awareness: Awareness): Presence[] {
  const people: Presence[] = []
  for (const [clientId, state] of awareness.getStates()) {
    const user = (state as { user?: Partial<LocalUser> }).user
    if (!user || typeof user.name !== 'string') continue
    people.push({
      clientId,
      name: user.name,
      color: typeof user.color === 'string' ? user.color : '#64748b',
      self: clientId === awareness.clientID
    })
  }
  return people.sort((a, b) => Number(b.self) - Number(a.self) || a.name.localeCompare(b.name))
}
