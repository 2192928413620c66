import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { Refresher } from './refresh'

/** A refresh whose calls are counted and finish only when the test says so. */
function controlled(): { refresh: () => Promise<void>; calls: () => number; finish: () => Promise<void> } {
  const pending: (() => void)[] = []
  let n = 0
  return {
    refresh: () => {
      n++
      return new Promise<void>((resolve) => pending.push(resolve))
    },
    calls: () => n,
    finish: async () => {
      pending.shift()?.()
      await vi.advanceTimersByTimeAsync(0) // let the `finally` run
    }
  }
}

describe('Refresher', () => {
  beforeEach(() => {
    vi.useFakeTimers()
  })
  afterEach(() => {
    vi.useRealTimers()
  })

  it('refreshes at once, then every interval after the previous call ended', async () => {
    const r = controlled()
    const refresher = new Refresher(r.refresh, 5000)
    refresher.start()
    expect(r.calls()).toBe(1)
    await vi.advanceTimersByTimeAsync(20_000)
    expect(r.calls()).toBe(1) // a slow call is never overlapped
    await r.finish()
    await vi.advanceTimersByTimeAsync(4999)
    expect(r.calls()).toBe(1)
    await vi.advanceTimersByTimeAsync(1)
    expect(r.calls()).toBe(2)
  })

  it('asks nothing once stopped, and resumes at once when started again', async () => {
    const r = controlled()
    const refresher = new Refresher(r.refresh, 5000)
    refresher.start()
    await r.finish()
    refresher.stop()
    expect(refresher.running).toBe(false)
    await vi.advanceTimersByTimeAsync(60_000)
    expect(r.calls()).toBe(1)
    refresher.start()
    expect(r.calls()).toBe(2)
    expect(refresher.running).toBe(true)
  })

  it('does not follow a call that ends after a stop, and does not double up on a quick restart', async () => {
    const r = controlled()
    const refresher = new Refresher(r.refresh, 5000)
    refresher.start()
    refresher.stop()
    await r.finish()
    await vi.advanceTimersByTimeAsync(60_000)
    expect(r.calls()).toBe(1)

    refresher.start() // second call, under way
    refresher.stop()
    refresher.start() // while it is still under way: no second concurrent call
    refresher.start()
    expect(r.calls()).toBe(2)
    await r.finish()
    await vi.advanceTimersByTimeAsync(5000)
    expect(r.calls()).toBe(3)
  })

  it('keeps going after a failed call', async () => {
    let n = 0
    const refresher = new Refresher(() => {
      n++
      return Promise.reject(new Error('offline'))
    }, 1000)
    refresher.start()
    await vi.advanceTimersByTimeAsync(3000)
    expect(n).toBe(4)
    refresher.stop()
  })
})
