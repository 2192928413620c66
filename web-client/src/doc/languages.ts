// Syntax highlighting chosen by the document name's extension.
import type { Extension } from '@codemirror/state'
import { css } from '@codemirror/lang-css'
import { html } from '@codemirror/lang-html'
import { javascript } from '@codemirror/lang-javascript'
import { json } from '@codemirror/lang-json'
import { markdown } from '@codemirror/lang-markdown'
import { python } from '@codemirror/lang-python'
import { rust } from '@codemirror/lang-rust'

interface Language {
  label: string
  load: () => Extension
}

const LANGUAGES: Record<string, Language> = {
  md: { label: 'Markdown', load: () => markdown() },
  markdown: { label: 'Markdown', load: () => markdown() },
  js: { label: 'JavaScript', load: () => javascript() },
  mjs: { label: 'JavaScript', load: () => javascript() },
  cjs: { label: 'JavaScript', load: () => javascript() },
  jsx: { label: 'JavaScript (JSX)', load: () => javascript({ jsx: true }) },
  ts: { label: 'TypeScript', load: () => javascript({ typescript: true }) },
  mts: { label: 'TypeScript', load: () => javascript({ typescript: true }) },
  tsx: { label: 'TypeScript (TSX)', load: () => javascript({ typescript: true, jsx: true }) },
  rs: { label: 'Rust', load: () => rust() },
  py: { label: 'Python', load: () => python() },
  json: { label: 'JSON', load: () => json() },
  html: { label: 'HTML', load: () => html() },
  htm: { label: 'HTML', load: () => html() },
  css: { label: 'CSS', load: () => css() }
}

/** The language of a document name, e.g. `src/main.rs` -> Rust; plain text when unknown. */
export function languageFor(name: string): { label: string; extension: Extension } {
  const base = name.slice(name.lastIndexOf('/') + 1)
  const dot = base.lastIndexOf('.')
  const ext = dot > 0 ? base.slice(dot + 1).toLowerCase() : ''
  const language = LANGUAGES[ext]
  return language ? { label: language.label, extension: language.load() } : { label: 'Plain text', extension: [] }
}
