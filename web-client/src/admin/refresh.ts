// The admin view's polling loop: call `refresh` now and then every `intervalMs` after the last
// call finished, never two at once, for as long as it is started. The page starts it while it is
// visible and stops it when it is hidden or left (page.ts), so a tab in the background asks the
// server nothing. No DOM here, so the unit tests drive it with fake timers.

export class Refresher {
  private timer: ReturnType<typeof setTimeout> | undefined
  private active = false
  private inFlight: Promise<void> | null = null

  constructor(
    private readonly refresh: () => Promise<void>,
    private readonly intervalMs: number
  ) {}

  /** Whether it is started (a call may still be finishing after a stop). */
  get running(): boolean {
    return this.active
  }

  /** Refreshes now (unless a call is under way) and keeps refreshing; a second start changes nothing. */
  start(): void {
    if (this.active) return
    this.active = true
    if (this.inFlight === null) this.tick()
    // Otherwise the call under way schedules the next one when it ends.
  }

  /** No further calls; one under way finishes, but is not followed by another. */
  stop(): void {
    this.active = false
    clearTimeout(this.timer)
    this.timer = undefined
  }

  private tick(): void {
    this.timer = undefined
    this.inFlight = this.refresh()
      .catch(() => {
        // `refresh` shows its own failures; the loop goes on and tries again.
      })
      .finally(() => {
        this.inFlight = null
        if (this.active) this.timer = setTimeout(() => this.tick(), this.intervalMs)
      })
  }
}
