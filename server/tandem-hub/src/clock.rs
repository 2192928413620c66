//! The hub's clocks: wall-clock milliseconds for what is stored or reported, and a sleep that
//! waits on an optional deadline of the monotonic clock.
//!
//! Durations inside the hub (intervals, grace periods, expiry) use tokio's monotonic `Instant`,
//! so `tokio::time::pause` governs them in tests; only timestamps that leave the process (commit
//! times, version and event times) read the wall clock, here.

use std::time::SystemTime;

use tokio::time::Instant;

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sleeps until `deadline`, or forever when there is none (a `select!` branch that never fires).
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
