// Token colours for every language: a calm light palette (CodeMirror's default style underlines
// headings and uses saturated primaries, which reads poorly in long prose).
import { HighlightStyle } from '@codemirror/language'
import { tags as t } from '@lezer/highlight'

export const tandemHighlight = HighlightStyle.define([
  { tag: [t.keyword, t.operatorKeyword, t.modifier, t.controlKeyword], color: '#7c3aed' },
  { tag: [t.definitionKeyword, t.moduleKeyword], color: '#7c3aed' },
  { tag: [t.string, t.special(t.string), t.regexp], color: '#0f766e' },
  { tag: [t.number, t.bool, t.null, t.atom], color: '#c2410c' },
  { tag: [t.comment, t.lineComment, t.blockComment], color: '#94a3b8', fontStyle: 'italic' },
  { tag: [t.function(t.variableName), t.function(t.propertyName)], color: '#2563eb' },
  { tag: [t.typeName, t.className, t.namespace], color: '#b45309' },
  { tag: [t.propertyName, t.attributeName], color: '#0369a1' },
  { tag: [t.tagName, t.angleBracket], color: '#be123c' },
  { tag: [t.macroName, t.meta, t.annotation], color: '#9333ea' },
  { tag: t.heading1, fontWeight: '700', fontSize: '1.3em', color: '#0f172a' },
  { tag: t.heading2, fontWeight: '700', fontSize: '1.15em', color: '#0f172a' },
  { tag: [t.heading3, t.heading4, t.heading5, t.heading6], fontWeight: '700', color: '#0f172a' },
  { tag: t.strong, fontWeight: '700' },
  { tag: t.emphasis, fontStyle: 'italic' },
  { tag: t.strikethrough, textDecoration: 'line-through' },
  { tag: t.link, color: '#4f46e5', textDecoration: 'underline' },
  { tag: t.url, color: '#4f46e5' },
  { tag: [t.monospace], color: '#be123c' },
  { tag: [t.quote], color: '#475569', fontStyle: 'italic' },
  { tag: [t.list, t.processingInstruction, t.contentSeparator], color: '#6366f1' },
  { tag: t.invalid, color: '#dc2626' }
])
