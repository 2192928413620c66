// Remote cursors and selections, drawn from the awareness `cursor` and `user` fields that
// y-codemirror.next and other Yjs editors publish (relative positions, so they survive
// concurrent edits). We draw them ourselves instead of using y-codemirror.next's plugin: its
// caret widget compares colours only, so a person who renames without changing colour kept
// their old name on everyone else's screen until the next reload.
import { RangeSetBuilder, type Extension } from '@codemirror/state'
import { Decoration, type DecorationSet, EditorView, ViewPlugin, type ViewUpdate, WidgetType } from '@codemirror/view'
import type { Awareness } from 'y-protocols/awareness'
import * as Y from 'yjs'

const HEX_COLOR = /^#[0-9a-f]{6}$/i
const FALLBACK_COLOR = '#64748b'

interface Cursor {
  anchor: unknown
  head: unknown
}

/** The caret with its name label. Equal only when both colour and name are. */
class CaretWidget extends WidgetType {
  constructor(
    readonly color: string,
    readonly name: string
  ) {
    super()
  }

  eq(other: CaretWidget): boolean {
    return other.color === this.color && other.name === this.name
  }

  toDOM(): HTMLElement {
    const caret = document.createElement('span')
    caret.className = 'tandem-caret'
    caret.style.borderColor = this.color
    const label = document.createElement('span')
    label.className = 'tandem-caret-label'
    label.style.backgroundColor = this.color
    label.textContent = this.name
    caret.append('\u2060', label, '\u2060')
    return caret
  }

  ignoreEvent(): boolean {
    return true
  }
}

function sameCursor(
  published: Cursor | null | undefined,
  anchor: Y.RelativePosition,
  head: Y.RelativePosition
): boolean {
  if (published == null) return false
  try {
    return (
      Y.compareRelativePositions(Y.createRelativePositionFromJSON(published.anchor), anchor) &&
      Y.compareRelativePositions(Y.createRelativePositionFromJSON(published.head), head)
    )
  } catch {
    return false
  }
}

/** An absolute index in `ytext` for a peer's relative position, or null if it is elsewhere. */
function resolve(ytext: Y.Text, json: unknown): number | null {
  if (json == null || typeof json !== 'object') return null
  try {
    const position = Y.createAbsolutePositionFromRelativePosition(
      Y.createRelativePositionFromJSON(json),
      ytext.doc as Y.Doc
    )
    return position !== null && position.type === ytext ? position.index : null
  } catch {
    return null
  }
}

function remoteDecorations(view: EditorView, ytext: Y.Text, awareness: Awareness): DecorationSet {
  const length = view.state.doc.length
  const ranges: Array<{ from: number; to: number; deco: Decoration }> = []
  for (const [clientId, state] of awareness.getStates()) {
    if (clientId === awareness.clientID) continue
    const cursor = (state as { cursor?: Cursor | null }).cursor
    if (cursor == null) continue
    const anchor = resolve(ytext, cursor.anchor)
    const head = resolve(ytext, cursor.head)
    if (anchor === null || head === null) continue
    const user = (state as { user?: { name?: unknown; color?: unknown; colorLight?: unknown } }).user ?? {}
    const color = typeof user.color === 'string' && HEX_COLOR.test(user.color) ? user.color : FALLBACK_COLOR
    const name = typeof user.name === 'string' && user.name.trim() !== '' ? user.name.slice(0, 64) : 'Anonymous'
    const from = Math.min(anchor, head, length)
    const to = Math.min(Math.max(anchor, head), length)
    if (from < to) {
      ranges.push({
        from,
        to,
        deco: Decoration.mark({ class: 'tandem-selection', attributes: { style: `background-color: ${color}33` } })
      })
    }
    const at = Math.min(head, length)
    // A caret at the end of a forward selection sits inside it; at the start, outside.
    ranges.push({
      from: at,
      to: at,
      deco: Decoration.widget({ widget: new CaretWidget(color, name), side: head > anchor ? -1 : 1 })
    })
  }
  ranges.sort((a, b) => a.from - b.from || a.deco.startSide - b.deco.startSide)
  const builder = new RangeSetBuilder<Decoration>()
  for (const { from, to, deco } of ranges) builder.add(from, to, deco)
  return builder.finish()
}

/**
 * Publishes this editor's selection as the awareness `cursor` field (while it has focus) and
 * draws every other peer's caret, name label and selection.
 */
export function remoteCursors(ytext: Y.Text, awareness: Awareness): Extension {
  const plugin = ViewPlugin.fromClass(
    class {
      decorations: DecorationSet
      private destroyed = false
      private readonly onChange: (change: { added: number[]; updated: number[]; removed: number[] }) => void

      constructor(readonly view: EditorView) {
        this.decorations = remoteDecorations(view, ytext, awareness)
        this.onChange = ({ added, updated, removed }) => {
          if ([...added, ...updated, ...removed].some((id) => id !== awareness.clientID)) {
            // Redraw in a fresh update; dispatching inside another update is not allowed.
            queueMicrotask(() => {
              if (this.destroyed) return
              this.decorations = remoteDecorations(this.view, ytext, awareness)
              this.view.dispatch({})
            })
          }
        }
        awareness.on('change', this.onChange)
      }

      update(update: ViewUpdate): void {
        this.publish(update)
        if (update.docChanged) this.decorations = remoteDecorations(update.view, ytext, awareness)
      }

      private publish(update: ViewUpdate): void {
        const local = awareness.getLocalState()
        if (local === null) return
        if (!(update.view.hasFocus && update.view.dom.ownerDocument.hasFocus())) return
        const selection = update.state.selection.main
        const anchor = Y.createRelativePositionFromTypeIndex(ytext, selection.anchor)
        const head = Y.createRelativePositionFromTypeIndex(ytext, selection.head)
        if (!sameCursor(local.cursor as Cursor | null | undefined, anchor, head)) {
          awareness.setLocalStateField('cursor', { anchor, head })
        }
      }

      destroy(): void {
        this.destroyed = true
        awareness.off('change', this.onChange)
      }
    },
    { decorations: (value) => value.decorations }
  )

  const theme = EditorView.baseTheme({
    '.tandem-caret': {
      position: 'relative',
      borderLeft: '2px solid',
      marginLeft: '-1px',
      marginRight: '-1px',
      boxSizing: 'border-box',
      display: 'inline'
    },
    '.tandem-caret-label': {
      position: 'absolute',
      top: '-1.35em',
      left: '-2px',
      padding: '1px 5px',
      borderRadius: '4px 4px 4px 0',
      color: 'white',
      fontSize: '11px',
      fontWeight: '600',
      lineHeight: 'normal',
      whiteSpace: 'nowrap',
      userSelect: 'none',
      pointerEvents: 'none',
      zIndex: '101'
    }
  })
  return [theme, plugin]
}
