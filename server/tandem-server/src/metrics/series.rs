//! The admin view's charts: one point every [`DEFAULT_INTERVAL`], the last hour of them, taken by a
//! tracked task from the running totals (updates received, commits and their time) and the
//! current connections. The first point is taken at start-up.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Telemetry;

/// Time between two points (`Config::series_interval`'s default).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Points kept: one hour.
pub(crate) const MAX_POINTS: usize = 360;

/// One point of the series.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Point {
    pub(crate) at_ms: u64,
    pub(crate) updates_per_second: f64,
    /// Mean commit time over the interval; `None` if nothing was committed.
    pub(crate) commit_latency_ms: Option<f64>,
    pub(crate) connected_users: u64,
    pub(crate) connections: u64,
}

/// The running totals a point is derived from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reading {
    /// Wall-clock time, for the point's timestamp.
    pub(super) at_ms: u64,
    /// Monotonic time, for the rates' divisor (the wall clock may step).
    pub(super) at: std::time::Instant,
    pub(super) n_updates: u64,
    pub(super) n_commits: u64,
    pub(super) commit_seconds: f64,
    pub(super) connected_users: u64,
    pub(super) connections: u64,
}

#[derive(Default)]
pub(super) struct Series {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    last: Option<Reading>,
    points: VecDeque<Point>,
}

impl Series {
    pub(super) fn sample(&self, now: Reading) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let point = match state.last {
            // The first point: nothing to difference against yet.
            None => Point {
                at_ms: now.at_ms,
                updates_per_second: 0.0,
                commit_latency_ms: None,
                connected_users: now.connected_users,
                connections: now.connections,
            },
            Some(last) => {
                let seconds = now
                    .at
                    .saturating_duration_since(last.at)
                    .as_secs_f64()
                    .max(0.001);
                let n_commits = now.n_commits.saturating_sub(last.n_commits);
                Point {
                    at_ms: now.at_ms,
                    updates_per_second: now.n_updates.saturating_sub(last.n_updates) as f64
                        / seconds,
                    commit_latency_ms: (n_commits > 0).then(|| {
                        (now.commit_seconds - last.commit_seconds).max(0.0) * 1000.0
                            / n_commits as f64
                    }),
                    connected_users: now.connected_users,
                    connections: now.connections,
                }
            }
        };
        state.last = Some(now);
        if state.points.len() == MAX_POINTS {
            state.points.pop_front();
        }
        state.points.push_back(point);
    }

    pub(super) fn points(&self) -> Vec<Point> {
        let state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.points.iter().copied().collect()
    }
}

/// The sampler's task: one point every `interval` until `cancel`, after the start-up point the
/// caller takes before spawning it (so a server that answers has it). Each tick also refreshes what is only sampled (the webhook outbox's depth,
/// through `sample_extra`).
pub(crate) async fn run<F, Fut>(
    telemetry: Telemetry,
    interval: Duration,
    sample_extra: F,
    cancel: CancellationToken,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let interval = interval.max(Duration::from_millis(10));
    // The start-up point is the caller's ([`Telemetry::sample`] before spawning this task).
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // `sample_extra` reads storage (the outbox), which may be slow or stuck: shutdown does not
    // wait for it.
    let (cancel, sample_extra) = (&cancel, &sample_extra);
    let extra = move || async move {
        tokio::select! {
            () = cancel.cancelled() => false,
            () = sample_extra() => true,
        }
    };
    if !extra().await {
        return;
    }
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = ticks.tick() => {
                telemetry.sample();
                if !extra().await {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The monotonic time of `at_ms` 0 in these tests.
    fn base() -> std::time::Instant {
        static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(std::time::Instant::now)
    }

    fn reading(at_ms: u64, n_updates: u64, n_commits: u64, commit_seconds: f64) -> Reading {
        Reading {
            at_ms,
            at: base() + Duration::from_millis(at_ms),
            n_updates,
            n_commits,
            commit_seconds,
            connected_users: 2,
            connections: 3,
        }
    }

    #[test]
    fn points_are_rates_and_means_over_their_interval_and_bounded() {
        let series = Series::default();
        series.sample(reading(1_000, 5, 1, 0.5));
        series.sample(reading(11_000, 105, 5, 0.5 + 4.0 * 0.002));
        series.sample(reading(21_000, 105, 5, 0.508));
        let points = series.points();
        assert_eq!(points.len(), 3);
        assert_eq!(points[0].updates_per_second, 0.0);
        assert_eq!(points[0].commit_latency_ms, None);
        assert!((points[1].updates_per_second - 10.0).abs() < 1e-9);
        let latency = points[1]
            .commit_latency_ms
            .expect("commits in the interval");
        assert!((latency - 2.0).abs() < 1e-6, "{latency}");
        assert_eq!(points[2].commit_latency_ms, None);
        assert_eq!(points[2].connections, 3);
        for i in 0..400 {
            series.sample(reading(30_000 + i * 10_000, 105, 5, 0.508));
        }
        let points = series.points();
        assert_eq!(points.len(), MAX_POINTS);
        assert!(points.windows(2).all(|pair| pair[0].at_ms < pair[1].at_ms));
    }

    /// A wall clock stepped back does not make a rate negative or huge: rates divide by
    /// monotonic time.
    #[test]
    fn rates_divide_by_monotonic_time_not_the_wall_clock() {
        let series = Series::default();
        series.sample(reading(60_000, 0, 0, 0.0));
        let mut stepped = reading(70_000, 100, 0, 0.0);
        stepped.at_ms = 1_000;
        series.sample(stepped);
        let rate = series.points()[1].updates_per_second;
        assert!((rate - 10.0).abs() < 1e-9, "{rate}");
    }
}
