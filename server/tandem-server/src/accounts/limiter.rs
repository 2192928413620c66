//! Failed sign-ins counted per account and per client address: [`LoginLimiter`], the guard in
//! front of password hashing. Pure bookkeeping under one std mutex, with the time passed in, so
//! its rules are unit-tested without a clock; it never hashes, stores or logs anything.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::AccountConfig;

/// Accounts and addresses with failures being remembered. When full (after pruning expired
/// entries), an attempt under a name or address not yet tracked is refused: failing closed keeps
/// an attacker from flushing an account's counter by filling the table.
const MAX_TRACKED_KEYS: usize = 65_536;
/// Pruning the whole table is linear; when it is full, do it at most this often.
const PRUNE_INTERVAL: Duration = Duration::from_secs(1);

/// Failed sign-ins per account and per address over a sliding window.
///
/// A hand-written sliding log in one std mutex rather than `governor`: we count *failures* and
/// reset an account's count on success, which a token bucket (governor's GCRA) does not offer,
/// and a `Retry-After` exact to the second falls out of the oldest timestamp. Each key keeps at
/// most its limit of timestamps, and the table at most [`MAX_TRACKED_KEYS`] keys, so memory is
/// bounded. The lock is never held across an `.await`; the work under it is O(limit), plus an
/// occasional prune.
pub(super) struct LoginLimiter {
    window: Duration,
    max_per_account: u32,
    max_per_address: u32,
    state: Mutex<LimiterState>,
}

struct LimiterState {
    failures: HashMap<LimitKey, VecDeque<Instant>>,
    /// Attempts admitted by `check` whose password is still being verified. They count against
    /// the limits, so a burst of concurrent guesses cannot all pass the check before the first
    /// failure is recorded. At most the number of requests in flight (bounded by the hashing
    /// queue); a key leaves when its count returns to zero.
    pending: HashMap<LimitKey, u32>,
    last_prune: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum LimitKey {
    Account(String),
    Address(IpAddr),
}

impl LoginLimiter {
    pub(super) fn new(config: &AccountConfig) -> LoginLimiter {
        LoginLimiter {
            window: config.failure_window,
            max_per_account: config.max_failures_per_account.max(1),
            max_per_address: config.max_failures_per_address.max(1),
            state: Mutex::new(LimiterState {
                failures: HashMap::new(),
                pending: HashMap::new(),
                last_prune: None,
            }),
        }
    }

    fn keys(account: &str, address: IpAddr) -> [(LimitKey, usize); 2] {
        [
            (LimitKey::Account(account.to_owned()), 0),
            (LimitKey::Address(crate::listener::client_key(address)), 1),
        ]
    }

    /// Admits one attempt (counted as pending until [`Attempt`] is dropped or fails), or
    /// `Err(retry_after)` when the account or the address is over its limit, attempts in flight
    /// included.
    pub(super) fn check(
        &self,
        account: &str,
        address: IpAddr,
        now: Instant,
    ) -> Result<Attempt<'_>, Duration> {
        let limits = [self.max_per_account, self.max_per_address];
        let mut guard = self.state.lock().expect("limiter lock is never poisoned");
        let state = &mut *guard;
        let mut retry_after = Duration::ZERO;
        let mut untracked = false;
        for (key, idx) in Self::keys(account, address) {
            let in_flight = state.pending.get(&key).copied().unwrap_or(0) as usize;
            match state.failures.get_mut(&key) {
                Some(times) => {
                    expire(times, now, self.window);
                    if times.len() + in_flight >= limits[idx] as usize {
                        let oldest = times.front().copied().unwrap_or(now);
                        retry_after = retry_after
                            .max((oldest + self.window).saturating_duration_since(now))
                            .max(Duration::from_secs(1));
                    }
                }
                None if in_flight >= limits[idx] as usize => {
                    // Only attempts in flight so far: the first answer comes within seconds.
                    retry_after = retry_after.max(Duration::from_secs(1));
                }
                None => untracked = true,
            }
        }
        let mut state = guard;
        if untracked && state.failures.len() >= MAX_TRACKED_KEYS {
            self.prune(&mut state, now);
            if state.failures.len() >= MAX_TRACKED_KEYS {
                retry_after = retry_after.max(PRUNE_INTERVAL);
            }
        }
        if retry_after > Duration::ZERO {
            return Err(retry_after);
        }
        for (key, _) in Self::keys(account, address) {
            *state.pending.entry(key).or_default() += 1;
        }
        Ok(Attempt {
            limiter: self,
            account: account.to_owned(),
            address,
        })
    }

    /// Ends one pending attempt of `check`.
    fn release(&self, account: &str, address: IpAddr) {
        let mut state = self.state.lock().expect("limiter lock is never poisoned");
        for (key, _) in Self::keys(account, address) {
            if let Some(count) = state.pending.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    state.pending.remove(&key);
                }
            }
        }
    }

    fn record_failure(&self, account: &str, address: IpAddr, now: Instant) {
        let limits = [self.max_per_account, self.max_per_address];
        let mut state = self.state.lock().expect("limiter lock is never poisoned");
        for (key, idx) in Self::keys(account, address) {
            let full = state.failures.len() >= MAX_TRACKED_KEYS;
            if full && !state.failures.contains_key(&key) {
                // `check` refuses untracked keys while the table is full.
                continue;
            }
            let times = state.failures.entry(key).or_default();
            expire(times, now, self.window);
            times.push_back(now);
            // Only the newest `limit` failures matter for the decision.
            while times.len() > limits[idx] as usize {
                times.pop_front();
            }
        }
    }

    pub(super) fn reset_account(&self, account: &str) {
        let mut state = self.state.lock().expect("limiter lock is never poisoned");
        state
            .failures
            .remove(&LimitKey::Account(account.to_owned()));
    }

    fn prune(&self, state: &mut LimiterState, now: Instant) {
        if state
            .last_prune
            .is_some_and(|last| now.saturating_duration_since(last) < PRUNE_INTERVAL)
        {
            return;
        }
        state.last_prune = Some(now);
        let window = self.window;
        state.failures.retain(|_, times| {
            expire(times, now, window);
            !times.is_empty()
        });
    }
}

/// The keys of an attempt in the shared failure log of cluster mode (`FailureLog`): the
/// account, then the address (as the local limiter groups addresses).
pub(super) fn shared_keys(account: &str, address: IpAddr) -> [String; 2] {
    [
        format!("account:{account}"),
        format!("address:{}", crate::listener::client_key(address)),
    ]
}

impl LoginLimiter {
    /// What the shared counts of [`shared_keys`] (from `FailureLog::failures`, in that order)
    /// say at `now_ms`: `Some(retry_after)` when the account or the address has reached its
    /// limit across the nodes, as [`LoginLimiter::check`] decides for this node's own count.
    pub(super) fn shared_verdict(
        &self,
        counts: &[(u64, Option<u64>)],
        now_ms: u64,
    ) -> Option<Duration> {
        let limits = [self.max_per_account, self.max_per_address];
        let window_ms = self.window.as_millis() as u64;
        let mut retry_after = None::<Duration>;
        for (&(n_failures, oldest_ms), limit) in counts.iter().zip(limits) {
            if n_failures >= u64::from(limit) {
                let until_ms = oldest_ms.unwrap_or(now_ms).saturating_add(window_ms);
                let wait = Duration::from_millis(until_ms.saturating_sub(now_ms))
                    .max(Duration::from_secs(1));
                retry_after = Some(retry_after.map_or(wait, |other| other.max(wait)));
            }
        }
        retry_after
    }

    /// The failure window, for the shared log.
    pub(super) fn window(&self) -> Duration {
        self.window
    }
}

/// One sign-in attempt admitted by [`LoginLimiter::check`]: pending until dropped. A failed
/// attempt is recorded with [`Attempt::failed`]; any other ending (success, a storage error, a
/// dropped request) only releases it.
pub(super) struct Attempt<'a> {
    limiter: &'a LoginLimiter,
    account: String,
    address: IpAddr,
}

impl Attempt<'_> {
    /// Records this attempt as a failure (and releases it).
    pub(super) fn failed(self, now: Instant) {
        self.limiter
            .record_failure(&self.account, self.address, now);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.limiter.release(&self.account, self.address);
    }
}

fn expire(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times
        .front()
        .is_some_and(|first| now.saturating_duration_since(*first) >= window)
    {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `check`, with the attempt released at once (the unit tests record outcomes themselves).
    fn admit(
        limiter: &LoginLimiter,
        account: &str,
        address: IpAddr,
        now: Instant,
    ) -> Result<(), Duration> {
        limiter.check(account, address, now).map(drop)
    }

    #[test]
    fn the_shared_counts_refuse_at_either_limit_until_the_oldest_failure_leaves_the_window() {
        let limiter = LoginLimiter::new(&AccountConfig {
            max_failures_per_account: 3,
            max_failures_per_address: 5,
            failure_window: Duration::from_secs(60),
            ..AccountConfig::default()
        });
        let now_ms = 1_000_000;
        assert_eq!(
            limiter.shared_verdict(&[(2, Some(now_ms - 10)), (4, Some(now_ms - 10))], now_ms),
            None
        );
        assert_eq!(
            limiter.shared_verdict(&[(3, Some(now_ms - 20_000)), (3, None)], now_ms),
            Some(Duration::from_secs(40))
        );
        assert_eq!(
            limiter.shared_verdict(&[(0, None), (5, Some(now_ms - 59_900))], now_ms),
            Some(Duration::from_secs(1)),
            "never less than a second"
        );
        let [account, address] = shared_keys("ada", "192.0.2.7".parse().unwrap());
        assert_eq!(
            (account.as_str(), address.as_str()),
            ("account:ada", "address:192.0.2.7")
        );
    }

    #[test]
    fn attempts_in_flight_count_against_the_limit() {
        let limiter = LoginLimiter::new(&AccountConfig {
            max_failures_per_account: 3,
            ..AccountConfig::default()
        });
        let now = Instant::now();
        let address: IpAddr = "192.0.2.7".parse().unwrap();
        // Three concurrent guesses are admitted; the fourth waits for their outcome.
        let in_flight: Vec<Attempt<'_>> = (0..3)
            .map(|_| limiter.check("ada", address, now).expect("admitted"))
            .collect();
        assert!(limiter.check("ada", address, now).is_err());
        for attempt in in_flight {
            attempt.failed(now);
        }
        assert!(
            limiter.check("ada", address, now).is_err(),
            "three failures recorded"
        );
        // A success (or an error) only releases: the count goes back down.
        let limiter = LoginLimiter::new(&AccountConfig::default());
        drop(limiter.check("bob", address, now).expect("admitted"));
        assert!(limiter.state.lock().unwrap().pending.is_empty());
    }

    fn limiter(per_account: u32, per_address: u32) -> LoginLimiter {
        LoginLimiter::new(&AccountConfig {
            failure_window: Duration::from_secs(60),
            max_failures_per_account: per_account,
            max_failures_per_address: per_address,
            ..AccountConfig::default()
        })
    }

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const AWAY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn an_account_is_refused_after_its_failures_until_the_oldest_expires() {
        let limiter = limiter(3, 100);
        let start = Instant::now();
        for second in 0..3 {
            let now = start + Duration::from_secs(second);
            assert_eq!(admit(&limiter, "ada", HOME, now), Ok(()));
            limiter.record_failure("ada", HOME, now);
        }
        let now = start + Duration::from_secs(10);
        assert_eq!(
            admit(&limiter, "ada", AWAY, now),
            Err(Duration::from_secs(50)),
            "the account is limited from any address"
        );
        assert_eq!(admit(&limiter, "bob", HOME, now), Ok(()));
        assert_eq!(
            admit(&limiter, "ada", HOME, start + Duration::from_secs(60)),
            Ok(()),
            "one failure left the window"
        );
    }

    #[test]
    fn an_address_is_refused_across_accounts() {
        let limiter = limiter(100, 2);
        let now = Instant::now();
        limiter.record_failure("ada", HOME, now);
        limiter.record_failure("bob", HOME, now);
        assert!(admit(&limiter, "carol", HOME, now).is_err());
        assert_eq!(admit(&limiter, "carol", AWAY, now), Ok(()));
    }

    #[test]
    fn success_resets_the_account_but_not_the_address() {
        let limiter = limiter(2, 3);
        let now = Instant::now();
        limiter.record_failure("ada", HOME, now);
        limiter.record_failure("ada", HOME, now);
        assert!(admit(&limiter, "ada", AWAY, now).is_err());
        limiter.reset_account("ada");
        assert_eq!(admit(&limiter, "ada", AWAY, now), Ok(()));
        limiter.record_failure("bob", HOME, now);
        assert!(
            admit(&limiter, "ada", HOME, now).is_err(),
            "address keeps 3"
        );
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64_bit_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(
            crate::listener::client_key(a),
            crate::listener::client_key(b)
        );
        assert_ne!(
            crate::listener::client_key(a),
            crate::listener::client_key(other)
        );
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(crate::listener::client_key(mapped), HOME);
    }

    #[test]
    fn a_full_table_refuses_new_keys_and_prunes_expired_ones() {
        let limiter = limiter(5, 5);
        let start = Instant::now();
        {
            let mut state = limiter.state.lock().unwrap();
            for n in 0..MAX_TRACKED_KEYS {
                state
                    .failures
                    .insert(LimitKey::Account(format!("u{n}")), VecDeque::from([start]));
            }
        }
        assert!(admit(&limiter, "new", HOME, start).is_err(), "fails closed");
        assert_eq!(
            admit(&limiter, "u1", HOME, start + Duration::from_secs(61)),
            Ok(()),
            "after the window everything expired and was pruned"
        );
        assert!(limiter.state.lock().unwrap().failures.len() < 10);
    }
}
