//! The API's per-client token buckets (`rate_limit_per_minute`,
//! `rate_limit_burst`): pure code with `now` passed in.
//!
//! A bucket holds up to `burst` tokens and refills at `per_minute / 60`
//! tokens a second; a request takes one. Buckets that have refilled are
//! forgotten, and the table never holds more than [`MAX_BUCKETS`]: past
//! that, clients not yet in it are refused as if their bucket were empty
//! (a flood of addresses does not grow memory; clients already known go on).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Clients whose buckets are remembered.
pub const MAX_BUCKETS: usize = 1 << 16;

/// What the limiter decided, with the figures for the `X-RateLimit-*`
/// headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The request may go on.
    pub allowed: bool,
    /// `X-RateLimit-Limit`: requests per minute.
    pub limit: u32,
    /// `X-RateLimit-Remaining`: whole tokens left after this request.
    pub remaining: u32,
    /// Until the bucket is full again (`X-RateLimit-Reset` is now + this).
    pub reset: Duration,
    /// Until the next token, when refused (`Retry-After`).
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every client (see the module docs).
#[derive(Debug)]
pub struct Limiter {
    per_minute: u32,
    burst: u32,
    buckets: HashMap<IpAddr, Bucket>,
}

impl Limiter {
    /// A limiter for `per_minute` requests with bursts of `burst`
    /// (`per_minute == 0`: no limit).
    pub fn new(per_minute: u32, burst: u32) -> Limiter {
        Limiter {
            per_minute,
            burst: burst.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes new figures (a reload); the buckets carry over, none holding
    /// more than the new `burst`.
    pub fn configure(&mut self, per_minute: u32, burst: u32) {
        self.per_minute = per_minute;
        self.burst = burst.max(1);
    }

    fn rate(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }

    fn refilled(&self, b: Bucket, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        (b.tokens + dt * self.rate()).min(f64::from(self.burst))
    }

    fn verdict(&self, allowed: bool, tokens: f64) -> Verdict {
        let rate = self.rate();
        let missing = f64::from(self.burst) - tokens;
        let secs = |t: f64| Duration::from_secs_f64((t / rate).max(0.0).ceil());
        Verdict {
            allowed,
            limit: self.per_minute,
            remaining: tokens.floor().max(0.0) as u32,
            reset: secs(missing),
            retry_after: if allowed {
                Duration::ZERO
            } else {
                secs(1.0 - tokens)
            },
        }
    }

    /// A request from `client`: takes a token when `take` (health and
    /// metrics only look), and says whether it may go on.
    pub fn check(&mut self, client: IpAddr, now: Instant, take: bool) -> Verdict {
        if self.per_minute == 0 {
            return Verdict {
                allowed: true,
                limit: 0,
                remaining: 0,
                reset: Duration::ZERO,
                retry_after: Duration::ZERO,
            };
        }
        let full = Bucket {
            tokens: f64::from(self.burst),
            at: now,
        };
        if !self.buckets.contains_key(&client) && self.buckets.len() >= MAX_BUCKETS {
            self.sweep(now);
            if self.buckets.len() >= MAX_BUCKETS && take {
                return self.verdict(false, 0.0);
            }
        }
        let tokens = self
            .buckets
            .get(&client)
            .map_or(full.tokens, |b| self.refilled(*b, now));
        if !take {
            return self.verdict(true, tokens);
        }
        if tokens < 1.0 {
            self.buckets.insert(client, Bucket { tokens, at: now });
            return self.verdict(false, tokens);
        }
        let left = tokens - 1.0;
        self.buckets.insert(
            client,
            Bucket {
                tokens: left,
                at: now,
            },
        );
        self.verdict(true, left)
    }

    /// Forgets the buckets that have refilled.
    pub fn sweep(&mut self, now: Instant) {
        let burst = f64::from(self.burst);
        let rate = self.rate();
        self.buckets.retain(|_, b| {
            let dt = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens + dt * rate < burst
        });
    }

    /// Clients remembered now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn a_burst_is_allowed_then_refused_until_a_token_refills() {
        let mut l = Limiter::new(60, 10);
        let t0 = Instant::now();
        for i in 0..10 {
            let v = l.check(A, t0, true);
            assert!(v.allowed, "request {i}");
            assert_eq!(v.remaining, 9 - i);
        }
        let v = l.check(A, t0, true);
        assert!(!v.allowed);
        assert_eq!(v.retry_after, Duration::from_secs(1));
        assert_eq!(v.reset, Duration::from_secs(10));
        assert!(
            l.check(B, t0, true).allowed,
            "another client has its own bucket"
        );
        // One token a second at 60 per minute.
        assert!(l.check(A, t0 + Duration::from_secs(1), true).allowed);
        assert!(!l.check(A, t0 + Duration::from_secs(1), true).allowed);
        // Looking does not take.
        let v = l.check(A, t0 + Duration::from_secs(3), false);
        assert!(v.allowed);
        assert_eq!(v.remaining, 2);
    }

    #[test]
    fn refilled_buckets_are_forgotten_and_the_table_is_bounded() {
        let mut l = Limiter::new(60, 2);
        let t0 = Instant::now();
        for i in 0..MAX_BUCKETS as u32 {
            l.check(IpAddr::V4(i.into()), t0, true);
        }
        assert_eq!(l.len(), MAX_BUCKETS);
        // A new client while the table is full of recent ones: refused.
        assert!(!l.check(IpAddr::V4(u32::MAX.into()), t0, true).allowed);
        // Two seconds later every bucket has refilled: forgotten.
        let later = t0 + Duration::from_secs(2);
        assert!(l.check(IpAddr::V4(u32::MAX.into()), later, true).allowed);
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn zero_per_minute_is_no_limit() {
        let mut l = Limiter::new(0, 10);
        let now = Instant::now();
        assert!((0..1000).all(|_| l.check(A, now, true).allowed));
        assert!(l.is_empty());
    }
}
