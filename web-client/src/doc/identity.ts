// The user chip in the top bar and the dialog that sets the display name and colour. Signed in,
// the dialog shows the account's name as plain text: only the colour can change.
import { type LocalUser, loadUser, makeUser, PALETTE, saveUser } from '../auth/profile'
import { currentSession } from '../auth/session'
import { h } from '../ui/dom'
import { initials } from '../ui/format'

/** `color` if it is a plain `#rrggbb` colour, else a neutral grey: colours come from other people. */
export function safeColor(color: string | null | undefined): string {
  return typeof color === 'string' && /^#[0-9a-f]{6}$/i.test(color) ? color : '#64748b'
}

export function avatar(name: string, color: string, extra = ''): HTMLElement {
  const el = h('span', { class: `avatar ${extra}`.trim(), title: name, 'aria-hidden': 'true' }, initials(name))
  el.style.setProperty('--c', safeColor(color))
  return el
}

/** A button showing who you are; clicking it opens the identity dialog. */
export function identityChip(user: LocalUser, onChange: (user: LocalUser) => void): HTMLElement {
  let current = user
  const label = h('span', { class: 'chip-name' }, current.name)
  const face = h('span', { class: 'chip-face' }, avatar(current.name, current.color))
  const chip = h(
    'button',
    { id: 'identity', class: 'chip', type: 'button', title: 'Your name and colour' },
    face,
    label
  )
  const account = currentSession()?.name ?? null
  chip.addEventListener('click', () =>
    openDialog(current, account, (next) => {
      current = next
      // Signed in, the stored name (used when signed out, or on a server without sign-in) stays.
      saveUser(account !== null ? makeUser(loadUser().name, next.color) : next)
      label.textContent = next.name
      face.replaceChildren(avatar(next.name, next.color))
      onChange(next)
    })
  )
  return chip
}

function openDialog(user: LocalUser, account: string | null, onSave: (user: LocalUser) => void): void {
  const nameInput = h('input', {
    id: 'identity-name',
    name: 'name',
    maxlength: 64,
    required: true,
    autocomplete: 'nickname',
    value: user.name
  })
  const nameField =
    account === null
      ? [h('label', { for: 'identity-name' }, 'Display name'), nameInput]
      : [
          h('span', { class: 'label', id: 'identity-account-label' }, 'Name'),
          h(
            'p',
            { class: 'account-name', id: 'identity-account', 'aria-labelledby': 'identity-account-label' },
            h('strong', {}, account),
            h('span', { class: 'hint' }, 'The name of the account you signed in with.')
          )
        ]
  let chosen = user.color
  const swatches = PALETTE.map((color) => {
    const swatch = h('button', {
      type: 'button',
      class: 'swatch',
      style: `--c:${color}`, // from our own PALETTE
      'aria-label': `Colour ${color}`,
      'aria-pressed': String(color === chosen),
      'data-color': color
    })
    swatch.addEventListener('click', () => {
      chosen = color
      for (const s of swatches) s.setAttribute('aria-pressed', String(s === swatch))
    })
    return swatch
  })
  const form = h(
    'form',
    { method: 'dialog', class: 'identity-form' },
    h('h2', {}, 'How others see you'),
    ...nameField,
    h('span', { class: 'label' }, 'Colour'),
    h('div', { class: 'swatches' }, ...swatches),
    h(
      'div',
      { class: 'dialog-actions' },
      h('button', { type: 'button', class: 'button ghost', value: 'cancel', onclick: () => dialog.close() }, 'Cancel'),
      h('button', { type: 'submit', class: 'button primary', id: 'identity-save' }, 'Save')
    )
  )
  const dialog = h('dialog', { class: 'dialog' }, form)
  form.addEventListener('submit', (event) => {
    event.preventDefault()
    if (account === null && !nameInput.value.trim()) return
    onSave(makeUser(account ?? nameInput.value, chosen))
    dialog.close()
  })
  dialog.addEventListener('close', () => dialog.remove())
  document.body.append(dialog)
  dialog.showModal()
  if (account === null) nameInput.select()
}
