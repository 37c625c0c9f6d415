//! The circuit breaker in front of a failing webhook receiver: pure code,
//! the clock passed in.
//!
//! After [`THRESHOLD`] failures in a row it opens: nothing is sent until
//! `open_until`, then one probe at a time. A failed probe doubles the wait
//! (up to [`PROBE_MAX`]); any success closes it. Answers to requests sent
//! before it opened (up to 64 are in flight) count as failures but do not
//! widen the wait: only a probe's answer says anything about the receiver
//! since the breaker opened.

use std::time::{Duration, Instant};

/// Consecutive failures after which the breaker opens.
pub const THRESHOLD: u32 = 10;
/// First wait before a probe.
pub const PROBE_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between probes.
pub const PROBE_MAX: Duration = Duration::from_secs(300);

/// What a failed answer did to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Still closed, or open and unchanged.
    Counted,
    /// It opened now; the first probe goes at `PROBE_FIRST`.
    Opened,
    /// The probe failed; the next one waits this long.
    Widened(Duration),
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Breaker {
    failures: u32,
    /// Open: no attempt until then, and then one probe at a time.
    open_until: Option<Instant>,
    probe_wait: Duration,
    probing: bool,
}

impl Breaker {
    /// True while open.
    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }

    /// How many deliveries may start at `now` (`usize::MAX`: as many as
    /// the caller allows), and until when nothing may, if held back.
    pub fn allowance(&self, now: Instant) -> (Option<Instant>, usize) {
        match self.open_until {
            Some(t) if now < t => (Some(t), 0),
            Some(_) if self.probing => (None, 0),
            Some(_) => (None, 1),
            None => (None, usize::MAX),
        }
    }

    /// The one delivery let through while open has started.
    pub fn probe_started(&mut self) {
        self.probing = true;
    }

    /// The probe let through was not sent after all: the next may go.
    pub fn probe_abandoned(&mut self) {
        self.probing = false;
    }

    /// While open with no probe out: when the next probe may go (perhaps
    /// already past). `None` while closed, or while a probe is out (its
    /// answer decides).
    pub fn next_probe(&self) -> Option<Instant> {
        self.open_until.filter(|_| !self.probing)
    }

    /// A failed answer at `now`; `probe`: it answered the probe.
    pub fn failed(&mut self, now: Instant, probe: bool) -> Failed {
        self.failures = self.failures.saturating_add(1);
        if probe {
            self.probing = false;
        }
        match self.open_until {
            Some(_) if probe => {
                self.probe_wait = (self.probe_wait * 2).clamp(PROBE_FIRST, PROBE_MAX);
                self.open_until = Some(now + self.probe_wait);
                Failed::Widened(self.probe_wait)
            }
            Some(_) => Failed::Counted,
            None if self.failures >= THRESHOLD => {
                self.probe_wait = PROBE_FIRST;
                self.open_until = Some(now + PROBE_FIRST);
                Failed::Opened
            }
            None => Failed::Counted,
        }
    }

    /// A successful answer; true when it closed an open breaker.
    pub fn succeeded(&mut self, probe: bool) -> bool {
        if probe {
            self.probing = false;
        }
        self.failures = 0;
        self.open_until.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(now: Instant) -> Breaker {
        let mut b = Breaker::default();
        for i in 1..THRESHOLD {
            assert_eq!(b.failed(now, false), Failed::Counted, "failure {i}");
            assert_eq!(b.allowance(now), (None, usize::MAX));
        }
        assert_eq!(b.failed(now, false), Failed::Opened);
        b
    }

    #[test]
    fn answers_in_flight_when_it_opens_do_not_widen_the_wait() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        // The other 63 deliveries in flight when the receiver went away.
        for _ in 0..63 {
            assert_eq!(b.failed(t0, false), Failed::Counted);
        }
        assert_eq!(b.allowance(t0), (Some(t0 + PROBE_FIRST), 0));
        // The receiver is back a moment later: the first probe closes it.
        let t1 = t0 + PROBE_FIRST;
        assert_eq!(b.allowance(t1), (None, 1));
        b.probe_started();
        assert_eq!(b.allowance(t1), (None, 0), "one probe at a time");
        assert!(b.succeeded(true));
        assert_eq!(b.allowance(t1), (None, usize::MAX));
    }

    #[test]
    fn failed_probes_back_off_up_to_the_maximum_and_a_success_closes() {
        let mut now = Instant::now();
        let mut b = opened(now);
        let mut wait = PROBE_FIRST;
        for _ in 0..12 {
            now += wait;
            assert_eq!(b.allowance(now), (None, 1));
            b.probe_started();
            // A late answer to an old request while the probe is out
            // neither widens the wait nor lets a second probe go.
            assert_eq!(b.failed(now, false), Failed::Counted);
            assert_eq!(b.allowance(now), (None, 0));
            wait = (wait * 2).min(PROBE_MAX);
            assert_eq!(b.failed(now, true), Failed::Widened(wait));
            assert_eq!(b.allowance(now), (Some(now + wait), 0));
        }
        assert_eq!(wait, PROBE_MAX);
        // Any success means the receiver answers: closed, counts reset.
        assert!(b.succeeded(false));
        assert!(!b.is_open());
        assert_eq!(b.failed(now, false), Failed::Counted);
    }
}
