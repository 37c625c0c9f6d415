//! The shard's store writer: moves spooled messages into the JSON store.
//!
//! It takes queued messages in batches, writes their JSON files and makes
//! them durable (one `syncfs`) on the blocking pool, then records them as
//! done in the spool. A failed batch (full disk) stays queued and is
//! retried with backoff: nothing accepted is dropped.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use super::ShardState;
use crate::spool::{store, Spooled};

const BATCH: usize = 1024;

/// At most one store `syncfs` per this interval per shard. Each `syncfs`
/// forces a filesystem journal commit, and an appending fdatasync on the
/// spool has to wait for a commit in progress: pacing the store keeps it
/// from inflating the latency of `250` replies. It delays only when the
/// JSON files become durable, never an acknowledgement.
const SYNC_INTERVAL: Duration = Duration::from_millis(50);

/// The first retry of a failed store write; each next one waits twice as
/// long, up to [`retry_after`]'s cap.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// The wait before the next retry of a failed store write, after waiting
/// `last`. While the disk is full (`full`) it is at most 1 s: mail is
/// deferred with `452` and `/health` is 503 until a write succeeds, so
/// space that comes back must be seen at once, and a write that fails
/// for want of space costs little. Other failures back off to 60 s.
fn retry_after(last: Duration, full: bool) -> Duration {
    let cap = if full {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(60)
    };
    (last * 2).min(cap)
}

/// A message for the store: whether it gets a JSON file, and its payload
/// if the webhook built it already (its bytes are the file's).
struct Item {
    msg: Spooled,
    store: bool,
    json: Option<hyper::body::Bytes>,
}

/// Where a stored file's JSON comes from: the webhook's payload, or the
/// contents (in memory, or read back from the spool) to build it from.
// One per message of a batch, for the length of its write: the size of
// the read variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Source<'a> {
    Built(&'a hyper::body::Bytes),
    Read(std::borrow::Cow<'a, crate::spool::Contents>),
}

/// Shard-local queue of messages waiting for the store.
pub(crate) struct Queue {
    /// Messages, each with whether it gets a JSON file (`store_mode`).
    items: RefCell<VecDeque<Item>>,
    wake: (async_channel::Sender<()>, async_channel::Receiver<()>),
    busy: Cell<bool>,
    /// The last store write failed for want of space (ENOSPC, EDQUOT),
    /// with this error: until one succeeds, new messages are deferred
    /// (`452 4.3.1`) and `/health` says why.
    failing: RefCell<Option<String>>,
}

impl Default for Queue {
    fn default() -> Queue {
        Queue {
            items: RefCell::new(VecDeque::new()),
            wake: async_channel::bounded(1),
            busy: Cell::new(false),
            failing: RefCell::new(None),
        }
    }
}

impl Queue {
    /// Queues a message for the store, then its done record.
    pub(crate) fn push(&self, msg: Spooled) {
        self.push_with(msg, true);
    }

    /// Queues a message; `store: false` only records it as done (it was
    /// delivered by webhook and `store_mode` does not keep a copy).
    pub(crate) fn push_with(&self, msg: Spooled, store: bool) {
        self.items.borrow_mut().push_back(Item {
            msg,
            store,
            json: None,
        });
        let _ = self.wake.0.try_send(());
    }

    /// Queues a message for the store with its payload built already (the
    /// bytes its webhook POST carried: the store's file is the same JSON).
    pub(crate) fn push_built(&self, msg: Spooled, json: hyper::body::Bytes) {
        self.items.borrow_mut().push_back(Item {
            msg,
            store: true,
            json: Some(json),
        });
        let _ = self.wake.0.try_send(());
    }

    /// The error of the last store write, while the store cannot be written.
    pub(crate) fn failing(&self) -> Option<String> {
        self.failing.borrow().clone()
    }

    /// True while the store cannot be written (one check per message).
    pub(crate) fn is_failing(&self) -> bool {
        self.failing.borrow().is_some()
    }

    /// Nothing queued and nothing being written.
    pub(crate) fn is_idle(&self) -> bool {
        !self.busy.get() && self.items.borrow().is_empty()
    }

    pub(crate) fn close(&self) {
        self.wake.0.close();
    }
}

pub(super) async fn run(state: Rc<ShardState>) {
    let mut backoff = FIRST_RETRY;
    let mut last_sync = std::time::Instant::now() - SYNC_INTERVAL;
    loop {
        let since = last_sync.elapsed();
        if since < SYNC_INTERVAL && !state.shutdown.is_closed() {
            glommio::timer::sleep(SYNC_INTERVAL - since).await;
        }
        let batch: Vec<Item> = {
            let mut items = state.store.items.borrow_mut();
            let n = items.len().min(BATCH);
            items.drain(..n).collect()
        };
        if batch.is_empty() {
            if state.store.wake.1.recv().await.is_err() {
                return;
            }
            continue;
        }
        state.store.busy.set(true);
        last_sync = std::time::Instant::now();
        let dir = state.data_dir.clone();
        let result = glommio::executor()
            .spawn_blocking(move || {
                // Messages that waited for retries, or were recovered at
                // start-up, are read back from the spool here; those the
                // webhook delivered bring their payload.
                let read: std::io::Result<Vec<_>> = batch
                    .iter()
                    .filter(|i| i.store)
                    .map(|i| match &i.json {
                        Some(json) => Ok((i, Source::Built(json))),
                        None => i.msg.read().map(|c| (i, Source::Read(c))),
                    })
                    .collect();
                let r = read.and_then(|read| {
                    let refs: Vec<store::Stored> = read
                        .iter()
                        .map(|(i, source)| match source {
                            Source::Built(json) => store::Stored::Built {
                                received_at_ms: i.msg.received_at_ms,
                                id: &i.msg.id,
                                json,
                            },
                            Source::Read(c) => store::Stored::Message(&c.envelope, &c.message),
                        })
                        .collect();
                    store::write_batch(&dir, &refs)
                });
                (r, batch)
            })
            .await;
        state.store.busy.set(false);
        match result {
            (Ok(()), batch) => {
                backoff = FIRST_RETRY;
                if state.store.failing.borrow_mut().take().is_some() {
                    tracing::info!(
                        shard = state.id,
                        "JSON store writable again; accepting mail"
                    );
                }
                state
                    .spool
                    .mark_done(batch.iter().map(|i| (i.msg.at.segment, i.msg.id.as_str())));
                state.stats.borrow_mut().messages_stored +=
                    batch.iter().filter(|i| i.store).count() as u64;
            }
            (Err(e), batch) => {
                state.stats.borrow_mut().store_failures += 1;
                // Out of space: what is accepted now could not be finished
                // either, so nothing more is until it can. (Other errors
                // are retried with the backlog bounded by spool_max_backlog.)
                let full = matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT));
                if full && state.store.failing.replace(Some(e.to_string())).is_none() {
                    tracing::error!(shard = state.id, error = %e, "the JSON store's disk is full: new messages are deferred with 452 4.3.1 until it can be written");
                }
                tracing::error!(shard = state.id, error = %e, messages = batch.len(), retry_in = ?backoff,
                    "JSON store write failed; messages stay spooled and will be retried");
                {
                    let mut items = state.store.items.borrow_mut();
                    for m in batch.into_iter().rev() {
                        items.push_front(m);
                    }
                }
                glommio::timer::sleep(backoff).await;
                backoff = retry_after(backoff, full);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_of_a_full_store_stay_a_second_apart() {
        let mut wait = FIRST_RETRY;
        let mut full = Vec::new();
        for _ in 0..20 {
            full.push(wait);
            wait = retry_after(wait, true);
        }
        assert_eq!(
            &full[..5],
            [100, 200, 400, 800, 1000].map(Duration::from_millis)
        );
        assert!(full.iter().all(|w| *w <= Duration::from_secs(1)));
        let mut wait = FIRST_RETRY;
        for _ in 0..20 {
            wait = retry_after(wait, false);
        }
        assert_eq!(wait, Duration::from_secs(60));
        // Space back after a long other failure: at most 1 s from then.
        assert_eq!(
            retry_after(Duration::from_secs(60), true),
            Duration::from_secs(1)
        );
    }
}
