// The pieces of the document page's top bar that do not change: the brand link home and the
// document's path as breadcrumbs (the last segment is `#doc-name`).
import { h } from '../ui/dom'

export function brand(): HTMLElement {
  return h(
    'a',
    { class: 'brand', href: '/', 'aria-label': 'Tandem workspace' },
    h('span', { class: 'logo' }),
    h('span', { class: 'brand-name' }, 'Tandem')
  )
}

export function breadcrumbs(name: string): HTMLElement {
  const segments = name.split('/')
  const crumbs = h('nav', { class: 'crumbs', 'aria-label': 'Document path' })
  crumbs.append(h('a', { href: '/', class: 'crumb-root' }, 'Workspace'))
  segments.forEach((segment, i) => {
    crumbs.append(h('span', { class: 'crumb-sep', 'aria-hidden': 'true' }, '/'))
    crumbs.append(
      i === segments.length - 1
        ? h('strong', { class: 'crumb-doc', id: 'doc-name' }, segment)
        : h('span', { class: 'crumb-folder' }, segment)
    )
  })
  return crumbs
}
