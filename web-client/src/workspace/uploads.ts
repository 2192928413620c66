// Uploading files into the workspace with the tus resumable-upload protocol (tus-js-client
// against `/api/uploads`, protocol-spec/files.md). An upload cut off by the network is resumed
// from the offset the server reports, and one interrupted by a reload is found again (the
// client remembers its upload URL per file), so a large build never starts over. Each upload
// shows a progress bar; the finished file appears in everyone's tree through the live events.
import * as tus from 'tus-js-client'
import { anonymousName, errorMessage } from '../api/http'
import { docNameProblem } from '../api/names'
import { currentSession } from '../auth/session'
import { h } from '../ui/dom'
import { bytes } from '../ui/format'

/** Files up to this size are hashed in the browser, so the server can check the bytes it got. */
const HASH_LIMIT_BYTES = 64 * 1024 * 1024
/** Each PATCH carries at most this much, so a cut-off request loses little. */
const CHUNK_BYTES = 16 * 1024 * 1024

async function sha256Hex(file: File): Promise<string | null> {
  if (file.size > HASH_LIMIT_BYTES || crypto.subtle === undefined) return null
  const digest = await crypto.subtle.digest('SHA-256', await file.arrayBuffer())
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('')
}

/** The list of uploads in progress, with a bar each. */
export class UploadList {
  readonly el = h('ul', { class: 'uploads', id: 'uploads', 'aria-live': 'polite' })

  /** Uploads `file` to the workspace path `path`. Resolves when stored, rejects with the reason. */
  async upload(file: File, path: string): Promise<void> {
    const bar = h('progress', { max: 100, value: 0, 'aria-label': `Uploading ${path}` })
    const label = h('span', { class: 'upload-progress' }, 'starting…')
    const cancel = h('button', { class: 'button small ghost', type: 'button' }, 'Cancel')
    const row = h(
      'li',
      { class: 'upload', 'data-path': path, 'data-state': 'running' },
      h('span', { class: 'upload-name' }, path),
      bar,
      label,
      cancel
    )
    this.el.append(row)
    const sha256 = await sha256Hex(file)
    const metadata: Record<string, string> = {
      path,
      filename: file.name,
      filetype: file.type || 'application/octet-stream'
    }
    if (sha256 !== null) metadata.sha256 = sha256
    try {
      await new Promise<void>((resolve, reject) => {
        const upload = new tus.Upload(file, {
          endpoint: '/api/uploads',
          chunkSize: CHUNK_BYTES,
          retryDelays: [0, 1000, 3000, 5000, 10000, 20000],
          metadata,
          removeFingerprintOnSuccess: true,
          // The token may have been renewed since the upload began.
          onBeforeRequest(request) {
            const token = currentSession()?.token
            if (token !== undefined) request.setHeader('Authorization', `Bearer ${token}`)
            const name = token === undefined ? anonymousName() : null
            if (name !== null) request.setHeader('X-Tandem-User', name)
          },
          // A refusal (403, 413, 507, 409) will not change on a retry.
          onShouldRetry(error, _attempt, options) {
            const status = error.originalResponse?.getStatus() ?? 0
            if (status >= 400 && status < 500 && status !== 409 && status !== 423) return false
            if (status === 507) return false
            return options.retryDelays !== null && options.retryDelays !== undefined
          },
          onProgress(sent, total) {
            const percent = total > 0 ? Math.floor((sent / total) * 100) : 100
            bar.value = percent
            label.textContent = `${percent}% · ${bytes(sent)} of ${bytes(total)}`
          },
          onSuccess() {
            resolve()
          },
          onError(error) {
            reject(error)
          }
        })
        cancel.addEventListener('click', () => {
          void upload.abort(true).then(() => reject(new Error('cancelled')))
        })
        void upload.findPreviousUploads().then((previous) => {
          if (previous.length > 0) upload.resumeFromPreviousUpload(previous[0])
          upload.start()
        })
      })
      bar.value = 100
      label.textContent = 'stored'
      row.dataset.state = 'done'
      cancel.remove()
      setTimeout(() => row.remove(), 4000)
    } catch (error) {
      row.dataset.state = 'failed'
      label.textContent = uploadProblem(error)
      cancel.textContent = 'Dismiss'
      cancel.onclick = () => row.remove()
      throw error
    }
  }
}

/**
 * The upload controls: a folder to upload into, a file picker, dropping files on a target (the
 * tree), the list of uploads in progress, and the line where problems are reported.
 */
export class UploadBar {
  readonly uploads = new UploadList()
  readonly problem = h('p', { class: 'form-error', id: 'upload-error', role: 'alert' })
  private readonly folderInput = h('input', {
    id: 'upload-folder',
    placeholder: 'folder (optional), e.g. builds',
    'aria-label': 'Upload into folder',
    autocomplete: 'off'
  })
  private readonly picker = h('input', { id: 'upload-input', type: 'file', multiple: true, hidden: true })
  private readonly button = h('button', { class: 'button ghost', type: 'button', id: 'upload-button' }, 'Upload files')
  readonly el = h('div', { class: 'upload-bar' }, this.folderInput, this.button, this.picker)

  constructor() {
    this.button.addEventListener('click', () => this.picker.click())
    this.picker.addEventListener('change', () => {
      if (this.picker.files !== null) this.start(this.picker.files)
      this.picker.value = ''
    })
  }

  /** Files dropped on `target` are uploaded like picked ones. */
  acceptDrops(target: HTMLElement): void {
    target.addEventListener('dragover', (event) => {
      event.preventDefault()
      target.classList.add('dropping')
    })
    target.addEventListener('dragleave', () => target.classList.remove('dropping'))
    target.addEventListener('drop', (event) => {
      event.preventDefault()
      target.classList.remove('dropping')
      if (event.dataTransfer !== null) this.start(event.dataTransfer.files)
    })
  }

  /** Shows `text` on the problem line (empty clears it). */
  report(text: string): void {
    this.problem.textContent = text
  }

  private start(chosen: FileList | File[]): void {
    const folder = this.folderInput.value.trim().replace(/^\/+|\/+$/g, '')
    this.report('')
    for (const file of chosen) {
      const path = folder ? `${folder}/${file.name}` : file.name
      const nameProblem = docNameProblem(path)
      if (nameProblem !== null) {
        this.report(`${path}: ${nameProblem}`)
        continue
      }
      this.uploads.upload(file, path).catch((error: unknown) => {
        this.report(`${path}: ${errorMessage(error)}`)
      })
    }
  }
}

/** The server's message for a refused upload, or the client's. */
function uploadProblem(error: unknown): string {
  const response = (error as tus.DetailedError).originalResponse
  const body = response?.getBody()
  if (body) {
    try {
      const parsed = JSON.parse(body) as { message?: string }
      if (parsed.message) return parsed.message
    } catch {
      // not JSON
    }
  }
  return error instanceof Error ? error.message : String(error)
}
