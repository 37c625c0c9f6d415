//! The webhook delivery engine: every decision of delivery as pure code,
//! driven by the clock its caller passes in (the shape of `crate::smtp`'s
//! session and of quinn-proto). It holds no message bodies and does no I/O:
//! the driver in `server::outbox` reads bodies from the spool, posts them,
//! writes dead letters and sleeps until [`Engine::poll_timeout`].
//!
//! - [`Engine::handle_accepted`] takes a message with its recipients (one
//!   delivery each, webhook id `<queue id>.<n>` when there are several),
//!   resuming their [`Restored`] progress after a restart.
//! - [`Engine::poll_attempt`] says which delivery to attempt now: at most
//!   `max_in_flight` at once, none while delivery is disabled by a `410`,
//!   and one probe at a time while the circuit breaker is open.
//! - [`Engine::handle_answer`] takes the attempt's outcome and decides
//!   (`delivery::retry`): delivered, retried after a backoff, or dead-lettered.
//! - [`Engine::poll_event`] hands out what the driver acts on: a message
//!   whose deliveries are all over (to the store and its done record),
//!   progress to persist, and the breaker's changes to log.
//! - Sync and hybrid deliveries, where the SMTP client waits, ask
//!   [`Engine::inline_allowed`] and report to [`Engine::handle_inline_answer`]:
//!   they feed the same breaker and `410` handling as queued deliveries.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::breaker::{Breaker, Failed};
use super::retry::{self, GaveUp, Next, Verdict};
use super::webhook::Attempt;

mod api;

pub use api::{Config, Event, Inline, Key, MessageKey, Order, Outcome, Restored, Subject};

/// How many of a delivery's attempts are kept for its dead letter: the
/// latest ones (the count of all is kept too).
pub const LOG_MAX: usize = 10;

/// How long a dead letter that could not be written waits before its
/// delivery is tried again.
pub const DEAD_LETTER_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    Waiting(Instant),
    InFlight {
        probe: bool,
    },
    /// Its dead letter is being written.
    Burying,
}

#[derive(Debug)]
struct Delivery {
    webhook_id: String,
    subject: Subject,
    attempts: u32,
    log: VecDeque<Attempt>,
    denied_since: Option<Instant>,
    state: State,
}

impl Delivery {
    /// Counts an attempt and keeps it in the log (the latest [`LOG_MAX`]);
    /// returns the attempts made.
    fn record(&mut self, a: Attempt) -> u32 {
        self.attempts = self.attempts.saturating_add(1);
        if self.log.len() == LOG_MAX {
            self.log.pop_front();
        }
        self.log.push_back(a);
        self.attempts
    }
}

#[derive(Debug)]
struct Message {
    remaining: usize,
    dead: bool,
    /// More than one recipient: progress is recorded per delivery.
    shared: bool,
    /// Deliveries of a shared message that ended while none of its others
    /// waited for a retry: recorded only once one does (until then the
    /// message's own done record, which follows soon, covers them), so a
    /// message served at the first try costs no progress records.
    served: Vec<Event>,
    /// One of its deliveries has waited for a retry: ends are recorded
    /// as they come.
    waited: bool,
}

/// See the module docs.
#[derive(Debug)]
pub struct Engine {
    cfg: Config,
    deliveries: HashMap<Key, Delivery>,
    messages: HashMap<MessageKey, Message>,
    /// Due now, oldest first.
    ready: VecDeque<Key>,
    /// Waiting, by due time (then by arrival, so keys stay unique).
    later: BTreeMap<(Instant, u64), Key>,
    next: u64,
    in_flight: usize,
    burying: usize,
    breaker: Breaker,
    disabled: bool,
    events: VecDeque<Event>,
}

impl Engine {
    pub fn new(cfg: Config) -> Engine {
        Engine {
            cfg,
            deliveries: HashMap::new(),
            messages: HashMap::new(),
            ready: VecDeque::new(),
            later: BTreeMap::new(),
            next: 0,
            in_flight: 0,
            burying: 0,
            breaker: Breaker::default(),
            disabled: false,
            events: VecDeque::new(),
        }
    }

    fn fresh(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Takes an accepted (or recovered) message with `recipients`
    /// recipients: one delivery each, due now unless `restored` says
    /// otherwise for its webhook id. A message whose deliveries were all
    /// over before a restart is [`Event::Finished`] at once.
    pub fn handle_accepted(
        &mut self,
        queue_id: &str,
        recipients: usize,
        restored: impl Fn(&str) -> Option<Restored>,
        now: Instant,
    ) -> MessageKey {
        let n = recipients.max(1);
        let message = MessageKey(self.fresh());
        let mut m = Message {
            remaining: n,
            dead: false,
            shared: n > 1,
            served: Vec::new(),
            waited: false,
        };
        for index in 0..n {
            let webhook_id = if n == 1 {
                queue_id.to_string()
            } else {
                format!("{queue_id}.{index}")
            };
            let (attempts, denied_since, state) = match restored(&webhook_id) {
                Some(Restored::Delivered) => {
                    m.remaining -= 1;
                    continue;
                }
                Some(Restored::Dead) => {
                    m.remaining -= 1;
                    m.dead = true;
                    continue;
                }
                Some(Restored::Waiting {
                    attempts,
                    due,
                    denied_since,
                }) => {
                    // It waited in the last run: its siblings' ends are
                    // recorded as they come.
                    m.waited = true;
                    let state = if due > now {
                        State::Waiting(due)
                    } else {
                        State::Ready
                    };
                    (attempts, denied_since, state)
                }
                None => (0, None, State::Ready),
            };
            let key = Key(self.fresh());
            self.deliveries.insert(
                key,
                Delivery {
                    webhook_id,
                    subject: Subject::Recipient { message, index },
                    attempts,
                    log: VecDeque::new(),
                    denied_since,
                    state,
                },
            );
            self.schedule(key, state);
        }
        if m.remaining == 0 {
            self.events.push_back(Event::Finished {
                message,
                dead: m.dead,
            });
        } else {
            self.messages.insert(message, m);
        }
        message
    }

    /// Takes a dead letter to post again (`gomail queue retry`): it gets
    /// `webhook_retries` anew.
    pub fn handle_redrive(&mut self, webhook_id: String) -> Key {
        let key = Key(self.fresh());
        self.deliveries.insert(
            key,
            Delivery {
                webhook_id,
                subject: Subject::Redrive,
                attempts: 0,
                log: VecDeque::new(),
                denied_since: None,
                state: State::Ready,
            },
        );
        self.ready.push_back(key);
        key
    }

    /// Puts delivery `key` in the queue of retries, due at `due`.
    fn wait_until(&mut self, key: Key, due: Instant) {
        if let Some(d) = self.deliveries.get_mut(&key) {
            d.state = State::Waiting(due);
        }
        let n = self.fresh();
        self.later.insert((due, n), key);
    }

    fn schedule(&mut self, key: Key, state: State) {
        match state {
            State::Ready => self.ready.push_back(key),
            State::Waiting(due) => self.wait_until(key, due),
            State::InFlight { .. } | State::Burying => {}
        }
    }

    /// Moves the deliveries due by `now` to the ready queue.
    fn promote(&mut self, now: Instant) {
        while let Some(entry) = self.later.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            if let Some(d) = self.deliveries.get_mut(&key) {
                d.state = State::Ready;
                self.ready.push_back(key);
            }
        }
    }

    /// The next delivery to attempt at `now`, if any may start.
    pub fn poll_attempt(&mut self, now: Instant) -> Option<Order> {
        self.promote(now);
        if self.disabled || self.in_flight >= self.cfg.max_in_flight {
            return None;
        }
        let (_, allowed) = self.breaker.allowance(now);
        if allowed == 0 {
            return None;
        }
        let probe = allowed == 1;
        let key = self.ready.pop_front()?;
        let d = self.deliveries.get_mut(&key)?;
        d.state = State::InFlight { probe };
        if probe {
            self.breaker.probe_started();
        }
        self.in_flight += 1;
        Some(Order {
            key,
            webhook_id: d.webhook_id.clone(),
            subject: d.subject,
            probe,
        })
    }

    /// When the driver must call [`Engine::poll_attempt`] again if nothing
    /// else happens: the next retry due, or the breaker's next probe.
    /// `None`: only a new message or an answer changes anything.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.disabled {
            return None;
        }
        if self.in_flight >= self.cfg.max_in_flight {
            // Full: only an answer lets anything start.
            return None;
        }
        let next_due = self.later.first_key_value().map(|((due, _), _)| *due);
        if !self.breaker.is_open() {
            return next_due;
        }
        // Open: the probe goes at `t`, at once if a delivery is ready,
        // else when the next retry is due. A probe out: its answer wakes.
        let t = self.breaker.next_probe()?;
        if !self.ready.is_empty() {
            return Some(t);
        }
        next_due.map(|d| d.max(t))
    }

    /// The next thing the driver acts on.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Notes an answer for the breaker and `410`: true when it is `410`.
    fn note(&mut self, status: Option<u16>, verdict: Verdict, probe: bool, now: Instant) -> bool {
        if status == Some(410) {
            if !std::mem::replace(&mut self.disabled, true) {
                self.events.push_back(Event::Disabled);
            }
            return true;
        }
        if verdict.receiver_failing() {
            match self.breaker.failed(now, probe) {
                Failed::Counted => {}
                Failed::Opened => self.events.push_back(Event::BreakerOpened {
                    failures: super::breaker::THRESHOLD,
                }),
                Failed::Widened(wait) => self
                    .events
                    .push_back(Event::BreakerWidened { wait, status }),
            }
        } else if self.breaker.succeeded(probe) {
            self.events.push_back(Event::BreakerClosed);
        }
        false
    }

    /// The outcome of delivery `key`'s attempt, at `now`; `jitter` in
    /// [0, 1) spreads the backoff (random in production).
    pub fn handle_answer(&mut self, key: Key, a: Attempt, now: Instant, jitter: f64) -> Outcome {
        let probe = match self.deliveries.get(&key).map(|d| d.state) {
            Some(State::InFlight { probe }) => probe,
            _ => return Outcome::Unknown,
        };
        self.in_flight -= 1;
        let verdict = retry::classify(a.status, a.failure);
        if self.note(a.status, verdict, probe, now) {
            // Kept, first in line for when delivery is enabled again; the
            // attempt is not counted against its retries.
            let d = self.deliveries.get_mut(&key).expect("checked above");
            d.state = State::Ready;
            self.ready.push_front(key);
            return Outcome::Gone;
        }
        let retry_after = a.retry_after;
        let d = self.deliveries.get_mut(&key).expect("checked above");
        let tried = d.record(a);
        match retry::next(verdict, tried, self.cfg.retries, &mut d.denied_since, now) {
            Next::Delivered => {
                let d = self.deliveries.remove(&key).expect("checked above");
                if let Subject::Recipient { message, .. } = d.subject {
                    self.progress(key, d, Restored::Delivered);
                    self.finish(message, false);
                }
                Outcome::Delivered { attempts: tried }
            }
            Next::Retry => {
                let wait = retry::delay(self.cfg.retry_delay, tried, retry_after, jitter);
                let due = now + wait;
                let state = Restored::Waiting {
                    attempts: tried,
                    due,
                    denied_since: d.denied_since,
                };
                self.wait_until(key, due);
                // A re-driven dead letter keeps its file: nothing to resume.
                let subject = self.deliveries[&key].subject;
                if let Subject::Recipient { message, .. } = subject {
                    self.waits(message);
                    let d = &self.deliveries[&key];
                    self.events.push_back(Event::Progress {
                        key,
                        message: Some(message),
                        webhook_id: d.webhook_id.clone(),
                        attempts: tried,
                        state,
                    });
                }
                Outcome::Retry {
                    wait,
                    attempt: tried,
                }
            }
            Next::DeadLetter(why) => {
                d.state = State::Burying;
                self.burying += 1;
                Outcome::DeadLetter {
                    why,
                    log: d.log.iter().cloned().collect(),
                    attempts: tried,
                }
            }
        }
    }

    /// A delivery could not be attempted for a reason of gomail's own (its
    /// message could not be read back from the spool): it is tried again
    /// after the backoff without counting toward the breaker, and
    /// dead-lettered once its retries are used up, like any other.
    pub fn handle_local_failure(&mut self, key: Key, detail: String, now: Instant) -> Outcome {
        let probe = match self.deliveries.get(&key).map(|d| d.state) {
            Some(State::InFlight { probe }) => probe,
            _ => return Outcome::Unknown,
        };
        self.in_flight -= 1;
        if probe {
            // The probe was never sent: let the next one go.
            self.breaker.probe_abandoned();
        }
        let d = self.deliveries.get_mut(&key).expect("checked above");
        let tried = d.record(Attempt {
            at_ms: chrono::Utc::now().timestamp_millis(),
            status: None,
            failure: None,
            retry_after: None,
            latency: Duration::ZERO,
            detail,
        });
        if tried > self.cfg.retries {
            d.state = State::Burying;
            self.burying += 1;
            return Outcome::DeadLetter {
                why: GaveUp::RetriesUsedUp,
                log: d.log.iter().cloned().collect(),
                attempts: tried,
            };
        }
        let wait = retry::delay(self.cfg.retry_delay, tried, None, 0.5);
        self.wait_until(key, now + wait);
        Outcome::Retry {
            wait,
            attempt: tried,
        }
    }

    /// The dead letter of `key` was written (`written`), or could not be:
    /// then the delivery is tried again after [`DEAD_LETTER_RETRY`].
    pub fn handle_dead_letter(&mut self, key: Key, written: bool, now: Instant) {
        let Some(d) = self.deliveries.get_mut(&key) else {
            return;
        };
        if d.state != State::Burying {
            return;
        }
        self.burying -= 1;
        if !written {
            self.wait_until(key, now + DEAD_LETTER_RETRY);
            return;
        }
        let d = self.deliveries.remove(&key).expect("checked above");
        if let Subject::Recipient { message, .. } = d.subject {
            self.progress(key, d, Restored::Dead);
            self.finish(message, true);
        }
    }

    /// Records the end of one of a shared message's deliveries.
    fn progress(&mut self, key: Key, d: Delivery, state: Restored) {
        let Subject::Recipient { message, .. } = d.subject else {
            return;
        };
        let Some(m) = self.messages.get_mut(&message).filter(|m| m.shared) else {
            return;
        };
        let event = Event::Progress {
            key,
            message: Some(message),
            webhook_id: d.webhook_id,
            attempts: d.attempts,
            state,
        };
        if m.waited {
            self.events.push_back(event);
        } else {
            m.served.push(event);
        }
    }

    /// A delivery of `message` waits for a retry: the ends of its siblings
    /// held back so far are recorded now, before its own progress.
    fn waits(&mut self, message: MessageKey) {
        if let Some(m) = self.messages.get_mut(&message) {
            m.waited = true;
            self.events.extend(m.served.drain(..));
        }
    }

    fn finish(&mut self, message: MessageKey, dead: bool) {
        let Some(m) = self.messages.get_mut(&message) else {
            return;
        };
        m.dead |= dead;
        m.remaining = m.remaining.saturating_sub(1);
        if m.remaining == 0 {
            let m = self.messages.remove(&message).expect("present");
            self.events.push_back(Event::Finished {
                message,
                dead: m.dead,
            });
        }
    }

    /// Whether a client may wait for the receiver's answer now (sync and
    /// hybrid modes): not while delivery is disabled or the breaker open.
    /// Such messages are queued instead, and the client gets `250` at once.
    pub fn inline_allowed(&self) -> bool {
        !self.disabled && !self.breaker.is_open()
    }

    /// The answer to a sync or hybrid delivery: it counts for the breaker
    /// and `410` like a queued delivery's.
    pub fn handle_inline_answer(&mut self, a: &Attempt, now: Instant) -> Inline {
        let verdict = retry::classify(a.status, a.failure);
        if self.note(a.status, verdict, false, now) {
            Inline::Gone
        } else {
            Inline::Answered(verdict)
        }
    }

    /// (breaker open, disabled by `410`), for the metrics.
    pub fn health(&self) -> (bool, bool) {
        (self.breaker.is_open(), self.disabled)
    }

    /// Deliveries waiting (ready or for a retry), in flight, or being
    /// dead-lettered.
    pub fn len(&self) -> usize {
        self.deliveries.len()
    }

    /// No deliveries at all.
    pub fn is_empty(&self) -> bool {
        self.deliveries.is_empty()
    }

    /// Nothing in flight or being dead-lettered, and nothing due at `now`
    /// that may be sent (retries waiting for later are safe in the spool).
    pub fn is_idle(&self, now: Instant) -> bool {
        if self.in_flight > 0 || self.burying > 0 {
            return false;
        }
        if self.disabled || self.breaker.is_open() {
            return true;
        }
        self.ready.is_empty()
            && self
                .later
                .first_key_value()
                .is_none_or(|((due, _), _)| *due > now)
    }
}

#[cfg(test)]
mod tests;
