// "Here now": the people in the document, from the awareness states (one entry per tab), this
// browser first. Redrawn on every awareness change.
import type { Awareness } from 'y-protocols/awareness'
import { h } from '../ui/dom'
import { avatar } from './identity'
import { presentUsers } from './presence'

export class PeopleList {
  /** The number of people, shown beside the heading. */
  readonly count = h('span', { class: 'count', id: 'users-count' })
  readonly list = h('ul', { id: 'users', class: 'people-list' })

  constructor(private readonly awareness: Awareness) {
    awareness.on('change', () => this.render())
    this.render()
  }

  private render(): void {
    const present = presentUsers(this.awareness)
    this.count.textContent = String(present.length)
    this.list.replaceChildren(
      ...present.map((p) =>
        h(
          'li',
          { class: 'person', 'data-name': p.name, 'data-client': p.clientId, 'data-self': String(p.self) },
          avatar(p.name, p.color),
          h('span', { class: 'person-name' }, p.name),
          p.self ? h('span', { class: 'you' }, 'you') : null
        )
      )
    )
  }
}
