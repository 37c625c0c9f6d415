//! Sync and hybrid delivery: the client waits for the receiver's answer.

use std::rc::Rc;

use futures_lite::future;
use hyper::body::Bytes;

use super::{record_attempt, record_delivered, Outbox, WebhookMode};
use crate::delivery::engine::Inline;
use crate::delivery::retry::Verdict;
use crate::payload;
use crate::server::ShardState;
use crate::spool::Spooled;

impl Outbox {
    /// True when the client should wait for the receiver's answer: sync or
    /// hybrid mode, one recipient (one answer cannot speak for several),
    /// its contents in memory, and the receiver neither disabled nor
    /// behind an open breaker (`Engine::inline_allowed`).
    pub(crate) fn answers_inline(&self, msg: &Spooled) -> bool {
        self.cfg.mode != WebhookMode::Async
            && msg.recipients == 1
            && msg.contents.is_some()
            && self.engine.borrow().inline_allowed()
    }

    /// Posts a just-spooled message while the client waits and turns the
    /// answer into the SMTP completion. The message is already durable:
    /// whatever the answer, the spool's bookkeeping stays exact.
    pub(crate) async fn deliver_inline(
        &self,
        state: &Rc<ShardState>,
        msg: Spooled,
    ) -> crate::smtp::Completion {
        use crate::smtp::{Completion, Reply};
        let id = msg.id.clone();
        let posted = match &msg.contents {
            Some(c) => Bytes::from(payload::payload(&c.envelope, &c.message, None)),
            None => {
                self.push(msg);
                return Completion::Spooled { id };
            }
        };
        let post = self.cfg.client.post(&id, posted.clone());
        let answer = match self.cfg.mode {
            WebhookMode::Hybrid(deadline) => {
                future::or(async { Some(post.await) }, async {
                    glommio::timer::sleep(deadline).await;
                    None
                })
                .await
            }
            _ => Some(post.await),
        };
        let Some(a) = answer else {
            // Hybrid, no answer in time: accept now, deliver in the background.
            tracing::debug!(shard = state.id, %id, "receiver slower than webhook_sync_deadline; accepted, delivering asynchronously");
            self.push(msg);
            return Completion::Spooled { id };
        };
        record_attempt(state, &a);
        let inline = self
            .engine
            .borrow_mut()
            .handle_inline_answer(&a, std::time::Instant::now());
        // The breaker's and 410's news is logged by the outbox loop.
        self.poke();
        let verdict = match inline {
            Inline::Answered(v) => v,
            Inline::Gone => {
                // Gone for good, which is not the sender's doing: the
                // message is durable already, so it is accepted and kept
                // for when delivery is enabled again, like every message
                // queued on this shard.
                self.push(msg);
                return Completion::Spooled { id };
            }
        };
        match (verdict, a.status) {
            (Verdict::Delivered, _) => {
                record_delivered(state, Some(msg.received_at_ms));
                if self.cfg.store_mode.keeps(false) {
                    // The store's file is the payload just posted.
                    state.store.push_built(msg, posted);
                } else {
                    state.store.push_with(msg, false);
                }
                Completion::Spooled { id }
            }
            (Verdict::Permanent, Some(status)) => {
                // Refused by the application: the client bounces it, so the
                // spool forgets it (it was never acknowledged).
                state.store.push_with(msg, false);
                Completion::Refused(Reply::new(
                    550,
                    "5.7.1",
                    format!(
                        "Rejected by the receiving application (HTTP {status}): {}",
                        printable(&a.detail)
                    ),
                ))
            }
            (Verdict::Tls, _) => {
                // A misconfiguration, not the sender's doing, and one the
                // operator fixes. The client gets a temporary reply and
                // keeps the message, so its next try goes through once
                // TLS is fixed. No dead letter as well: every retry of the
                // client's would add another copy.
                tracing::warn!(shard = state.id, %id, error = %a.detail, "webhook TLS failure: the client was told to try again later");
                state.store.push_with(msg, false);
                Completion::Refused(unavailable(&printable(&a.detail)))
            }
            _ => {
                // Temporary (retryable, or 401/403/404: a receiver being
                // deployed or rotating its secret refuses no message for
                // good): the client retries, so the spool forgets this copy.
                state.store.push_with(msg, false);
                let what = a
                    .status
                    .map_or_else(|| printable(&a.detail), |s| format!("HTTP {s}"));
                Completion::Refused(unavailable(&what))
            }
        }
    }
}

/// The temporary reply when the receiver cannot take the message now.
fn unavailable(what: &str) -> crate::smtp::Reply {
    crate::smtp::Reply::new(
        451,
        "4.3.0",
        format!("Receiving application unavailable ({what}), try again later"),
    )
}

/// The receiver's words, fit for an SMTP reply: printable ASCII, at most
/// 200 characters.
fn printable(detail: &str) -> String {
    let text: String = detail
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                ' '
            }
        })
        .take(200)
        .collect();
    text.trim().to_string()
}
