//! The engine's vocabulary: its settings, keys, orders, outcomes and
//! events.

use std::time::{Duration, Instant};

#[cfg(doc)]
use super::Engine;
use crate::delivery::retry::{GaveUp, Verdict};
use crate::delivery::webhook::Attempt;

/// The engine's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// `webhook_retries`: attempts after the first.
    pub retries: u32,
    /// `webhook_retry_delay`: the first backoff.
    pub retry_delay: Duration,
    /// Deliveries in flight at once.
    pub max_in_flight: usize,
}

/// One delivery: a recipient of a message, or a re-driven dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub(super) u64);

/// A message handed to [`Engine::handle_accepted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKey(pub(super) u64);

/// What a delivery delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// Recipient `index` of `message`.
    Recipient { message: MessageKey, index: usize },
    /// A dead letter re-driven by `gomail queue retry`.
    Redrive,
}

/// A delivery's state carried over from an earlier run (the spool's
/// progress records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// Delivered already: not posted again.
    Delivered,
    /// Dead-lettered already.
    Dead,
    /// Waiting for attempt `attempts + 1`, due at `due`.
    Waiting {
        attempts: u32,
        due: Instant,
        denied_since: Option<Instant>,
    },
}

/// An attempt to make now ([`Engine::poll_attempt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub key: Key,
    pub webhook_id: String,
    pub subject: Subject,
    /// The one delivery an open breaker lets through.
    pub probe: bool,
}

/// What one answer decided for its delivery ([`Engine::handle_answer`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 2xx.
    Delivered { attempts: u32 },
    /// Tried again after `wait` (attempt `attempt` failed).
    Retry { wait: Duration, attempt: u32 },
    /// It goes to the dead-letter folder: the driver writes it, then calls
    /// [`Engine::handle_dead_letter`].
    DeadLetter {
        why: GaveUp,
        /// The latest attempts (`engine::LOG_MAX`), oldest first.
        log: Vec<Attempt>,
        attempts: u32,
    },
    /// `410 Gone`: delivery is disabled; the delivery waits at the front.
    Gone,
    /// The key is not (or no longer) a delivery in flight.
    Unknown,
}

/// What the driver acts on, in order ([`Engine::poll_event`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Every delivery of the message is over; `dead`: one was
    /// dead-lettered. The message goes on to the store and its done record.
    Finished { message: MessageKey, dead: bool },
    /// A delivery's progress changed: the driver persists it, so a
    /// restart resumes from here. Sent for retries, and for the deliveries
    /// of a message with several recipients as each ends (a message's own
    /// done record covers the rest).
    Progress {
        key: Key,
        message: Option<MessageKey>,
        webhook_id: String,
        attempts: u32,
        state: Restored,
    },
    /// The breaker opened after this many failures in a row.
    BreakerOpened { failures: u32 },
    /// A probe failed; the next one waits this long.
    BreakerWidened { wait: Duration, status: Option<u16> },
    /// The receiver answers again.
    BreakerClosed,
    /// The receiver answered `410 Gone` for the first time: delivery is
    /// disabled until restart, every message is kept.
    Disabled,
}

/// The verdict on a sync or hybrid delivery's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inline {
    /// `410 Gone`: delivery is disabled; the message is kept for later.
    Gone,
    /// What the answer means (`retry::classify`).
    Answered(Verdict),
}
