import { describe, expect, it } from 'vitest'
import vectors from '../../../protocol-spec/vectors/role-patterns.json'
import { patternMatches, roleFromPatterns } from './roles'

// protocol-spec/vectors/role-patterns.json is read by the tests at the end of
// server/tandem-server/src/auth.rs too.
describe('role patterns follow the shared vectors', () => {
  it.each(vectors.matches)('$pattern ~ $doc is $matches ($note)', ({ pattern, doc, matches }) => {
    expect(patternMatches(pattern, doc)).toBe(matches)
  })

  it.each(vectors.roles)('$doc gets $role ($note)', ({ docs, doc, role }) => {
    expect(roleFromPatterns(docs as Record<string, unknown>, doc)).toBe(role)
  })
})

describe('claims the server would not issue', () => {
  it('ignores values that are not roles', () => {
    expect(roleFromPatterns({ '*': 'owner', 'a*': 7, a: 'read' }, 'a')).toBe('read')
    expect(roleFromPatterns({ '*': null }, 'a')).toBeNull()
  })
})
