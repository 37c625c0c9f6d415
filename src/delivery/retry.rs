//! When to try a webhook delivery again: a pure schedule.
//!
//! Attempt *n* (1-based) after a failure waits `webhook_retry_delay × 2^(n-1)`,
//! capped at 6 hours, with ±20 % jitter so a receiver coming back is not hit
//! by every shard at once; a `Retry-After` from the receiver wins when it
//! asks for longer. With the defaults (5 s, 3 retries) a message is retried
//! for about half a minute; `webhook_retries: 20` with `webhook_retry_delay:
//! 1m` keeps trying for days, so a receiver can be down for a night.

use std::time::Duration;

/// The longest wait between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(6 * 3600);

/// What an attempt's outcome means for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: delivered.
    Delivered,
    /// 408, 429, 5xx, timeout, connection error: try again later.
    Retry,
    /// Any other 4xx: the receiver refuses this message; dead letter.
    Permanent,
}

/// Classifies an HTTP status (`None`: no answer — timeout or connection error).
pub fn classify(status: Option<u16>) -> Verdict {
    match status {
        Some(200..=299) => Verdict::Delivered,
        Some(408) | Some(429) | None => Verdict::Retry,
        Some(400..=499) => Verdict::Permanent,
        Some(_) => Verdict::Retry,
    }
}

/// The wait before retry number `retry` (1 = first retry). `jitter` is a
/// number in [0, 1) (random in production, fixed in tests).
pub fn delay(base: Duration, retry: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let exp = base
        .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
        .min(MAX_DELAY);
    let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
    let d = exp.mul_f64(factor).min(MAX_DELAY);
    match retry_after {
        Some(ra) if ra > d => ra.min(MAX_DELAY),
        _ => d,
    }
}

/// Parses a `Retry-After` header given in seconds (HTTP dates are ignored).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_the_issue_defines() {
        assert_eq!(classify(Some(200)), Verdict::Delivered);
        assert_eq!(classify(Some(204)), Verdict::Delivered);
        assert_eq!(classify(Some(500)), Verdict::Retry);
        assert_eq!(classify(Some(503)), Verdict::Retry);
        assert_eq!(classify(Some(408)), Verdict::Retry);
        assert_eq!(classify(Some(429)), Verdict::Retry);
        assert_eq!(classify(None), Verdict::Retry);
        assert_eq!(classify(Some(400)), Verdict::Permanent);
        assert_eq!(classify(Some(422)), Verdict::Permanent);
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter_and_honours_retry_after() {
        let b = Duration::from_secs(5);
        assert_eq!(delay(b, 1, None, 0.5), Duration::from_secs(5));
        assert_eq!(delay(b, 2, None, 0.5), Duration::from_secs(10));
        assert_eq!(delay(b, 4, None, 0.5), Duration::from_secs(40));
        assert_eq!(delay(b, 1, None, 0.0), Duration::from_secs(4));
        assert_eq!(delay(b, 1, None, 1.0), Duration::from_secs(6));
        assert_eq!(delay(b, 40, None, 0.5), MAX_DELAY);
        assert_eq!(
            delay(b, 1, Some(Duration::from_secs(30)), 0.5),
            Duration::from_secs(30)
        );
        assert_eq!(
            delay(b, 3, Some(Duration::from_secs(1)), 0.5),
            Duration::from_secs(20)
        );
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
