//! Per-connection message rate: a token bucket checked by the session's reader for every data
//! frame, before the frame is processed. A frame over the rate is dropped unprocessed (read only
//! for its `id`); a frame with an `id` is answered `rate_limited` with that id, like any frame
//! with an `id`; without one the client hears about it in a `rate_limited` error frame at most
//! once per [`RATE_NOTICE_INTERVAL`] (so the answers cannot become a flood of their own), and a
//! client that stays over the rate for [`RATE_CLOSE_AFTER`] is closed with 4029.
//!
//! The bucket is owned by the reader task: no lock, no atomic, one clock read per frame.

use std::time::Duration;

use tokio::time::Instant;

use serde_json::value::RawValue;

use crate::metrics::Metrics;
use crate::protocol::{self, ErrorCode, FrameError};

/// Default `--rate-limit`, frames per second per connection. A person chatting sends a few per
/// second at most; a client also sends heartbeats and latency reports. 50/s is an order of
/// magnitude above that.
pub const RATE_LIMIT: f64 = 50.0;
/// Default `--rate-burst`: frames a connection may send at once after being quiet, e.g. a client
/// flushing what it queued while offline.
pub const RATE_BURST: u32 = 100;
/// At most one `rate_limited` error frame per this long per connection.
pub const RATE_NOTICE_INTERVAL: Duration = Duration::from_secs(1);
/// A connection whose frames keep being dropped for this long is closed with 4029. "Keep being"
/// means no second passes without a drop ([`RATE_STREAK_GAP`]): a client that bursts, gets told,
/// and slows down is never closed; one that ignores the notices for 5 s is.
pub const RATE_CLOSE_AFTER: Duration = Duration::from_secs(5);
/// A second without a dropped frame ends a streak of excess.
pub const RATE_STREAK_GAP: Duration = Duration::from_secs(1);

/// A connection's allowed rate; `per_second` 0 turns the limit off (`Default`: off).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
    pub close_after: Duration,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit { per_second: 0.0, ..Self::recommended() }
    }
}

impl RateLimit {
    /// `wsctl serve`'s defaults: 50/s, burst 100, closed after 5 s of sustained excess.
    pub fn recommended() -> Self {
        RateLimit { per_second: RATE_LIMIT, burst: RATE_BURST, close_after: RATE_CLOSE_AFTER }
    }

    /// A fresh bucket (full), or None when the limit is off.
    pub fn limiter(&self, now: Instant) -> Option<Limiter> {
        (self.per_second > 0.0).then(|| Limiter {
            rate: self.per_second,
            burst: f64::from(self.burst.max(1)),
            close_after: self.close_after,
            tokens: f64::from(self.burst.max(1)),
            last: now,
            streak: None,
            last_notice: None,
        })
    }
}

/// What to do with one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Process it.
    Allow,
    /// Drop it; `notify`: send the `rate_limited` error frame now.
    Drop { notify: bool },
    /// The client stayed over the rate: close with 4029.
    Close,
}

/// One connection's bucket.
#[derive(Debug)]
pub struct Limiter {
    rate: f64,
    burst: f64,
    close_after: Duration,
    tokens: f64,
    last: Instant,
    /// (first drop, latest drop) of the current streak of excess.
    streak: Option<(Instant, Instant)>,
    last_notice: Option<Instant>,
}

impl Limiter {
    /// Takes a token for one frame arriving at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        let start = match self.streak {
            Some((start, latest)) if now.saturating_duration_since(latest) < RATE_STREAK_GAP => start,
            _ => now,
        };
        self.streak = Some((start, now));
        if now.saturating_duration_since(start) >= self.close_after {
            return Verdict::Close;
        }
        let notify = self.last_notice.is_none_or(|t| now.saturating_duration_since(t) >= RATE_NOTICE_INTERVAL);
        if notify {
            self.last_notice = Some(now);
        }
        Verdict::Drop { notify }
    }
}

/// Checks one data frame (`bytes`, as received) against the bucket: counts a dropped frame, and
/// hands `answer` the `rate_limited` error with the frame's `id` when the frame has one (every
/// frame with an `id` gets an answer), or without an id when an id-less notice is due (at most
/// one per [`RATE_NOTICE_INTERVAL`]).
///
/// A dropped frame is only read for its `id`, by the frame parser itself
/// ([`protocol::parse_client_frame`]): an `"id":` inside a string is not an id, and a frame that
/// does not parse has none. That is no more work than an allowed frame costs, and the answers
/// go through the connection's bounded outbox like any other: a client that floods with ids and
/// does not read its answers is closed as a slow consumer (4008).
pub(crate) fn gate(limiter: &mut Limiter, metrics: &Metrics, bytes: &[u8], answer: impl FnOnce(Option<&RawValue>, &FrameError)) -> Verdict {
    let v = limiter.check(Instant::now());
    if let Verdict::Drop { notify: due } = v {
        metrics.rate_limited_frames.inc();
        let id = protocol::parse_client_frame(bytes).ok().and_then(|f| f.id);
        if id.is_some() || due {
            answer(id, &FrameError::new(ErrorCode::RateLimited, "too many frames: this one and others were dropped, slow down"));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_normal_chat_user_is_never_limited() {
        let t0 = Instant::now();
        let mut l = RateLimit::recommended().limiter(t0).unwrap();
        // 10 frames a second for a minute, plus a burst of 90 at the start.
        for i in 0..90 {
            assert_eq!(l.check(t0 + ms(i)), Verdict::Allow);
        }
        for i in 0..600 {
            assert_eq!(l.check(t0 + ms(100 + i * 100)), Verdict::Allow, "frame {i}");
        }
    }

    #[test]
    fn burst_then_drops_with_one_notice_per_second() {
        let t0 = Instant::now();
        let mut l = RateLimit { per_second: 10.0, burst: 5, close_after: Duration::from_secs(5) }.limiter(t0).unwrap();
        for _ in 0..5 {
            assert_eq!(l.check(t0), Verdict::Allow);
        }
        assert_eq!(l.check(t0), Verdict::Drop { notify: true });
        assert_eq!(l.check(t0 + ms(50)), Verdict::Drop { notify: false });
        // 100 ms refills one token.
        assert_eq!(l.check(t0 + ms(160)), Verdict::Allow);
        assert_eq!(l.check(t0 + ms(170)), Verdict::Drop { notify: false });
        // Refilled to the burst again; the next drop is a second after the first notice.
        for _ in 0..5 {
            assert_eq!(l.check(t0 + ms(1000)), Verdict::Allow);
        }
        assert_eq!(l.check(t0 + ms(1001)), Verdict::Drop { notify: true });
    }

    #[test]
    fn sustained_excess_closes_and_a_pause_resets_the_streak() {
        let t0 = Instant::now();
        let cfg = RateLimit { per_second: 10.0, burst: 1, close_after: Duration::from_secs(3) };
        let mut l = cfg.limiter(t0).unwrap();
        // 100 frames/s: over the rate all the time.
        let mut verdict = Verdict::Allow;
        let mut at = 0;
        while verdict != Verdict::Close {
            verdict = l.check(t0 + ms(at));
            at += 10;
            assert!(at <= 3100, "not closed after 3 s of excess");
        }
        assert!(at >= 3000, "closed after {at} ms, before the 3 s streak");
        // Excess, a 1.5 s pause, excess again: the streak starts over.
        let mut l = cfg.limiter(t0).unwrap();
        for i in 0..200 {
            assert_ne!(l.check(t0 + ms(i * 10)), Verdict::Close);
        }
        for i in 0..200 {
            assert_ne!(l.check(t0 + ms(3500 + i * 10)), Verdict::Close);
        }
    }

    #[test]
    fn zero_turns_it_off() {
        assert!(RateLimit::default().limiter(Instant::now()).is_none());
    }
}
