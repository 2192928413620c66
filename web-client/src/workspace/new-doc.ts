// The "New document" form: checks the name by the server's rules (api/names.ts) and opens the
// document's page, which creates the document with its first edit.
import { docHref, docNameProblem } from '../api/names'
import { h } from '../ui/dom'

export interface NewDocForm {
  form: HTMLFormElement
  /** Where a refused name is explained; placed by the page below the heading. */
  problem: HTMLElement
}

export function newDocForm(): NewDocForm {
  const nameInput = h('input', {
    id: 'new-doc-name',
    name: 'name',
    placeholder: 'notes/meeting.md',
    'aria-label': 'New document name',
    autocomplete: 'off',
    required: true,
    maxlength: 255
  })
  const problem = h('p', { class: 'form-error', id: 'new-doc-error', role: 'alert' })
  const form = h(
    'form',
    { class: 'new-doc', id: 'new-doc' },
    nameInput,
    h('button', { class: 'button primary', type: 'submit' }, 'New document')
  )
  form.addEventListener('submit', (event) => {
    event.preventDefault()
    const name = nameInput.value.trim()
    const error = docNameProblem(name)
    problem.textContent = error ?? ''
    if (!error) location.assign(docHref(name))
  })
  nameInput.addEventListener('input', () => {
    problem.textContent = ''
  })
  return { form, problem }
}
