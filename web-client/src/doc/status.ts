// The status pill: connection state at a glance, and whether every edit has reached the server.
import type { SyncState } from './connection'
import { h } from '../ui/dom'

interface Look {
  tone: 'ok' | 'busy' | 'warn' | 'off'
  text: string
  detail: string
}

function describe(state: SyncState): Look {
  switch (state.network) {
    case 'connected':
      return state.unsaved
        ? { tone: 'busy', text: 'Saving…', detail: 'Connected. Sending your latest edits to the server.' }
        : { tone: 'ok', text: 'Saved', detail: 'Connected. The server has stored all of your edits.' }
    case 'connecting':
      return { tone: 'busy', text: 'Connecting…', detail: 'Connecting to the server. You can already edit.' }
    case 'reconnecting':
      return {
        tone: 'warn',
        text: 'Reconnecting…',
        detail: state.unsaved
          ? 'Connection lost. Your unsent edits are kept in this browser and will be sent when it returns.'
          : 'Connection lost. Trying again.'
      }
    case 'offline':
      return {
        tone: 'off',
        text: 'Offline',
        detail: state.unsaved
          ? 'You are offline. Your edits are kept in this browser and merge when you are back online.'
          : 'You are offline. Edits you make are kept in this browser.'
      }
  }
}

/** A pill that follows `SyncState`; data attributes expose the state to tests and styles. */
export function statusPill(): { el: HTMLElement; update: (state: SyncState) => void } {
  const text = h('span', { class: 'status-text' })
  const note = h('span', { class: 'status-note' })
  const el = h(
    'div',
    { id: 'status', class: 'status', role: 'status', 'aria-live': 'polite' },
    h('span', { class: 'status-dot' }),
    text,
    note
  )
  return {
    el,
    update(state) {
      const look = describe(state)
      el.dataset.network = state.network
      el.dataset.saved = String(!state.unsaved)
      el.dataset.tone = look.tone
      el.title = look.detail
      text.textContent = look.text
      note.textContent = state.network !== 'connected' && state.unsaved ? 'edits kept locally' : ''
    }
  }
}
