//! The shard's webhook outbox: every accepted message is POSTed to
//! `api_endpoint` from the shard that accepted it (no central queue).
//!
//! A message leaves the outbox only delivered (2xx) or dead-lettered (a
//! permanent 4xx, a TLS failure, 401/403/404 for too long, or retries used
//! up: see `delivery::retry`), and only then is it recorded as done
//! in the spool: a crash at any point means it is delivered again after the
//! restart, with the same `webhook-id` (its queue id), so receivers can drop
//! duplicates. At-least-once, never lost.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use hyper::body::Bytes;

use super::ShardState;
use crate::delivery::retry::{self, Next, Verdict};
use crate::delivery::webhook::{Attempt, Webhook};
use crate::spool::{store, Spooled};

mod breaker;
mod dead;
mod inline;

use breaker::{Breaker, Failed};

/// Deliveries in flight per shard.
const MAX_IN_FLIGHT: usize = 64;

/// `store_mode`: when the JSON store is written as well as the webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// Every message is stored too.
    Always,
    /// Only messages that could not be delivered (dead letters).
    OnFailure,
    /// Never (the webhook is the only delivery).
    Never,
}

impl StoreMode {
    /// Whether a message goes to the JSON store too, once its deliveries
    /// are over (`dead`: one of them ended as a dead letter).
    pub(crate) fn keeps(self, dead: bool) -> bool {
        match self {
            StoreMode::Always => true,
            StoreMode::OnFailure => dead,
            StoreMode::Never => false,
        }
    }
}

/// `webhook_mode`: whether the client waits for the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookMode {
    /// `250` once spooled; delivery afterwards (GoMail's behaviour).
    Async,
    /// The receiver's answer is the SMTP reply.
    Sync,
    /// Like `Sync`, but past `webhook_sync_deadline` the client gets `250`
    /// and delivery goes on asynchronously.
    Hybrid(Duration),
}

/// The webhook settings a shard needs.
pub(crate) struct OutboxConfig {
    pub(crate) client: Webhook,
    pub(crate) retries: u32,
    pub(crate) retry_delay: Duration,
    pub(crate) store_mode: StoreMode,
    pub(crate) mode: WebhookMode,
}

/// A spooled message shared by its recipients' deliveries: it is done in
/// the spool when every recipient's delivery is (delivered or dead).
struct Share {
    msg: RefCell<Option<Spooled>>,
    /// The payload of a message for several recipients, built at the first
    /// attempt and kept for every recipient and retry (the MIME parse and
    /// the escaping of `raw` once, not once per recipient per attempt).
    payload: std::cell::OnceCell<store::PayloadParts>,
    remaining: Cell<usize>,
    any_dead: Cell<bool>,
}

/// What an outbox entry delivers.
enum Item {
    /// One recipient of a message from the spool. gomail POSTs once per
    /// recipient, as GoMail did behind Postfix: `recipient` is that
    /// address, `recipients` lists all, and a message with several
    /// recipients uses webhook ids `<queue id>.<n>`.
    Recipient {
        share: Rc<Share>,
        index: usize,
        id: String,
    },
    /// A dead letter re-driven by `gomail queue retry`: its stored payload.
    Dead {
        path: std::path::PathBuf,
        id: String,
        payload: serde_json::Value,
        /// The attempts already recorded in the dead letter.
        earlier: Vec<serde_json::Value>,
    },
}

struct Pending {
    item: Item,
    attempts: Vec<Attempt>,
    due: Instant,
    /// Its first 401/403/404 answer, from which `retry::DENIED_GRACE` runs.
    denied_since: Option<Instant>,
}

/// Messages waiting for (another) delivery attempt.
pub(crate) struct Outbox {
    cfg: OutboxConfig,
    /// Due now, oldest first.
    ready: RefCell<VecDeque<Pending>>,
    /// Retries, by due time (then by arrival: keys stay unique). Moved to
    /// `ready` when due, so a large backlog behind a slow receiver costs
    /// no scan per delivery.
    later: RefCell<BTreeMap<(Instant, u64), Pending>>,
    arrivals: Cell<u64>,
    in_flight: Cell<usize>,
    wake: (async_channel::Sender<()>, async_channel::Receiver<()>),
    breaker: RefCell<Breaker>,
    /// The receiver answered `410 Gone`: no more attempts until restart.
    disabled: Cell<bool>,
}

impl Outbox {
    pub(crate) fn new(cfg: OutboxConfig) -> Outbox {
        Outbox {
            cfg,
            ready: RefCell::new(VecDeque::new()),
            later: RefCell::new(BTreeMap::new()),
            arrivals: Cell::new(0),
            in_flight: Cell::new(0),
            wake: async_channel::bounded(1),
            breaker: RefCell::new(Breaker::default()),
            disabled: Cell::new(false),
        }
    }

    pub(crate) fn push(&self, msg: Spooled) {
        let n = msg.envelope.recipients.len().max(1);
        let queue_id = msg.envelope.id.clone();
        let share = Rc::new(Share {
            msg: RefCell::new(Some(msg)),
            payload: std::cell::OnceCell::new(),
            remaining: Cell::new(n),
            any_dead: Cell::new(false),
        });
        for index in 0..n {
            let id = if n == 1 {
                queue_id.clone()
            } else {
                format!("{queue_id}.{index}")
            };
            self.enqueue(Item::Recipient {
                share: share.clone(),
                index,
                id,
            });
        }
    }

    fn enqueue(&self, item: Item) {
        self.ready.borrow_mut().push_back(Pending {
            item,
            attempts: Vec::new(),
            due: Instant::now(),
            denied_since: None,
        });
        let _ = self.wake.0.try_send(());
    }

    /// Queues `p` again for its `due` time.
    fn defer(&self, p: Pending) {
        let n = self.arrivals.get();
        self.arrivals.set(n + 1);
        self.later.borrow_mut().insert((p.due, n), p);
    }

    /// Moves the retries due by `now` to the ready queue.
    fn promote(&self, now: Instant) {
        let mut later = self.later.borrow_mut();
        let mut ready = self.ready.borrow_mut();
        while let Some(entry) = later.first_entry() {
            if entry.key().0 > now {
                break;
            }
            ready.push_back(entry.remove());
        }
    }

    /// What a receiver's answer means for the shard, whether it came to a
    /// queued delivery or to one the client waited for: `410 Gone` disables
    /// delivery (loudly) until restart, and the caller keeps the message;
    /// answers saying the receiver is unusable (`Verdict::receiver_failing`:
    /// retryable failures, 401/403/404, TLS failures) count toward the
    /// circuit breaker, any other answer closes it. Returns true for 410.
    fn note_answer(
        &self,
        shard: usize,
        status: Option<u16>,
        verdict: Verdict,
        probe: bool,
    ) -> bool {
        if status == Some(410) {
            // The receiver says this endpoint is gone for good: stop, keep
            // every message, and make it loud. A restart re-enables delivery.
            if !self.disabled.replace(true) {
                tracing::error!(
                    shard,
                    "webhook receiver answered 410 Gone: delivery disabled on this shard until restart; messages are kept in the spool"
                );
            }
            return true;
        }
        let mut b = self.breaker.borrow_mut();
        if verdict.receiver_failing() {
            match b.failed(Instant::now(), probe) {
                Failed::Counted => {}
                Failed::Opened => tracing::warn!(
                    shard,
                    failures = breaker::THRESHOLD,
                    "webhook receiver keeps failing: circuit breaker open, probing with backoff"
                ),
                Failed::Widened(wait) => tracing::info!(
                    shard,
                    status,
                    next_probe_s = wait.as_secs(),
                    "webhook receiver still failing: circuit breaker stays open"
                ),
            }
        } else if b.succeeded(probe) {
            tracing::info!(
                shard,
                "webhook receiver answers again: circuit breaker closed"
            );
        }
        false
    }

    /// (circuit open, disabled by 410) for the metrics.
    pub(crate) fn health(&self) -> (bool, bool) {
        (self.breaker.borrow().is_open(), self.disabled.get())
    }

    /// Nothing being sent and nothing due now (retries waiting for later
    /// are safe in the spool).
    pub(crate) fn is_idle(&self) -> bool {
        if self.disabled.get() || self.breaker.borrow().is_open() {
            return self.in_flight.get() == 0;
        }
        let now = Instant::now();
        self.in_flight.get() == 0
            && self.ready.borrow().is_empty()
            && self
                .later
                .borrow()
                .first_key_value()
                .is_none_or(|((due, _), _)| *due > now)
    }

    pub(crate) fn close(&self) {
        self.wake.0.close();
    }
}

/// The outbox loop: starts due deliveries, at most [`MAX_IN_FLIGHT`] at once.
pub(super) async fn run(state: Rc<ShardState>) {
    let Some(outbox) = state.outbox.as_ref() else {
        return;
    };
    loop {
        let now = Instant::now();
        outbox.promote(now);
        // While the breaker is open: nothing until `open_until`, then a
        // single probe. While disabled (410): nothing at all.
        let (gate, limit) = if outbox.disabled.get() {
            (None, 0)
        } else {
            outbox.breaker.borrow().allowance(now)
        };
        let mut started = 0;
        loop {
            if outbox.in_flight.get() >= MAX_IN_FLIGHT || started >= limit {
                break;
            }
            let Some(pending) = outbox.ready.borrow_mut().pop_front() else {
                break;
            };
            started += 1;
            let probe = limit == 1;
            if probe {
                outbox.breaker.borrow_mut().probe_started();
            }
            outbox.in_flight.set(outbox.in_flight.get() + 1);
            let st = state.clone();
            glommio::spawn_local(async move {
                // A panic here (a bug) must not stop the shard: the message
                // stays in the spool, undone, and is posted again at the
                // next start.
                if let Err(what) = super::contain::contain(attempt(&st, pending, probe)).await {
                    tracing::error!(shard = st.id, panic = %what, "a webhook delivery task panicked (a bug in gomail); its message stays in the spool and is posted again after a restart");
                }
                if let Some(o) = st.outbox.as_ref() {
                    o.in_flight.set(o.in_flight.get() - 1);
                    let _ = o.wake.0.try_send(());
                }
            })
            .detach();
        }
        let mut next_due = outbox
            .later
            .borrow()
            .first_key_value()
            .map(|((due, _), _)| *due);
        if let Some(t) = gate {
            // Held back until `t`: then the probe goes, at once if a
            // delivery is ready, else when the next retry is due.
            next_due = Some(match next_due {
                Some(d) if outbox.ready.borrow().is_empty() => d.max(t),
                _ => t,
            });
        }
        let wait = next_due.map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now));
        let woke = future::or(async { outbox.wake.1.recv().await.is_ok() }, async {
            glommio::timer::sleep(wait).await;
            true
        })
        .await;
        if !woke {
            return;
        }
    }
}

/// One delivery attempt; `probe`: the one the open breaker let through.
async fn attempt(state: &Rc<ShardState>, mut p: Pending, probe: bool) {
    let Some(outbox) = state.outbox.as_ref() else {
        return;
    };
    let cfg = &outbox.cfg;
    let (id, body) = match &p.item {
        Item::Recipient { share, index, id } => (id.clone(), recipient_payload(share, *index)),
        Item::Dead { id, payload, .. } => (
            id.clone(),
            serde_json::to_vec(payload).expect("payload serializes"),
        ),
    };
    let body = Bytes::from(body);
    let a = cfg.client.post(&id, body.clone()).await;
    let verdict = retry::classify(a.status, a.failure);
    record_attempt(state, &a);
    let retry_after = a.retry_after;
    let status = a.status;
    p.attempts.push(a);
    if outbox.note_answer(state.id, status, verdict, probe) {
        p.due = Instant::now();
        outbox.ready.borrow_mut().push_front(p);
        return;
    }
    let tried = p.attempts.len() as u32;
    match retry::next(
        verdict,
        tried,
        cfg.retries,
        &mut p.denied_since,
        Instant::now(),
    ) {
        Next::Delivered => {
            let received_at_ms = match &p.item {
                Item::Recipient { share, .. } => share
                    .msg
                    .borrow()
                    .as_ref()
                    .map(|m| m.envelope.received_at_ms),
                Item::Dead { .. } => None,
            };
            record_delivered(state, received_at_ms);
            tracing::debug!(shard = state.id, %id, attempts = p.attempts.len(), "webhook delivered");
            match p.item {
                Item::Recipient { share, .. } => finish(state, &share, false),
                Item::Dead { path, .. } => {
                    tracing::info!(shard = state.id, %id, "dead letter delivered; removing it");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Next::Retry => {
            let wait = retry::delay(cfg.retry_delay, tried, retry_after, fastrand::f64());
            tracing::info!(shard = state.id, %id, status = ?status, retry_in = ?wait, attempt = tried, "webhook delivery failed; will retry");
            p.due = Instant::now() + wait;
            outbox.defer(p);
            let _ = outbox.wake.0.try_send(());
        }
        Next::DeadLetter(why) => dead::dead_letter(state, p, why, &body).await,
    }
}

/// Counts one request to the receiver and its latency.
fn record_attempt(state: &ShardState, a: &Attempt) {
    let mut s = state.stats.borrow_mut();
    s.webhook_attempts += 1;
    s.webhook_latency.observe(a.latency.as_micros() as u64);
}

/// Counts a delivery and, for a message from the spool, the time from its
/// `250` to the receiver's 2xx (`gomail_webhook_delivery_seconds`).
fn record_delivered(state: &ShardState, received_at_ms: Option<i64>) {
    let mut s = state.stats.borrow_mut();
    s.webhook_delivered += 1;
    if let Some(at) = received_at_ms {
        let ms = chrono::Utc::now().timestamp_millis() - at;
        s.webhook_delivery_delay.observe(ms.max(0) as u64 * 1000);
    }
}

/// The JSON posted for recipient `index` of a shared message.
fn recipient_payload(share: &Share, index: usize) -> Vec<u8> {
    let msg = share.msg.borrow();
    let Some(m) = msg.as_ref() else {
        return b"null".to_vec();
    };
    let recipient = m.envelope.recipients.get(index).map(String::as_str);
    if m.envelope.recipients.len() < 2 {
        // One recipient: nothing to share, and a message waiting for a
        // retry keeps no second copy of itself.
        return store::payload(&m.envelope, &m.message, recipient);
    }
    share
        .payload
        .get_or_init(|| store::PayloadParts::new(&m.envelope, &m.message))
        .with_recipient(recipient)
}

/// One recipient's delivery is over; when it was the last, the message goes
/// on to the store (per `store_mode`) and its done record.
fn finish(state: &Rc<ShardState>, share: &Share, dead: bool) {
    if dead {
        share.any_dead.set(true);
    }
    let left = share.remaining.get().saturating_sub(1);
    share.remaining.set(left);
    if left > 0 {
        return;
    }
    let Some(msg) = share.msg.borrow_mut().take() else {
        return;
    };
    let Some(outbox) = state.outbox.as_ref() else {
        return;
    };
    state
        .delivery
        .push_with(msg, outbox.cfg.store_mode.keeps(share.any_dead.get()));
}
