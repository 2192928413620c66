// The CodeMirror 6 editor bound to a Y.Text through y-codemirror.next. History is Yjs's
// UndoManager, which tracks only this client's edits, so undo never reverts someone else's work.
import { autocompletion, closeBrackets, closeBracketsKeymap, completionKeymap } from '@codemirror/autocomplete'
import { defaultKeymap, indentWithTab } from '@codemirror/commands'
import {
  bracketMatching,
  defaultHighlightStyle,
  foldGutter,
  foldKeymap,
  indentOnInput,
  syntaxHighlighting
} from '@codemirror/language'
import { highlightSelectionMatches, searchKeymap } from '@codemirror/search'
import { Compartment, EditorState, type Extension } from '@codemirror/state'
import {
  crosshairCursor,
  drawSelection,
  dropCursor,
  EditorView,
  highlightActiveLine,
  highlightActiveLineGutter,
  highlightSpecialChars,
  keymap,
  lineNumbers,
  rectangularSelection
} from '@codemirror/view'
import { yCollab, yUndoManagerKeymap } from 'y-codemirror.next'
import type { Awareness } from 'y-protocols/awareness'
import * as Y from 'yjs'
import { remoteCursors } from './cursors'
import { tandemHighlight } from './highlight'

const look = EditorView.theme({
  '&': { height: '100%', fontSize: '14.5px' },
  '.cm-scroller': {
    fontFamily: 'ui-monospace, SFMono-Regular, "JetBrains Mono", Menlo, Consolas, monospace',
    lineHeight: '1.6'
  },
  '.cm-content': { padding: '16px 0' },
  '.cm-line': { padding: '0 20px 0 8px' },
  '.cm-gutters': { backgroundColor: 'transparent', border: 'none', color: '#94a3b8' },
  '.cm-activeLineGutter': { backgroundColor: 'transparent', color: '#334155' },
  '.cm-activeLine': { backgroundColor: '#6366f10a' },
  '&.cm-focused': { outline: 'none' }
})

/** Everything of CodeMirror's basic setup except its own history, which Yjs's undo replaces. */
function setup(): Extension {
  return [
    lineNumbers(),
    highlightActiveLineGutter(),
    highlightSpecialChars(),
    foldGutter(),
    drawSelection(),
    dropCursor(),
    EditorState.allowMultipleSelections.of(true),
    indentOnInput(),
    syntaxHighlighting(tandemHighlight),
    syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
    bracketMatching(),
    closeBrackets(),
    autocompletion(),
    rectangularSelection(),
    crosshairCursor(),
    highlightActiveLine(),
    highlightSelectionMatches(),
    EditorView.lineWrapping,
    keymap.of([
      ...yUndoManagerKeymap,
      ...closeBracketsKeymap,
      ...defaultKeymap,
      ...searchKeymap,
      ...foldKeymap,
      ...completionKeymap,
      indentWithTab
    ])
  ]
}

export interface Editor {
  view: EditorView
  undoManager: Y.UndoManager
  /** Stops (or allows) typing; remote changes still show. */
  setReadOnly: (readOnly: boolean) => void
}

/** Read-only: no edits through commands (`readOnly`) and none through the DOM (`editable`). */
function readOnlyExtension(readOnly: boolean): Extension {
  return readOnly ? [EditorState.readOnly.of(true), EditorView.editable.of(false)] : []
}

/** Mounts an editor for `ytext` into `parent`. */
export function createEditor(
  parent: HTMLElement,
  ytext: Y.Text,
  awareness: Awareness,
  language: Extension,
  readOnly = false
): Editor {
  const undoManager = new Y.UndoManager(ytext)
  const access = new Compartment()
  const state = EditorState.create({
    doc: ytext.toString(),
    extensions: [
      setup(),
      language,
      look,
      access.of(readOnlyExtension(readOnly)),
      // Awareness is left out of yCollab: remoteCursors draws the cursors (see cursors.ts).
      yCollab(ytext, null, { undoManager }),
      remoteCursors(ytext, awareness)
    ]
  })
  const view = new EditorView({ state, parent })
  const setReadOnly = (next: boolean): void => {
    view.dispatch({ effects: access.reconfigure(readOnlyExtension(next)) })
  }
  return { view, undoManager, setReadOnly }
}
