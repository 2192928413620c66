//! The clocks of the hub and of the server above it, read in one place: the wall clock in
//! milliseconds and seconds, and a sleep that waits on an optional deadline of the monotonic clock.
//!
//! Durations inside the process (intervals, grace periods, expiry) use tokio's monotonic
//! `Instant`, so `tokio::time::pause` governs them in tests; only timestamps that leave the
//! process or are stored (commit, version and event times, token times, record timestamps) read
//! the wall clock, here. A clock set before 1970 reads as 0 rather than failing.

use std::time::SystemTime;

use tokio::time::Instant;

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Wall-clock seconds since the Unix epoch (what JWT times are counted in).
pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Sleeps until `deadline`, or forever when there is none (a `select!` branch that never fires).
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
