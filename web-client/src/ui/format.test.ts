import { describe, expect, it } from 'vitest'
import { ago, bytes, duration, initials, plural } from './format'

describe('ago', () => {
  const now = 1_700_000_000_000
  it.each([
    [0, 'just now'],
    [44_000, 'just now'],
    [45_000, '1 min ago'],
    [5 * 60_000, '5 min ago'],
    [3_599_000, '60 min ago'],
    [3_600_000, '1 h ago'],
    [3 * 3_600_000, '3 h ago'],
    [86_400_000, '1 d ago'],
    [6 * 86_400_000, '6 d ago']
  ])('%i ms before now is %s', (before, text) => {
    expect(ago(now - before, now)).toBe(text)
  })

  it('says "just now" for a time in the future (clock skew)', () => {
    expect(ago(now + 60_000, now)).toBe('just now')
  })

  it('gives a date from a week on', () => {
    const then = now - 7 * 86_400_000
    expect(ago(then, now)).toBe(new Date(then).toLocaleDateString())
  })
})

describe('bytes', () => {
  it.each([
    [0, '0 B'],
    [1023, '1023 B'],
    [1024, '1.0 KB'],
    [3482, '3.4 KB'],
    [1024 * 1024 - 1, '1024.0 KB'],
    [1024 * 1024, '1.0 MB'],
    [64 * 1024 * 1024, '64.0 MB'],
    [1024 ** 3 - 1, '1024.0 MB'],
    [20 * 1024 ** 3, '20.0 GB'],
    [1.5 * 1024 ** 4, '1.5 TB']
  ])('%i is %s', (n, text) => {
    expect(bytes(n)).toBe(text)
  })
})

describe('duration', () => {
  it.each([
    [0, '0 s'],
    [-5_000, '0 s'],
    [59_999, '59 s'],
    [60_000, '1 min 0 s'],
    [5 * 60_000 + 3_000, '5 min 3 s'],
    [3_600_000, '1 h 0 min'],
    [2 * 3_600_000 + 5 * 60_000 + 59_000, '2 h 5 min'],
    [3 * 86_400_000 + 4 * 3_600_000 + 1, '3 d 4 h']
  ])('%i ms is %s', (ms, text) => {
    expect(duration(ms)).toBe(text)
  })
})

describe('initials', () => {
  it.each([
    ['Ada Lovelace', 'AL'],
    ['ada', 'A'],
    ['  Anonymous   Otter  Three ', 'AO'],
    ['', '?'],
    ['🦀 crab', '🦀C']
  ])('%s -> %s', (name, text) => {
    expect(initials(name)).toBe(text)
  })
})

describe('plural', () => {
  it('uses the singular for exactly one', () => {
    expect(plural(1, 'file')).toBe('1 file')
    expect(plural(0, 'file')).toBe('0 files')
    expect(plural(2, 'person', 'people')).toBe('2 people')
  })
})
