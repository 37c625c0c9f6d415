//! The shard's webhook outbox: the glommio driver of
//! `delivery::engine`. Every accepted message is POSTed to `api_endpoint`
//! from the shard that accepted it (no central queue); the engine decides
//! what is attempted when, and this driver moves the bytes: it reads
//! bodies back from the spool, posts them, writes dead letters, persists
//! progress and sleeps until the engine's next timeout.
//!
//! A message leaves the outbox only delivered (2xx) or dead-lettered (a
//! permanent 4xx, a TLS failure, 401/403/404 for too long, or retries used
//! up: see `delivery::retry`), and only then is it recorded as done
//! in the spool: a crash at any point means it is delivered again after the
//! restart, with the same `webhook-id` (its queue id), so receivers can drop
//! duplicates. At-least-once, never lost.
//!
//! Memory: a message's contents stay in memory only from its acceptance
//! to its first attempt, within [`HOLD_MAX`] per shard. A message waiting
//! for a retry, or recovered at start-up, holds its spool location and
//! a few fields: its body is read back (and its payload built) on the
//! blocking pool when its attempt comes due, so an outage costs disk.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use hyper::body::Bytes;

use super::ShardState;
use crate::delivery::engine::{
    self, Engine, Event, Key, MessageKey, Order, Outcome, Restored, Subject,
};
use crate::delivery::webhook::{Attempt, Webhook};
use crate::payload;
use crate::spool::{store, Progress, ProgressState, Spooled};

mod dead;
mod inline;

/// Deliveries in flight per shard.
const MAX_IN_FLIGHT: usize = 64;

/// The most octets of message contents a shard's outbox keeps in memory
/// for first attempts; past it, new messages are read back from the spool
/// when their attempt starts.
pub(crate) const HOLD_MAX: usize = 64 << 20;

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

/// A message with deliveries under way.
struct Held {
    msg: Spooled,
    /// The payload of a message for several recipients while its contents
    /// are in memory: built at the first attempt and spliced per
    /// recipient (the MIME parse and the escaping of `raw` once).
    parts: Option<Rc<payload::PayloadParts>>,
    /// The recipients' addresses, kept with `parts` (spliced per recipient).
    addresses: Vec<String>,
    /// The payload its (one) recipient's last attempt posted, once its
    /// delivery is over: the store's file is those bytes.
    json: Option<Bytes>,
}

/// A dead letter re-driven by `gomail queue retry`.
struct Redrive {
    path: std::path::PathBuf,
    /// Its payload, as stored (without the `dead_letter` part).
    payload: Bytes,
    /// The attempts already recorded in it.
    earlier: Vec<serde_json::Value>,
}

/// See the module docs.
pub(crate) struct Outbox {
    cfg: OutboxConfig,
    engine: RefCell<Engine>,
    messages: RefCell<HashMap<MessageKey, Held>>,
    redrives: RefCell<HashMap<Key, Redrive>>,
    /// Octets of contents held in `messages` (bounded by [`HOLD_MAX`]).
    held: Cell<usize>,
    wake: (async_channel::Sender<()>, async_channel::Receiver<()>),
}

impl Held {
    /// Octets it keeps in memory (counted against [`HOLD_MAX`]).
    fn octets(&self) -> usize {
        self.msg.held() + self.parts.as_ref().map_or(0, |p| p.len())
    }
}

impl Outbox {
    pub(crate) fn new(cfg: OutboxConfig) -> Outbox {
        let engine = Engine::new(engine::Config {
            retries: cfg.retries,
            retry_delay: cfg.retry_delay,
            max_in_flight: MAX_IN_FLIGHT,
        });
        Outbox {
            cfg,
            engine: RefCell::new(engine),
            messages: RefCell::new(HashMap::new()),
            redrives: RefCell::new(HashMap::new()),
            held: Cell::new(0),
            wake: async_channel::bounded(1),
        }
    }

    /// Queues an accepted message for delivery to each of its recipients.
    pub(crate) fn push(&self, msg: Spooled) {
        let key = self.engine.borrow_mut().handle_accepted(
            &msg.id,
            msg.recipients,
            |_| None,
            Instant::now(),
        );
        self.hold(key, msg);
    }

    /// Queues a message, resuming the deliveries an earlier run recorded
    /// progress for (`progress`, by webhook id).
    pub(crate) fn push_restored(&self, msg: Spooled, progress: &HashMap<String, Progress>) {
        let (now, now_ms) = (Instant::now(), chrono::Utc::now().timestamp_millis());
        let restored = |id: &str| progress.get(id).map(|p| restored(p, now, now_ms));
        let key = self
            .engine
            .borrow_mut()
            .handle_accepted(&msg.id, msg.recipients, restored, now);
        self.hold(key, msg);
    }

    /// Keeps a message the engine took, its contents within [`HOLD_MAX`].
    fn hold(&self, key: MessageKey, mut msg: Spooled) {
        if self.held.get() + msg.held() > HOLD_MAX {
            msg.contents = None;
        }
        self.held.set(self.held.get() + msg.held());
        self.messages.borrow_mut().insert(
            key,
            Held {
                msg,
                parts: None,
                addresses: Vec::new(),
                json: None,
            },
        );
        self.poke();
    }

    /// Re-drives a dead letter: its payload is posted again; delivered, the
    /// file is deleted; refused again, its attempt log grows.
    pub(crate) fn push_dead(&self, path: std::path::PathBuf, mut doc: serde_json::Value) {
        let id = doc["dead_letter"]["webhook_id"]
            .as_str()
            .or(doc["metadata"]["queue_id"].as_str())
            .unwrap_or_default()
            .to_string();
        let earlier = match doc.as_object_mut().and_then(|o| o.remove("dead_letter")) {
            Some(serde_json::Value::Object(mut d)) => match d.remove("attempts") {
                Some(serde_json::Value::Array(a)) => a,
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        let payload = Bytes::from(serde_json::to_vec(&doc).expect("a JSON value serializes"));
        let key = self.engine.borrow_mut().handle_redrive(id);
        self.redrives.borrow_mut().insert(
            key,
            Redrive {
                path,
                payload,
                earlier,
            },
        );
        self.poke();
    }

    fn poke(&self) {
        let _ = self.wake.0.try_send(());
    }

    /// Drops a message's contents from memory: it is read back when needed.
    fn release(&self, message: MessageKey) {
        if let Some(h) = self.messages.borrow_mut().get_mut(&message) {
            self.held.set(self.held.get() - h.octets());
            h.msg.contents = None;
            h.parts = None;
            h.addresses = Vec::new();
        }
    }

    /// Acts on what the engine has decided since the last call.
    fn process_events(&self, state: &Rc<ShardState>) {
        loop {
            let Some(event) = self.engine.borrow_mut().poll_event() else {
                return;
            };
            let shard = state.id;
            match event {
                Event::Finished { message, dead } => {
                    let Some(h) = self.messages.borrow_mut().remove(&message) else {
                        continue;
                    };
                    self.held.set(self.held.get() - h.octets());
                    match (self.cfg.store_mode.keeps(dead), h.json) {
                        (true, Some(json)) => state.store.push_built(h.msg, json),
                        (keeps, _) => state.store.push_with(h.msg, keeps),
                    }
                }
                Event::Progress {
                    webhook_id,
                    attempts,
                    state: st,
                    ..
                } => state.spool.note_progress(&progress(webhook_id, attempts, st)),
                Event::BreakerOpened { failures } => tracing::warn!(
                    shard,
                    failures,
                    "webhook receiver keeps failing: circuit breaker open, probing with backoff"
                ),
                Event::BreakerWidened { wait, status } => tracing::info!(
                    shard,
                    status,
                    next_probe_s = wait.as_secs(),
                    "webhook receiver still failing: circuit breaker stays open"
                ),
                Event::BreakerClosed => tracing::info!(
                    shard,
                    "webhook receiver answers again: circuit breaker closed"
                ),
                Event::Disabled => tracing::error!(
                    shard,
                    "webhook receiver answered 410 Gone: delivery disabled on this shard until restart; messages are kept in the spool"
                ),
            }
        }
    }

    /// (circuit open, disabled by 410) for the metrics.
    pub(crate) fn health(&self) -> (bool, bool) {
        self.engine.borrow().health()
    }

    /// (deliveries waiting or under way, octets held in memory), for the
    /// metrics.
    pub(crate) fn backlog(&self) -> (usize, usize) {
        (self.engine.borrow().len(), self.held.get())
    }

    /// Nothing being sent and nothing due now (retries waiting for later
    /// are safe in the spool).
    pub(crate) fn is_idle(&self) -> bool {
        self.engine.borrow().is_idle(Instant::now())
    }

    pub(crate) fn close(&self) {
        self.wake.0.close();
    }
}

/// A progress record's state as the engine takes it, on this run's clock.
fn restored(p: &Progress, now: Instant, now_ms: i64) -> Restored {
    let at = |ms: i64| {
        let ago = Duration::from_millis(now_ms.saturating_sub(ms).max(0) as u64);
        now.checked_sub(ago).unwrap_or(now)
    };
    match p.state {
        ProgressState::Delivered => Restored::Delivered,
        ProgressState::Dead => Restored::Dead,
        ProgressState::Waiting => Restored::Waiting {
            attempts: p.attempts,
            due: now + Duration::from_millis(p.due_ms.saturating_sub(now_ms).max(0) as u64),
            denied_since: p.denied_since_ms.map(at),
        },
    }
}

/// The engine's progress as a spool record, on the wall clock.
fn progress(id: String, attempts: u32, state: Restored) -> Progress {
    let (now, now_ms) = (Instant::now(), chrono::Utc::now().timestamp_millis());
    let ms = |t: Instant| {
        if t >= now {
            now_ms + t.duration_since(now).as_millis() as i64
        } else {
            now_ms - now.duration_since(t).as_millis() as i64
        }
    };
    let (state, due_ms, denied_since_ms) = match state {
        Restored::Delivered => (ProgressState::Delivered, 0, None),
        Restored::Dead => (ProgressState::Dead, 0, None),
        Restored::Waiting {
            due, denied_since, ..
        } => (ProgressState::Waiting, ms(due), denied_since.map(ms)),
    };
    Progress {
        id,
        attempts,
        state,
        due_ms,
        denied_since_ms,
    }
}

/// The outbox loop: starts what the engine says is due, then sleeps until
/// its next timeout or until something happens.
pub(super) async fn run(state: Rc<ShardState>) {
    let Some(outbox) = state.outbox.as_ref() else {
        return;
    };
    loop {
        outbox.process_events(&state);
        let now = Instant::now();
        loop {
            let Some(order) = outbox.engine.borrow_mut().poll_attempt(now) else {
                break;
            };
            let st = state.clone();
            glommio::spawn_local(async move {
                // A panic here (a bug) must not stop the shard: the message
                // stays in the spool, undone, and is posted again at the
                // next start.
                if let Err(what) = super::contain::contain(attempt(&st, order)).await {
                    tracing::error!(shard = st.id, panic = %what, "a webhook delivery task panicked (a bug in gomail); its message stays in the spool and is posted again after a restart");
                }
                if let Some(o) = st.outbox.as_ref() {
                    o.poke();
                }
            })
            .detach();
        }
        let wait = outbox
            .engine
            .borrow()
            .poll_timeout()
            .map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now));
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

/// The payload for an order: built from the contents in memory, or read
/// back from the spool and built on the blocking pool.
async fn payload_for(outbox: &Outbox, order: &Order) -> Result<Bytes, String> {
    let (message, index) = match order.subject {
        Subject::Redrive => {
            return outbox
                .redrives
                .borrow()
                .get(&order.key)
                .map(|r| r.payload.clone())
                .ok_or_else(|| "the re-driven dead letter is gone".to_string());
        }
        Subject::Recipient { message, index } => (message, index),
    };
    let at = {
        let mut messages = outbox.messages.borrow_mut();
        let h = messages
            .get_mut(&message)
            .ok_or_else(|| "the message is no longer queued".to_string())?;
        // Built from memory, the payload is all the attempt needs: the
        // contents go (a retry reads them back, the store takes the
        // payload), making room under HOLD_MAX for the next messages.
        if h.msg.recipients < 2 {
            if let Some(c) = h.msg.contents.take() {
                outbox.held.set(outbox.held.get() - c.message.len());
                return Ok(Bytes::from(payload::payload(&c.envelope, &c.message, None)));
            }
        } else if h.parts.is_none() {
            if let Some(c) = h.msg.contents.take() {
                // Several recipients: the parts, built once, stand in for
                // the contents until the last recipient's attempt.
                let parts = payload::PayloadParts::new(&c.envelope, &c.message);
                outbox
                    .held
                    .set(outbox.held.get() - c.message.len() + parts.len());
                h.parts = Some(Rc::new(parts));
                h.addresses = c.envelope.recipients;
            }
        }
        match &h.parts {
            Some(parts) => {
                let recipient = h.addresses.get(index).map(String::as_str);
                return Ok(Bytes::from(parts.with_recipient(recipient)));
            }
            None => h.msg.at.clone(),
        }
    };
    glommio::executor()
        .spawn_blocking(move || {
            let c = at
                .read()
                .map_err(|e| format!("reading the message back from the spool: {e}"))?;
            let recipient = c.envelope.recipients.get(index).map(String::as_str);
            Ok(Bytes::from(payload::payload(
                &c.envelope,
                &c.message,
                recipient,
            )))
        })
        .await
}

/// One delivery attempt.
async fn attempt(state: &Rc<ShardState>, order: Order) {
    let Some(outbox) = state.outbox.as_ref() else {
        return;
    };
    let id = order.webhook_id.as_str();
    let (outcome, body) = match payload_for(outbox, &order).await {
        Ok(body) => {
            let a = outbox.cfg.client.post(id, body.clone()).await;
            record_attempt(state, &a);
            let status = a.status;
            let outcome = outbox.engine.borrow_mut().handle_answer(
                order.key,
                a,
                Instant::now(),
                fastrand::f64(),
            );
            if let Outcome::Retry { wait, attempt } = &outcome {
                tracing::info!(shard = state.id, %id, status = ?status, retry_in = ?wait, attempt, "webhook delivery failed; will retry");
            }
            (outcome, Some(body))
        }
        Err(detail) => {
            tracing::error!(shard = state.id, %id, error = %detail, "cannot build a webhook payload; will retry");
            let outcome =
                outbox
                    .engine
                    .borrow_mut()
                    .handle_local_failure(order.key, detail, Instant::now());
            (outcome, None)
        }
    };
    let message = match order.subject {
        Subject::Recipient { message, .. } => Some(message),
        Subject::Redrive => None,
    };
    if let (Some(m), Some(body), Outcome::Delivered { .. } | Outcome::DeadLetter { .. }) =
        (message, &body, &outcome)
    {
        // A message's only delivery is over: its payload is the store's
        // file, so the store does not build it again.
        if let Some(h) = outbox.messages.borrow_mut().get_mut(&m) {
            if h.msg.recipients < 2 {
                h.json = Some(body.clone());
            }
        }
    }
    match outcome {
        Outcome::Delivered { attempts } => {
            let received_at_ms = message.and_then(|m| {
                outbox
                    .messages
                    .borrow()
                    .get(&m)
                    .map(|h| h.msg.received_at_ms)
            });
            record_delivered(state, received_at_ms);
            tracing::debug!(shard = state.id, %id, attempts, "webhook delivered");
            if let Some(r) = outbox.redrives.borrow_mut().remove(&order.key) {
                tracing::info!(shard = state.id, %id, "dead letter delivered; removing it");
                let _ = std::fs::remove_file(&r.path);
            }
        }
        Outcome::Retry { .. } | Outcome::Gone => {
            // Waiting: the contents go back to the spool's keeping.
            if let Some(m) = message {
                outbox.release(m);
            }
        }
        Outcome::DeadLetter { why, log, attempts } => {
            let target = match message {
                Some(m) => {
                    let received_at_ms = outbox
                        .messages
                        .borrow()
                        .get(&m)
                        .map_or(0, |h| h.msg.received_at_ms);
                    dead::Target::New(
                        state
                            .data_dir
                            .join("dead")
                            .join(store::file_name(received_at_ms, id)),
                    )
                }
                None => match outbox.redrives.borrow().get(&order.key) {
                    Some(r) => dead::Target::Redriven(r.path.clone(), r.earlier.clone()),
                    None => return,
                },
            };
            let written =
                dead::write(state, id, target, why, &log, attempts, body.as_deref()).await;
            outbox
                .engine
                .borrow_mut()
                .handle_dead_letter(order.key, written, Instant::now());
            if written {
                outbox.redrives.borrow_mut().remove(&order.key);
            }
        }
        Outcome::Unknown => {}
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
