//! Per-connection rate limits: a token bucket, and the three buckets every connection keeps
//! (messages, bytes, awareness messages).
//!
//! Sans-IO like the rest of the crate: the caller passes in the time as milliseconds of a
//! monotonic clock of its own (the connection's `Instant` of start), so every behaviour here is
//! deterministic and unit-tested with virtual time.
//!
//! Hand-written rather than a kept limiter crate (`governor`), on purpose: those read a clock
//! themselves, which this crate must not, and a breach here must report the rate the peer
//! actually sustained (for the close reason and the log line), which they do not expose.
//!
//! Read next: `tandem-hub/src/connection.rs`, whose reader checks every frame here before it
//! is decoded (bytes) and after (messages, awareness).

use crate::limits::{AWARENESS_BURST_SECONDS, Limits, MESSAGE_BURST_SECONDS};
use crate::protocol::{Message, ProtocolError, RateKind};

/// Tokens are counted in thousandths so that a refill of less than one token per millisecond
/// (any rate under 1000/s) is exact.
const MILLI: u128 = 1000;

/// A token bucket: it holds at most `burst` tokens, gains `rate_per_s` tokens per second, and
/// each event takes its cost in tokens. A rate of 0 disables the bucket (every take succeeds).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_s: u64,
    burst: u64,
    /// Tokens available, in thousandths of a token. Never above `burst * MILLI`.
    milli_tokens: u128,
    /// The time of the last refill; time never runs backwards here, even if the caller's does.
    last_ms: u64,
    /// When the bucket was last full, and the cost taken since: on a breach these give the rate
    /// the peer actually sustained, for the log line.
    full_since_ms: u64,
    taken_since_full: u64,
}

/// A take that the bucket refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateExceeded {
    /// The average rate since the bucket was last full, this take included, per second.
    pub observed_per_s: u64,
}

impl TokenBucket {
    /// A full bucket at time `now_ms`.
    pub fn new(rate_per_s: u64, burst: u64, now_ms: u64) -> TokenBucket {
        TokenBucket {
            rate_per_s,
            burst,
            milli_tokens: u128::from(burst) * MILLI,
            last_ms: now_ms,
            full_since_ms: now_ms,
            taken_since_full: 0,
        }
    }

    /// The configured rate per second (0: unlimited).
    pub fn rate_per_s(&self) -> u64 {
        self.rate_per_s
    }

    /// Takes `cost` tokens at time `now_ms`, or refuses and takes nothing. A cost above the burst
    /// is always refused.
    pub fn try_take(&mut self, cost: u64, now_ms: u64) -> Result<(), RateExceeded> {
        if self.rate_per_s == 0 {
            return Ok(());
        }
        self.refill(now_ms);
        let milli_cost = u128::from(cost) * MILLI;
        if milli_cost > self.milli_tokens {
            let taken = u128::from(self.taken_since_full.saturating_add(cost));
            let elapsed_ms = u128::from(self.last_ms.saturating_sub(self.full_since_ms).max(1));
            let observed = taken * MILLI / elapsed_ms;
            return Err(RateExceeded {
                observed_per_s: u64::try_from(observed).unwrap_or(u64::MAX),
            });
        }
        self.milli_tokens -= milli_cost;
        self.taken_since_full = self.taken_since_full.saturating_add(cost);
        Ok(())
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed_ms = now_ms.saturating_sub(self.last_ms);
        if elapsed_ms == 0 {
            return;
        }
        self.last_ms = now_ms;
        let capacity = u128::from(self.burst) * MILLI;
        // rate_per_s tokens per 1000 ms is rate_per_s thousandths per ms.
        let gained = u128::from(elapsed_ms) * u128::from(self.rate_per_s);
        self.milli_tokens = self.milli_tokens.saturating_add(gained).min(capacity);
        if self.milli_tokens == capacity {
            self.full_since_ms = now_ms;
            self.taken_since_full = 0;
        }
    }
}

/// The rate limits of one connection, checked by its reader for every frame it reads.
#[derive(Debug, Clone)]
pub struct ConnectionRates {
    messages: TokenBucket,
    bytes: TokenBucket,
    awareness: TokenBucket,
}

impl ConnectionRates {
    /// Full buckets sized from `limits`, at time `now_ms`.
    pub fn new(limits: &Limits, now_ms: u64) -> ConnectionRates {
        let per_s = |rate: u64, seconds: u64| TokenBucket::new(rate, burst(rate, seconds), now_ms);
        // One frame of the largest size allowed must always fit, whatever the byte rate.
        let byte_burst = limits.max_bytes_per_second.max(limits.max_frame_bytes);
        ConnectionRates {
            messages: per_s(limits.max_messages_per_second, MESSAGE_BURST_SECONDS),
            bytes: TokenBucket::new(limits.max_bytes_per_second, byte_burst, now_ms),
            awareness: per_s(limits.max_awareness_per_second, AWARENESS_BURST_SECONDS),
        }
    }

    /// Accounts for a frame of `frame_bytes` as it arrives, before it is decoded, so that a peer
    /// over its byte rate costs no decoding.
    pub fn check_frame(&mut self, frame_bytes: usize, now_ms: u64) -> Result<(), ProtocolError> {
        let cost = u64::try_from(frame_bytes).unwrap_or(u64::MAX);
        take(&mut self.bytes, RateKind::Byte, cost, now_ms)
    }

    /// Accounts for the messages one decoded frame carries: each is one message, and each
    /// awareness message also counts against the awareness rate.
    pub fn check_messages(
        &mut self,
        messages: &[Message],
        now_ms: u64,
    ) -> Result<(), ProtocolError> {
        take(
            &mut self.messages,
            RateKind::Message,
            messages.len() as u64,
            now_ms,
        )?;
        let n_awareness = messages
            .iter()
            .filter(|message| matches!(message, Message::Awareness(_)))
            .count() as u64;
        if n_awareness > 0 {
            take(
                &mut self.awareness,
                RateKind::Awareness,
                n_awareness,
                now_ms,
            )?;
        }
        Ok(())
    }

    /// Accounts for one message that is not a y-websocket [`Message`] (a Hocuspocus Auth,
    /// Close, Stateless or Pong): it counts against the message rate like any other.
    pub fn check_other_message(&mut self, now_ms: u64) -> Result<(), ProtocolError> {
        take(&mut self.messages, RateKind::Message, 1, now_ms)
    }

    /// Accounts for a WebSocket control frame (ping or pong) of `frame_bytes`: one message and
    /// its bytes, so that a ping flood is bounded like any other.
    pub fn check_control_frame(
        &mut self,
        frame_bytes: usize,
        now_ms: u64,
    ) -> Result<(), ProtocolError> {
        self.check_frame(frame_bytes, now_ms)?;
        take(&mut self.messages, RateKind::Message, 1, now_ms)
    }
}

/// `seconds` worth of `rate`, and at least one token so that a tiny rate still lets one through.
fn burst(rate: u64, seconds: u64) -> u64 {
    rate.saturating_mul(seconds).max(1)
}

fn take(
    bucket: &mut TokenBucket,
    kind: RateKind,
    cost: u64,
    now_ms: u64,
) -> Result<(), ProtocolError> {
    bucket
        .try_take(cost, now_ms)
        .map_err(|exceeded| ProtocolError::RateLimited {
            kind,
            limit_per_s: bucket.rate_per_s(),
            observed_per_s: exceeded.observed_per_s,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{CLOSE_RATE_LIMITED, decode_frame, encode_awareness, encode_sync_update};
    use bytes::Bytes;

    #[test]
    fn a_full_bucket_allows_its_burst_at_once_and_then_refuses() {
        let mut bucket = TokenBucket::new(10, 20, 0);
        for _ in 0..20 {
            assert_eq!(bucket.try_take(1, 0), Ok(()));
        }
        assert!(bucket.try_take(1, 0).is_err());
    }

    #[test]
    fn tokens_come_back_at_the_rate() {
        let mut bucket = TokenBucket::new(10, 20, 0);
        assert_eq!(bucket.try_take(20, 0), Ok(()));
        // 10/s is one token per 100 ms.
        assert!(bucket.try_take(1, 99).is_err());
        assert_eq!(bucket.try_take(1, 100), Ok(()));
        assert!(bucket.try_take(1, 150).is_err());
        assert_eq!(bucket.try_take(5, 700), Ok(()));
    }

    #[test]
    fn refills_stop_at_the_burst() {
        let mut bucket = TokenBucket::new(10, 20, 0);
        assert_eq!(bucket.try_take(20, 0), Ok(()));
        // An hour of silence still gives back only the burst.
        assert_eq!(bucket.try_take(20, 3_600_000), Ok(()));
        assert!(bucket.try_take(1, 3_600_000).is_err());
    }

    #[test]
    fn rates_below_one_per_millisecond_are_exact() {
        // 3/s: after 333 ms one token is not quite back; after 334 it is.
        let mut bucket = TokenBucket::new(3, 1, 0);
        assert_eq!(bucket.try_take(1, 0), Ok(()));
        assert!(bucket.try_take(1, 333).is_err());
        assert_eq!(bucket.try_take(1, 334), Ok(()));
    }

    #[test]
    fn a_sustained_rate_at_the_limit_never_trips() {
        let mut bucket = TokenBucket::new(50, 50, 0);
        for i in 0..10_000u64 {
            // One every 20 ms is exactly 50/s.
            assert_eq!(bucket.try_take(1, i * 20), Ok(()), "take {i}");
        }
    }

    #[test]
    fn a_refused_take_takes_nothing() {
        let mut bucket = TokenBucket::new(10, 10, 0);
        assert!(bucket.try_take(11, 0).is_err());
        assert_eq!(bucket.try_take(10, 0), Ok(()));
    }

    #[test]
    fn a_cost_above_the_burst_is_always_refused() {
        let mut bucket = TokenBucket::new(1000, 10, 0);
        assert!(bucket.try_take(11, 1_000_000).is_err());
    }

    #[test]
    fn a_zero_rate_disables_the_bucket() {
        let mut bucket = TokenBucket::new(0, 0, 0);
        for _ in 0..1000 {
            assert_eq!(bucket.try_take(u64::MAX, 0), Ok(()));
        }
    }

    #[test]
    fn time_running_backwards_gives_no_tokens_and_no_panic() {
        let mut bucket = TokenBucket::new(10, 10, 1000);
        assert_eq!(bucket.try_take(10, 1000), Ok(()));
        assert!(bucket.try_take(1, 0).is_err());
        assert!(bucket.try_take(1, 1050).is_err());
        assert_eq!(bucket.try_take(1, 1100), Ok(()));
    }

    #[test]
    fn huge_rates_and_times_do_not_overflow() {
        let mut bucket = TokenBucket::new(u64::MAX, u64::MAX, 0);
        assert_eq!(bucket.try_take(u64::MAX, 0), Ok(()));
        assert!(bucket.try_take(1, 0).is_err());
        assert_eq!(bucket.try_take(u64::MAX, u64::MAX), Ok(()));
    }

    #[test]
    fn the_observed_rate_is_what_was_taken_since_the_bucket_was_full() {
        let mut bucket = TokenBucket::new(10, 20, 0);
        // One every 50 ms (20/s, twice the rate) from a full bucket: it drains by half a token a
        // step and refuses the 40th take, at 1950 ms.
        let mut now = 0;
        let exceeded = loop {
            if let Err(exceeded) = bucket.try_take(1, now) {
                break exceeded;
            }
            now += 50;
        };
        assert_eq!(now, 1950);
        assert_eq!(exceeded.observed_per_s, 40 * 1000 / 1950);
        assert_eq!(exceeded.observed_per_s, 20);
    }

    fn text_update_frame(text: &str) -> Bytes {
        use yrs::{Doc, Text, Transact};
        let doc = Doc::with_client_id(1);
        let root = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        root.push(&mut txn, text);
        encode_sync_update(&txn.encode_update_v1())
    }

    fn awareness_frame(clock: u32) -> Bytes {
        let entry = crate::protocol::AwarenessEntry {
            client_id: 1,
            clock,
            json: r#"{"cursor":{"anchor":1,"head":2}}"#.into(),
            user: None,
        };
        encode_awareness([&entry])
    }

    /// Feeds one frame through the checks, as the connection reader does.
    fn feed(rates: &mut ConnectionRates, frame: &Bytes, now_ms: u64) -> Result<(), ProtocolError> {
        rates.check_frame(frame.len(), now_ms)?;
        let messages = decode_frame(frame, &Limits::default()).expect("valid frame");
        rates.check_messages(&messages, now_ms)
    }

    #[test]
    fn each_limit_names_itself_in_the_close_frame() {
        let limits = Limits {
            max_messages_per_second: 1,
            max_bytes_per_second: 100,
            max_frame_bytes: 100,
            max_awareness_per_second: 1,
            ..Limits::default()
        };
        let mut rates = ConnectionRates::new(&limits, 0);
        let error = rates.check_frame(101, 0).expect_err("over the byte burst");
        assert_eq!(
            error.close_frame(),
            (CLOSE_RATE_LIMITED, "byte rate limit exceeded".to_string())
        );

        let mut rates = ConnectionRates::new(&limits, 0);
        let frame = text_update_frame("a");
        // Message burst: two seconds at 1/s.
        assert_eq!(feed(&mut rates, &frame, 0), Ok(()));
        assert_eq!(feed(&mut rates, &frame, 0), Ok(()));
        let error = feed(&mut rates, &frame, 0).expect_err("third message");
        assert_eq!(
            error.close_frame(),
            (
                CLOSE_RATE_LIMITED,
                "message rate limit exceeded".to_string()
            )
        );
        assert!(matches!(
            error,
            ProtocolError::RateLimited {
                kind: RateKind::Message,
                limit_per_s: 1,
                ..
            }
        ));

        let limits = Limits {
            max_awareness_per_second: 1,
            ..Limits::default()
        };
        let mut rates = ConnectionRates::new(&limits, 0);
        assert_eq!(feed(&mut rates, &awareness_frame(1), 0), Ok(()));
        assert_eq!(feed(&mut rates, &awareness_frame(2), 0), Ok(()));
        let error = feed(&mut rates, &awareness_frame(3), 0).expect_err("third awareness");
        assert_eq!(
            error.close_frame(),
            (
                CLOSE_RATE_LIMITED,
                "awareness rate limit exceeded".to_string()
            )
        );
    }

    #[test]
    fn one_frame_of_the_largest_size_always_fits_the_byte_rate() {
        let limits = Limits {
            max_bytes_per_second: 10,
            max_frame_bytes: 1_000_000,
            ..Limits::default()
        };
        let mut rates = ConnectionRates::new(&limits, 0);
        assert_eq!(rates.check_frame(1_000_000, 0), Ok(()));
        assert!(rates.check_frame(1, 0).is_err());
    }

    #[test]
    fn control_frames_count_as_messages() {
        let limits = Limits {
            max_messages_per_second: 5,
            ..Limits::default()
        };
        let mut rates = ConnectionRates::new(&limits, 0);
        for _ in 0..10 {
            assert_eq!(rates.check_control_frame(4, 0), Ok(()));
        }
        assert!(rates.check_control_frame(4, 0).is_err());
    }

    /// Ten virtual minutes of a busy editor session against the default limits: typing at
    /// 50 updates/s, a cursor update with every fifth keystroke, a presence renewal every 15 s, a
    /// 5 MB paste every minute, and a three-second drag selection at 60 Hz every 20 s.
    #[test]
    fn a_busy_editor_session_never_trips_the_default_limits() {
        let mut rates = ConnectionRates::new(&Limits::default(), 0);
        let keystroke = text_update_frame("x");
        let paste = text_update_frame(&"p".repeat(5_000_000));
        let mut clock = 0;
        for now_ms in 0..600_000u64 {
            let mut frames = Vec::new();
            if now_ms % 20 == 0 {
                frames.push(keystroke.clone());
                if now_ms % 100 == 0 {
                    frames.push(awareness_frame(clock));
                }
            }
            if now_ms % 15_000 == 0 {
                frames.push(awareness_frame(clock));
            }
            if now_ms % 60_000 == 30_000 {
                frames.push(paste.clone());
            }
            if now_ms % 20_000 < 3_000 && now_ms % 16 == 0 {
                frames.push(awareness_frame(clock));
            }
            for frame in frames {
                clock += 1;
                assert_eq!(feed(&mut rates, &frame, now_ms), Ok(()), "at {now_ms} ms");
            }
        }
    }
}
