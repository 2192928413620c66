// The admin view's numbers, worked out from the admin API's answers: what each chart plots, the
// hour it spans, the connection counts by protocol and how full each workspace is. Pure: no DOM,
// no clock, no uPlot, so the unit tests pin every output.
import type { AdminOverview, AdminSample } from '../api/types'

/** The charted measures: a field of every sample. */
export type Metric = 'updates_per_second' | 'commit_latency_ms' | 'connected_users'

/** One chart: its measure, its title, and how a value of it reads. */
export interface ChartSpec {
  metric: Metric
  title: string
  format: (value: number) => string
}

export const CHARTS: ChartSpec[] = [
  { metric: 'updates_per_second', title: 'Updates per second', format: (v) => `${round(v)}/s` },
  { metric: 'commit_latency_ms', title: 'Commit latency', format: (v) => `${round(v)} ms` },
  { metric: 'connected_users', title: 'Connected users', format: (v) => String(Math.round(v)) }
]

/** How much history the charts span, in seconds (the series endpoint keeps an hour). */
export const WINDOW_S = 3600

/** The protocols always listed, even with no connection open; others follow as the server names them. */
export const PROTOCOLS = ['y-websocket', 'hocuspocus']

/**
 * A metric as uPlot data: times in seconds (uPlot's time scale) and the values, a missing one as
 * null (drawn as a gap). Points out of time order are dropped rather than drawn backwards.
 */
export function chartData(points: AdminSample[], metric: Metric): [number[], (number | null)[]] {
  const times: number[] = []
  const values: (number | null)[] = []
  for (const point of points) {
    const t = point.at / 1000
    if (times.length > 0 && t <= times[times.length - 1]) continue
    const value = point[metric]
    times.push(t)
    values.push(typeof value === 'number' && Number.isFinite(value) ? value : null)
  }
  return [times, values]
}

/** The newest value of a metric that is not missing, or null. */
export function latest(values: (number | null)[]): number | null {
  for (let i = values.length - 1; i >= 0; i--) {
    const value = values[i]
    if (value != null) return value
  }
  return null
}

/** The largest value, or null when there is none. */
export function peak(values: (number | null)[]): number | null {
  let max: number | null = null
  for (const value of values) if (value != null && (max === null || value > max)) max = value
  return max
}

/**
 * The indices of values with a missing value (or nothing) on both sides: a line cannot show
 * them, so the chart draws them as dots. Null when there are none.
 */
export function isolated(values: ArrayLike<number | null | undefined>): number[] | null {
  const found: number[] = []
  for (let i = 0; i < values.length; i++) {
    if (values[i] != null && values[i - 1] == null && values[i + 1] == null) found.push(i)
  }
  return found.length > 0 ? found : null
}

/** The hour the charts show, in seconds: ending at the newest sample (or `nowMs` without any). */
export function timeWindow(times: number[], nowMs: number): [number, number] {
  const end = times.length > 0 ? times[times.length - 1] : nowMs / 1000
  return [end - WINDOW_S, end]
}

/** A value axis from 0 to a little above the top value; 0 to 1 while everything is 0. */
export function valueRange(max: number | null): [number, number] {
  return [0, max !== null && max > 0 ? max * 1.1 : 1]
}

/** Open connections by protocol, the known protocols first (0 when absent), then any others by name. */
export function connectionCounts(connections: AdminOverview['connections']): { protocol: string; count: number }[] {
  const others = Object.keys(connections)
    .filter((protocol) => !PROTOCOLS.includes(protocol))
    .sort()
  return [...PROTOCOLS, ...others].map((protocol) => {
    const count = connections[protocol]
    return { protocol, count: typeof count === 'number' ? count : 0 }
  })
}

/** All open connections. */
export function totalConnections(connections: AdminOverview['connections']): number {
  return connectionCounts(connections).reduce((sum, { count }) => sum + count, 0)
}

/** How full a workspace is, 0 to 1 (over the quota counts as full); null without a quota. */
export function quotaShare(bytes: number, quotaBytes: number): number | null {
  if (quotaBytes <= 0) return null
  return Math.min(1, Math.max(0, bytes / quotaBytes))
}

/** Two decimals for small numbers, one for larger, none from 100 on. */
function round(value: number): string {
  const abs = Math.abs(value)
  if (abs >= 100) return value.toFixed(0)
  if (abs >= 10) return value.toFixed(1)
  return String(Number(value.toFixed(2)))
}
