// The History toggle of the document page and the drawer it opens. The panel (history.ts) is
// built when first opened, then kept current by the live events; closed, it is only hidden.
import type { LiveEvent } from '../api/types'
import { h } from '../ui/dom'
import { HistoryPanel, type HistoryOptions } from './history'

export class HistoryDrawer {
  readonly toggle = h(
    'button',
    {
      class: 'button small ghost',
      type: 'button',
      id: 'history-toggle',
      'aria-expanded': 'false',
      'aria-controls': 'history'
    },
    'History'
  )
  readonly host = h('div', { class: 'history-host', hidden: true })
  /** Null until the drawer is first opened. */
  private panel: HistoryPanel | null = null

  /** `page` gets the `with-history` class while the drawer is open. */
  constructor(
    private readonly options: HistoryOptions,
    page: HTMLElement
  ) {
    this.toggle.addEventListener('click', () => {
      const open = this.host.hidden
      this.host.hidden = !open
      page.classList.toggle('with-history', open)
      this.toggle.setAttribute('aria-expanded', String(open))
      if (open && this.panel === null) {
        this.panel = new HistoryPanel(this.options)
        this.host.append(this.panel.el)
        void this.panel.refresh()
        void this.panel.feed.reload()
      }
    })
  }

  /** Keeps an opened panel current; before the first opening there is nothing to update. */
  onEvent(event: LiveEvent): void {
    const panel = this.panel
    if (panel === null) return
    switch (event.type) {
      case 'hello':
      case 'resync':
        void panel.refresh()
        void panel.feed.reload()
        break
      case 'version_created':
      case 'version_restored':
        if (event.doc === this.options.doc) void panel.refresh()
        break
      case 'activity':
        panel.feed.upsert(event.entry)
        break
    }
  }
}
