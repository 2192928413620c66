// The workspace listing as this page last fetched it (`GET /api/docs` and `GET /api/files`), and
// the reload loop that keeps it current. No DOM: the page redraws when `onChange` is called.
import { listDocs } from '../api/docs'
import { listFiles } from '../api/files'
import type { DocSummary, FileSummary } from '../api/types'
import type { Listing } from './tree'

/** The "edited … ago" texts are refreshed at least this often (from memory, not the server). */
export const AGE_MS = 30000

export class LiveListing implements Listing {
  docs: DocSummary[] = []
  files: FileSummary[] = []
  /** False until the first listing arrived: the tree shows nothing (not "empty") before. */
  loaded = false
  /** One reload at a time; a reload asked for during one runs once more after it. */
  private inFlight = false
  private again = false
  /** The last listing drawn, as JSON, and when: an unchanged listing is not redrawn. */
  private lastJson = ''
  private lastChange = 0

  /**
   * `onChange` runs when the listing changed, or when it is unchanged but older than `AGE_MS`
   * (to age the "… ago" texts). Redrawing only then keeps keyboard focus in the tree.
   * `onError` runs when the server cannot be reached; the next event or reload tries again.
   */
  constructor(
    private readonly onChange: () => void,
    private readonly onError: () => void
  ) {}

  async reload(): Promise<void> {
    if (this.inFlight) {
      this.again = true
      return
    }
    this.inFlight = true
    try {
      do {
        this.again = false
        // Without the files listing (an older server), the documents still show.
        const [docs, files] = await Promise.all([listDocs(), listFiles().catch(() => this.files)])
        const json = JSON.stringify([docs, files])
        if (json !== this.lastJson || Date.now() - this.lastChange > AGE_MS) {
          this.docs = docs
          this.files = files
          this.lastJson = json
          this.lastChange = Date.now()
          this.loaded = true
          this.onChange()
        }
      } while (this.again)
    } catch {
      this.onError()
    } finally {
      this.inFlight = false
    }
  }
}

/** Calls `fn` once, `ms` after the last of a burst of calls. */
export function debounce(fn: () => void, ms: number): () => void {
  let timer: ReturnType<typeof setTimeout> | undefined
  return () => {
    clearTimeout(timer)
    timer = setTimeout(fn, ms)
  }
}
