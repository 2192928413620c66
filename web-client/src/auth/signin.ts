// The sign-in page, shown instead of any page while the server wants a token and there is no
// session (session.ts), and the "Sign out" button of the top bar.
import { h } from '../ui/dom'
import { onTokenChange, SignInError, signIn, signOut, waitText } from './session'

/**
 * Shows the sign-in form in `root`; calls `done` once signed in (here, or in another tab of the
 * same site), and the caller then shows the page the address names.
 */
export function mountSignIn(root: HTMLElement, done: () => void): void {
  document.title = 'Sign in · Tandem'
  const username = h('input', {
    id: 'signin-username',
    name: 'username',
    autocomplete: 'username',
    autocapitalize: 'none',
    spellcheck: 'false',
    required: true,
    maxlength: 256
  })
  const password = h('input', {
    id: 'signin-password',
    name: 'password',
    type: 'password',
    autocomplete: 'current-password',
    required: true,
    maxlength: 1024
  })
  const error = h('p', { class: 'form-error', id: 'signin-error', role: 'alert' })
  const submit = h('button', { class: 'button primary', type: 'submit', id: 'signin-submit' }, 'Sign in')
  const form = h(
    'form',
    { class: 'signin-card', id: 'sign-in', 'aria-labelledby': 'signin-title' },
    h('div', { class: 'brand' }, h('span', { class: 'logo' }), h('span', { class: 'brand-name' }, 'Tandem')),
    h('h1', { id: 'signin-title' }, 'Sign in'),
    h(
      'p',
      { class: 'subtitle' },
      location.pathname === '/admin'
        ? 'The admin view is for administrators only: sign in with an administrator account.'
        : location.pathname.startsWith('/d/')
          ? 'Sign in to open this document.'
          : 'Sign in to see your documents.'
    ),
    h('label', { for: 'signin-username' }, 'Username'),
    username,
    h('label', { for: 'signin-password' }, 'Password'),
    password,
    error,
    submit
  )
  root.replaceChildren(h('main', { class: 'signin' }, form))

  let finished = false
  const finish = (): void => {
    if (finished) return
    finished = true
    stop()
    done()
  }
  const stop = onTokenChange(finish)

  let waitUntil = 0
  let countdown: ReturnType<typeof setInterval> | undefined
  const tick = (): void => {
    const left = Math.ceil((waitUntil - Date.now()) / 1000)
    if (left > 0) {
      submit.textContent = `Try again in ${waitText(left)}`
      return
    }
    clearInterval(countdown)
    if (error.dataset.kind === 'too_many_attempts') error.textContent = ''
    submit.disabled = false
    submit.textContent = 'Sign in'
  }

  const setInvalid = (invalid: boolean): void => {
    for (const input of [username, password]) {
      if (invalid) input.setAttribute('aria-invalid', 'true')
      else input.removeAttribute('aria-invalid')
    }
  }
  for (const input of [username, password]) input.addEventListener('input', () => setInvalid(false))

  form.addEventListener('submit', (event) => {
    event.preventDefault()
    if (submit.disabled) return
    submit.disabled = true
    submit.textContent = 'Signing in…'
    error.textContent = ''
    signIn(username.value.trim(), password.value).then(finish, (failure: unknown) => {
      const problem = failure instanceof SignInError ? failure : new SignInError('server', 'Sign-in failed. Try again.')
      error.textContent = problem.message
      error.dataset.kind = problem.kind
      if (problem.kind === 'too_many_attempts') {
        waitUntil = Date.now() + problem.retryAfterS * 1000
        countdown = setInterval(tick, 1000)
        tick()
        return
      }
      submit.disabled = false
      submit.textContent = 'Sign in'
      if (problem.kind === 'bad_credentials') {
        setInvalid(true)
        password.select()
      }
    })
  })
  username.focus()
}

/** The top bar's "Sign out": ends the session in every tab; the sign-in page follows. */
export function signOutButton(): HTMLElement {
  return h(
    'button',
    { type: 'button', class: 'button ghost small', id: 'sign-out', onclick: () => signOut() },
    'Sign out'
  )
}
