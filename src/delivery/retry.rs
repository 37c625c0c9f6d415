//! When to try a webhook delivery again, and when to give up: pure code,
//! the clock passed in.
//!
//! [`classify`] says what one attempt's outcome means, [`next`] decides for
//! the message with its history, and [`delay`] gives the wait:
//!
//! | Outcome | [`Verdict`] | The message |
//! |---|---|---|
//! | 2xx | `Delivered` | done |
//! | 408, 429, 5xx; connect error, timeout, broken connection | `Retry` | retried until `webhook_retries` are used up |
//! | 401, 403, 404 | `Denied` | retried the same way, but dead-lettered at the first such answer [`DENIED_GRACE`] or more after its first |
//! | TLS failure (certificate, server name, handshake) | `Tls` | dead letter at once |
//! | any other 4xx | `Permanent` | dead letter at once |
//!
//! (`410 Gone` is handled before: the outbox disables delivery and keeps
//! every message.)
//!
//! Attempt *n* (1-based) after a failure waits `webhook_retry_delay × 2^(n-1)`,
//! capped at 6 hours, with ±20 % jitter so a receiver coming back is not hit
//! by every shard at once; a `Retry-After` from the receiver wins when it
//! asks for longer. With the defaults (5 s, 3 retries) a message is retried
//! for about half a minute; `webhook_retries: 20` with `webhook_retry_delay:
//! 1m` keeps trying for days, so a receiver can be down for a night.

use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};

use super::webhook::Failure;

/// The longest wait between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(6 * 3600);

/// How long a message may keep being answered 401, 403 or 404 before it
/// is dead-lettered, counted from its first such answer.
///
/// A receiver being deployed (its route not there yet: 404) or rotating
/// `webhook_secret` or `bearer_token` (401, 403) answers so for minutes,
/// and such messages must not be lost to it; a receiver that still
/// answers so after an hour is misconfigured, and its messages go to the
/// dead-letter folder for `gomail queue retry` once it is fixed. With
/// short schedules (the default: 3 retries over about half a minute) the
/// retries run out first.
pub const DENIED_GRACE: Duration = Duration::from_secs(3600);

/// What an attempt's outcome means for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: delivered.
    Delivered,
    /// 408, 429, 5xx, timeout, connection or protocol error: try again later.
    Retry,
    /// 401, 403, 404: the receiver does not take gomail's requests right
    /// now; retried for at most [`DENIED_GRACE`].
    Denied,
    /// The TLS handshake failed (an untrusted certificate, one not valid
    /// for the host, a refused handshake): a misconfiguration that no
    /// retry fixes; dead letter.
    Tls,
    /// Any other 4xx: the receiver refuses this message; dead letter.
    Permanent,
}

impl Verdict {
    /// Whether the answer says the receiver is unusable right now, which
    /// the circuit breaker counts: `Retry`, `Denied` (an endpoint answering
    /// 401 to everyone is as unusable as one answering 503) and `Tls`. A
    /// 2xx or another 4xx means it works (it refused one message).
    pub fn receiver_failing(self) -> bool {
        matches!(self, Verdict::Retry | Verdict::Denied | Verdict::Tls)
    }
}

/// Classifies an attempt: its HTTP status, or the failure that left it
/// without one.
pub fn classify(status: Option<u16>, failure: Option<Failure>) -> Verdict {
    match (status, failure) {
        (Some(200..=299), _) => Verdict::Delivered,
        (Some(401 | 403 | 404), _) => Verdict::Denied,
        (Some(408 | 429), _) => Verdict::Retry,
        (Some(400..=499), _) => Verdict::Permanent,
        (Some(_), _) => Verdict::Retry,
        (None, Some(Failure::Tls)) => Verdict::Tls,
        (None, _) => Verdict::Retry,
    }
}

/// What becomes of a message after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// It was delivered.
    Delivered,
    /// It is tried again after [`delay`].
    Retry,
    /// It goes to the dead-letter folder.
    DeadLetter(GaveUp),
}

/// Why a message is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// The receiver refused it ([`Verdict::Permanent`]).
    Refused,
    /// TLS failed ([`Verdict::Tls`]).
    Tls,
    /// It was answered 401, 403 or 404 for [`DENIED_GRACE`].
    DeniedTooLong,
    /// `webhook_retries` are used up.
    RetriesUsedUp,
}

/// Decides for a message after its attempt number `attempts` (this one
/// included) got `verdict` at `now`, with `retries` allowed after the
/// first attempt. `denied_since` is the message's own record of its first
/// 401/403/404 answer: set here at the first, kept after (a 5xx in between
/// does not reset it), so the grace runs from the first.
pub fn next(
    verdict: Verdict,
    attempts: u32,
    retries: u32,
    denied_since: &mut Option<Instant>,
    now: Instant,
) -> Next {
    if verdict == Verdict::Denied {
        let since = *denied_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= DENIED_GRACE {
            return Next::DeadLetter(GaveUp::DeniedTooLong);
        }
    }
    match verdict {
        Verdict::Delivered => Next::Delivered,
        Verdict::Permanent => Next::DeadLetter(GaveUp::Refused),
        Verdict::Tls => Next::DeadLetter(GaveUp::Tls),
        Verdict::Retry | Verdict::Denied if attempts > retries => {
            Next::DeadLetter(GaveUp::RetriesUsedUp)
        }
        Verdict::Retry | Verdict::Denied => Next::Retry,
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

/// Parses `Retry-After` (RFC 9110 section 10.2.3): a number of seconds, or
/// an HTTP-date, turned into the wait from `now` (a date already past: no
/// wait). `None` for anything else, which is then ignored.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = http_date(value)?;
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// An HTTP-date (RFC 9110 section 5.6.7): the IMF-fixdate receivers send
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, which RFC 2822 parsing covers), and
/// the two obsolete forms every recipient must still accept, RFC 850
/// (`Wednesday, 21-Oct-15 07:28:00 GMT`) and asctime (`Wed Oct 21 07:28:00
/// 2015`).
fn http_date(value: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc2822(value) {
        return Some(at.with_timezone(&Utc));
    }
    ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
        .iter()
        .find_map(|form| NaiveDateTime::parse_from_str(value, form).ok())
        .map(|at| at.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_class() {
        let answered = |s| classify(Some(s), None);
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(answered(s), Verdict::Delivered, "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(answered(s), Verdict::Retry, "{s}");
        }
        for s in [401, 403, 404] {
            assert_eq!(answered(s), Verdict::Denied, "{s}");
        }
        for s in [400, 402, 405, 409, 410, 413, 415, 422, 451, 499] {
            assert_eq!(answered(s), Verdict::Permanent, "{s}");
        }
        let failed = |f| classify(None, Some(f));
        assert_eq!(failed(Failure::Connect), Verdict::Retry);
        assert_eq!(failed(Failure::Timeout), Verdict::Retry);
        assert_eq!(failed(Failure::Protocol), Verdict::Retry);
        assert_eq!(failed(Failure::Tls), Verdict::Tls);
        assert_eq!(classify(None, None), Verdict::Retry);
    }

    #[test]
    fn the_breaker_counts_what_makes_the_receiver_unusable() {
        assert!(Verdict::Retry.receiver_failing());
        assert!(Verdict::Denied.receiver_failing());
        assert!(Verdict::Tls.receiver_failing());
        assert!(!Verdict::Delivered.receiver_failing());
        assert!(!Verdict::Permanent.receiver_failing());
    }

    #[test]
    fn delivered_refused_and_tls_are_decided_at_once() {
        let now = Instant::now();
        let mut since = None;
        assert_eq!(
            next(Verdict::Delivered, 1, 3, &mut since, now),
            Next::Delivered
        );
        assert_eq!(
            next(Verdict::Permanent, 1, 3, &mut since, now),
            Next::DeadLetter(GaveUp::Refused)
        );
        assert_eq!(
            next(Verdict::Tls, 1, 3, &mut since, now),
            Next::DeadLetter(GaveUp::Tls)
        );
        assert_eq!(since, None, "only a 401/403/404 starts the grace");
    }

    #[test]
    fn retries_are_used_up_after_the_configured_number() {
        let now = Instant::now();
        let mut since = None;
        for attempts in 1..=3 {
            assert_eq!(
                next(Verdict::Retry, attempts, 3, &mut since, now),
                Next::Retry
            );
            assert_eq!(
                next(Verdict::Denied, attempts, 3, &mut since, now),
                Next::Retry
            );
        }
        assert_eq!(
            next(Verdict::Retry, 4, 3, &mut since, now),
            Next::DeadLetter(GaveUp::RetriesUsedUp)
        );
        assert_eq!(
            next(Verdict::Denied, 4, 3, &mut since, now),
            Next::DeadLetter(GaveUp::RetriesUsedUp)
        );
        assert_eq!(
            next(Verdict::Retry, 1, 0, &mut since, now),
            Next::DeadLetter(GaveUp::RetriesUsedUp)
        );
    }

    #[test]
    fn denied_answers_are_retried_for_the_grace_from_the_first_one() {
        let t0 = Instant::now();
        let mut since = None;
        // A secret rotation: 401 for a few minutes, retried, then delivered.
        assert_eq!(next(Verdict::Denied, 1, 100, &mut since, t0), Next::Retry);
        assert_eq!(since, Some(t0));
        let t1 = t0 + Duration::from_secs(120);
        assert_eq!(next(Verdict::Denied, 2, 100, &mut since, t1), Next::Retry);
        assert_eq!(since, Some(t0), "the grace runs from the first 401");
        // A 5xx in between neither resets nor ends the grace.
        let t2 = t0 + DENIED_GRACE + Duration::from_secs(1);
        assert_eq!(next(Verdict::Retry, 3, 100, &mut since, t2), Next::Retry);
        assert_eq!(since, Some(t0));
        // The next 404, an hour or more after the first 401: dead letter.
        let just_before = t0 + DENIED_GRACE - Duration::from_millis(1);
        assert_eq!(
            next(Verdict::Denied, 3, 100, &mut since.clone(), just_before),
            Next::Retry
        );
        assert_eq!(
            next(Verdict::Denied, 4, 100, &mut since, t0 + DENIED_GRACE),
            Next::DeadLetter(GaveUp::DeniedTooLong)
        );
        assert_eq!(
            next(Verdict::Denied, 4, 100, &mut since, t2),
            Next::DeadLetter(GaveUp::DeniedTooLong)
        );
        // A 2xx after all is a delivery, whatever came before.
        assert_eq!(
            next(Verdict::Delivered, 5, 100, &mut since, t2),
            Next::Delivered
        );
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
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date_from_now() {
        use chrono::TimeZone;
        let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 27, 30).unwrap();
        let parse = |v| parse_retry_after(v, now);
        assert_eq!(parse(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse("0"), Some(Duration::ZERO));
        assert_eq!(
            parse("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse("Wed, 21 Oct 2015 09:27:30 GMT"),
            Some(Duration::from_secs(2 * 3600))
        );
        // The obsolete forms.
        assert_eq!(
            parse("Wednesday, 21-Oct-15 07:28:00 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse("Wed Oct 21 07:28:00 2015"),
            Some(Duration::from_secs(30))
        );
        // asctime pads a one-digit day with a space.
        assert_eq!(
            parse("Sun Nov  1 07:27:30 2015"),
            Some(Duration::from_secs(11 * 86400))
        );
        // A date already past: no wait (the backoff applies).
        assert_eq!(parse("Wed, 21 Oct 2015 07:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse("soon"), None);
        assert_eq!(parse("-5"), None);
        assert_eq!(parse("Wed, 32 Oct 2015 07:28:00 GMT"), None);
    }
}
