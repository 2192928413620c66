// The history panel of the document page: the saved versions (named, automatic, and the one
// kept before each restore) with their authors and times; a preview of one; what changed
// between it and now, line by line; restore (a new edit on top, which everyone connected sees
// at once and which can itself be undone from the list); and the document's activity.
import { diffLines } from 'diff'
import { listVersions, restoreVersion, saveVersion, versionContent } from '../api/docs'
import { errorMessage } from '../api/http'
import type { VersionSummary } from '../api/types'
import { h } from '../ui/dom'
import { ago } from '../ui/format'
import { ActivityFeed } from '../workspace/activity'

/** The text of a version: its root `Y.Text` named `textName`, as the server's JSON gives it. */
function textOf(content: Record<string, unknown>, textName: string): string {
  const value = content[textName]
  return typeof value === 'string' ? value : ''
}

function title(version: VersionSummary): string {
  if (version.name) return version.name
  switch (version.kind) {
    case 'auto':
      return 'Automatic version'
    case 'restore':
      return 'Before a restore'
    default:
      return `Version ${version.id}`
  }
}

/** Lines of `before` -> `after`: removed lines struck in red, added ones in green. */
export function diffView(before: string, after: string): HTMLElement {
  const view = h('div', {
    class: 'diff',
    id: 'history-diff',
    role: 'region',
    'aria-label': 'Changes since this version'
  })
  let changed = false
  for (const part of diffLines(before, after)) {
    const kind = part.added ? 'added' : part.removed ? 'removed' : 'same'
    if (kind !== 'same') changed = true
    const lines = part.value.replace(/\n$/, '').split('\n')
    for (const line of lines) {
      view.append(
        h(
          'div',
          { class: `diff-line ${kind}` },
          h(
            'span',
            { class: 'diff-mark', 'aria-hidden': 'true' },
            kind === 'added' ? '+' : kind === 'removed' ? '−' : ' '
          ),
          h(kind === 'added' ? 'ins' : kind === 'removed' ? 'del' : 'span', {}, line || ' ')
        )
      )
    }
  }
  if (!changed) view.replaceChildren(h('p', { class: 'hint' }, 'No changes: the document is the same as this version.'))
  return view
}

export interface HistoryOptions {
  doc: string
  textName: string
  readOnly: boolean
  /** The editor's text now. */
  currentText: () => string
}

/** The panel; `el` goes into the page, `refresh` is called when versions change. */
export class HistoryPanel {
  readonly el: HTMLElement
  readonly feed: ActivityFeed
  private readonly list = h('ol', { class: 'history-list', id: 'history-list' })
  private readonly detail = h('div', { class: 'history-detail', id: 'history-detail' })
  private readonly problem = h('p', { class: 'form-error', id: 'history-error', role: 'alert' })
  private versions: VersionSummary[] = []
  private selected: number | null = null

  constructor(private readonly options: HistoryOptions) {
    const nameInput = h('input', {
      id: 'version-name',
      placeholder: 'Name this version, e.g. "Sent to review"',
      'aria-label': 'Version name',
      maxlength: 200
    })
    const save = h('button', { class: 'button primary small', type: 'submit', id: 'save-version' }, 'Save version')
    const form = h('form', { class: 'version-form', hidden: options.readOnly }, nameInput, save)
    form.addEventListener('submit', (event) => {
      event.preventDefault()
      const name = nameInput.value.trim()
      if (name === '') {
        this.problem.textContent = 'Give the version a name.'
        return
      }
      save.disabled = true
      saveVersion(options.doc, name)
        .then(() => {
          nameInput.value = ''
          this.problem.textContent = ''
          return this.refresh()
        })
        .catch((error: unknown) => {
          this.problem.textContent = errorMessage(error)
        })
        .finally(() => {
          save.disabled = false
        })
    })
    this.feed = new ActivityFeed(options.doc)
    this.el = h(
      'section',
      { class: 'history', id: 'history', 'aria-label': 'History' },
      h('h2', {}, 'Versions'),
      form,
      this.problem,
      this.list,
      this.detail,
      this.feed.el
    )
  }

  async refresh(): Promise<void> {
    try {
      this.versions = await listVersions(this.options.doc)
      this.renderList()
    } catch (error) {
      this.problem.textContent = errorMessage(error)
    }
  }

  private renderList(): void {
    if (this.versions.length === 0) {
      this.list.replaceChildren(
        h(
          'li',
          { class: 'empty' },
          'No versions yet. Versions are saved automatically as people edit, or name one above.'
        )
      )
      return
    }
    this.list.replaceChildren(
      ...this.versions.map((version) => {
        const authors = (version.authors ?? []).map((a) => a.name)
        const button = h(
          'button',
          { class: 'history-item', type: 'button', 'aria-pressed': String(this.selected === version.id) },
          h('span', { class: 'history-title' }, title(version)),
          h('span', { class: 'history-meta' }, `${version.author.name} · ${ago(version.created_ms)}`),
          authors.length > 0
            ? h('span', { class: 'history-authors' }, `edits by ${[...new Set(authors)].join(', ')}`)
            : null
        )
        button.addEventListener('click', () => {
          void this.select(version)
        })
        return h('li', { 'data-version': version.id, 'data-kind': version.kind }, button)
      })
    )
  }

  private async select(version: VersionSummary): Promise<void> {
    this.selected = version.id
    this.renderList()
    this.detail.replaceChildren(h('p', { class: 'hint' }, 'Loading…'))
    let text: string
    try {
      text = textOf(await versionContent(this.options.doc, version.id), this.options.textName)
    } catch (error) {
      this.detail.replaceChildren(h('p', { class: 'form-error' }, errorMessage(error)))
      return
    }
    const preview = h('pre', { class: 'history-preview', id: 'history-preview' }, text)
    const changes = diffView(text, this.options.currentText())
    const showPreview = h('button', { class: 'button small ghost', type: 'button', 'aria-pressed': 'false' }, 'Preview')
    const showChanges = h(
      'button',
      { class: 'button small ghost', type: 'button', 'aria-pressed': 'true' },
      'Changes since'
    )
    const body = h('div', { class: 'history-body' }, changes)
    showPreview.addEventListener('click', () => {
      body.replaceChildren(preview)
      showPreview.setAttribute('aria-pressed', 'true')
      showChanges.setAttribute('aria-pressed', 'false')
    })
    showChanges.addEventListener('click', () => {
      body.replaceChildren(diffView(text, this.options.currentText()))
      showPreview.setAttribute('aria-pressed', 'false')
      showChanges.setAttribute('aria-pressed', 'true')
    })
    const restore = h(
      'button',
      { class: 'button primary small', type: 'button', id: 'restore-version', hidden: this.options.readOnly },
      'Restore this version'
    )
    restore.addEventListener('click', () => {
      if (
        !confirm(
          `Restore “${title(version)}”? Everyone editing sees the change; the current text is kept as a version first.`
        )
      )
        return
      restore.disabled = true
      restoreVersion(this.options.doc, version.id)
        .then(() => this.refresh())
        .catch((error: unknown) => {
          this.problem.textContent = errorMessage(error)
        })
        .finally(() => {
          restore.disabled = false
        })
    })
    this.detail.replaceChildren(
      h('div', { class: 'history-tabs' }, showChanges, showPreview, h('span', { class: 'spacer' }), restore),
      body
    )
  }
}
