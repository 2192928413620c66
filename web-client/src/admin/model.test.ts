import { describe, expect, it } from 'vitest'
import type { AdminSample } from '../api/types'
import {
  CHARTS,
  chartData,
  connectionCounts,
  isolated,
  latest,
  peak,
  quotaShare,
  timeWindow,
  totalConnections,
  valueRange
} from './model'

const T0 = 1_765_100_000_000

function sample(seconds: number, fields: Partial<AdminSample> = {}): AdminSample {
  return {
    at: T0 + seconds * 1000,
    updates_per_second: 0,
    commit_latency_ms: null,
    connected_users: 0,
    connections: 0,
    ...fields
  }
}

describe('chartData', () => {
  it('gives times in seconds and the values of one metric', () => {
    const points = [sample(0), sample(10, { updates_per_second: 12.5, connected_users: 2 }), sample(20)]
    expect(chartData(points, 'updates_per_second')).toEqual([
      [T0 / 1000, T0 / 1000 + 10, T0 / 1000 + 20],
      [0, 12.5, 0]
    ])
    expect(chartData(points, 'connected_users')[1]).toEqual([0, 2, 0])
  })

  it('keeps a missing latency as a gap', () => {
    const points = [sample(0), sample(10, { commit_latency_ms: 1.8 }), sample(20)]
    expect(chartData(points, 'commit_latency_ms')[1]).toEqual([null, 1.8, null])
  })

  it('drops points that go back in time or repeat a time, and values that are not numbers', () => {
    const odd = { ...sample(30), updates_per_second: 'x' } as unknown as AdminSample
    const points = [
      sample(10, { updates_per_second: 1 }),
      sample(5),
      sample(10),
      sample(20, { updates_per_second: NaN }),
      odd
    ]
    const [times, values] = chartData(points, 'updates_per_second')
    expect(times).toEqual([T0 / 1000 + 10, T0 / 1000 + 20, T0 / 1000 + 30])
    expect(values).toEqual([1, null, null])
  })

  it('is empty for no points', () => {
    expect(chartData([], 'connected_users')).toEqual([[], []])
  })
})

describe('latest and peak', () => {
  it('skip missing values', () => {
    expect(latest([1, 3, null])).toBe(3)
    expect(peak([null, 2, 7, null, 4])).toBe(7)
  })

  it('are null without any value', () => {
    expect(latest([])).toBeNull()
    expect(latest([null, null])).toBeNull()
    expect(peak([null])).toBeNull()
  })

  it('count a zero as a value', () => {
    expect(latest([5, 0])).toBe(0)
    expect(peak([0, 0])).toBe(0)
  })
})

describe('isolated', () => {
  it('finds the values with a gap or an end on both sides', () => {
    expect(isolated([null, 1.8, null, null, 2, 3, null, 4])).toEqual([1, 7])
    expect(isolated([5])).toEqual([0])
    expect(isolated([0, null])).toEqual([0])
  })

  it('is null when every value is on a line, or there is none', () => {
    expect(isolated([1, 2, null, 3, 4])).toBeNull()
    expect(isolated([null, null])).toBeNull()
    expect(isolated([])).toBeNull()
  })
})

describe('timeWindow and valueRange', () => {
  it('spans the hour up to the newest sample', () => {
    expect(timeWindow([100, 4000], 0)).toEqual([400, 4000])
  })

  it('spans the hour up to now without samples', () => {
    expect(timeWindow([], 7_200_000)).toEqual([3600, 7200])
  })

  it('starts values at zero with a little headroom, or 0..1 when all is zero', () => {
    expect(valueRange(10)).toEqual([0, 11])
    expect(valueRange(0)).toEqual([0, 1])
    expect(valueRange(null)).toEqual([0, 1])
  })
})

describe('connections by protocol', () => {
  it('lists both known protocols first, at 0 when absent, then others by name', () => {
    expect(connectionCounts({ zeta: 1, 'y-websocket': 2, alpha: 4 })).toEqual([
      { protocol: 'y-websocket', count: 2 },
      { protocol: 'hocuspocus', count: 0 },
      { protocol: 'alpha', count: 4 },
      { protocol: 'zeta', count: 1 }
    ])
    expect(totalConnections({ zeta: 1, 'y-websocket': 2, alpha: 4 })).toBe(7)
    expect(totalConnections({})).toBe(0)
  })
})

describe('quotaShare', () => {
  it('is the share of the quota used, at most 1', () => {
    expect(quotaShare(0, 100)).toBe(0)
    expect(quotaShare(25, 100)).toBe(0.25)
    expect(quotaShare(300, 100)).toBe(1)
  })

  it('is null for an unlimited workspace', () => {
    expect(quotaShare(1_000_000, 0)).toBeNull()
  })
})

describe('chart value formats', () => {
  const format = (metric: string, value: number): string => CHARTS.find((c) => c.metric === metric)!.format(value)

  it('reads naturally', () => {
    expect(format('updates_per_second', 12.5)).toBe('12.5/s')
    expect(format('updates_per_second', 0.1234)).toBe('0.12/s')
    expect(format('updates_per_second', 1234.4)).toBe('1234/s')
    expect(format('commit_latency_ms', 1.8)).toBe('1.8 ms')
    expect(format('connected_users', 4)).toBe('4')
  })
})
