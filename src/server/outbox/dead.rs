//! Dead letters: messages the receiver refused for good, that could not
//! be sent over TLS, that were answered 401/403/404 for too long, or that
//! ran out of retries (`delivery::retry::next`), written to `data_dir/dead/` with their attempt log, and
//! re-driven by `gomail queue retry`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{finish, Item, Outbox, Pending};
use crate::delivery::retry::{GaveUp, DENIED_GRACE};
use crate::delivery::webhook::Attempt;
use crate::server::ShardState;
use crate::spool::store;

impl Outbox {
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
        self.enqueue(Item::Dead {
            path,
            id,
            payload: doc,
            earlier,
        });
    }
}

/// The dead letter's `reason`, from why delivery gave up and the attempts
/// (this run's; the last is the one that decided).
fn reason(why: GaveUp, attempts: &[Attempt]) -> String {
    let n = attempts.len();
    let last = attempts.last();
    let detail = last.map_or("", |a| a.detail.as_str());
    match (why, last.and_then(|a| a.status)) {
        (GaveUp::Refused, Some(s)) => format!("receiver refused the message with HTTP {s}"),
        (GaveUp::Tls, _) => format!(
            "TLS failure, not retried (check the receiver's certificate, the host in api_endpoint and webhook_ca_file): {detail}"
        ),
        (GaveUp::DeniedTooLong, Some(s)) => format!(
            "receiver answered HTTP 401, 403 or 404 for {} minutes or more ({n} attempts); last answer HTTP {s}",
            DENIED_GRACE.as_secs() / 60
        ),
        (_, Some(s)) => format!("retries exhausted ({n} attempts); last answer HTTP {s}"),
        (_, None) => format!("retries exhausted ({n} attempts); last error: {detail}"),
    }
}

/// Writes the message and its attempt log to `data_dir/dead/` (durably),
/// then lets the spool forget it. A re-driven dead letter keeps its earlier
/// attempts and gets the new ones appended.
pub(super) async fn dead_letter(state: &Rc<ShardState>, p: Pending, why: GaveUp, payload: &[u8]) {
    let Some(outbox) = state.outbox.as_ref() else {
        return;
    };
    let reason = reason(why, &p.attempts);
    let dir = state.data_dir.join("dead");
    let (id, path, mut attempts) = match &p.item {
        Item::Recipient { share, id, .. } => {
            // msg_<unix>_<id>.json, the id per recipient when there are several.
            let name = share
                .msg
                .borrow()
                .as_ref()
                .map(|m| store::file_name(&m.envelope, id))
                .unwrap_or_default();
            (id.clone(), dir.join(name), Vec::new())
        }
        Item::Dead {
            path, id, earlier, ..
        } => (id.clone(), path.clone(), earlier.clone()),
    };
    attempts.extend(p.attempts.iter().map(|a| {
        json!({
            "at": chrono::DateTime::from_timestamp_millis(a.at_ms).unwrap_or_default().to_rfc3339(),
            "status": a.status,
            "failure": a.failure.map(|f| f.as_str()),
            "latency_ms": a.latency.as_millis() as u64,
            "detail": a.detail,
        })
    }));
    // The posted bytes, read back: a rare path, so the common one never
    // builds a JSON tree.
    let mut doc: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    doc["dead_letter"] = json!({ "reason": reason, "webhook_id": id, "attempts": attempts });
    let target = path.clone();
    let written = glommio::executor()
        .spawn_blocking(move || -> std::io::Result<()> {
            if !dir.exists() {
                // The folder's own entry must be durable too (with
                // store_mode never, nothing else syncs data_dir).
                std::fs::create_dir_all(&dir)?;
                crate::fsutil::sync_dir(dir.parent().expect("dead/ is inside data_dir"))?;
            }
            let mut bytes = serde_json::to_vec_pretty(&doc)?;
            bytes.push(b'\n');
            crate::fsutil::replace_file(&target, &bytes, 0o640)?;
            crate::fsutil::sync_dir(&dir)
        })
        .await;
    match written {
        Ok(()) => {
            state.stats.borrow_mut().webhook_dead_letters += 1;
            tracing::warn!(shard = state.id, %id, %reason, path = %path.display(), "message moved to the dead-letter folder");
            if let Item::Recipient { share, .. } = &p.item {
                finish(state, share, true);
            }
        }
        Err(e) => {
            // Cannot record it as dead: keep it and try the webhook again later.
            tracing::error!(shard = state.id, %id, error = %e, "cannot write the dead letter; keeping the message queued");
            let mut p = p;
            p.due = Instant::now() + Duration::from_secs(60);
            outbox.defer(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::webhook::Failure;

    fn attempt(status: Option<u16>, failure: Option<Failure>, detail: &str) -> Attempt {
        Attempt {
            at_ms: 0,
            status,
            failure,
            retry_after: None,
            latency: Duration::ZERO,
            detail: detail.to_string(),
        }
    }

    #[test]
    fn the_reason_says_why_delivery_gave_up() {
        let refused = [attempt(Some(422), None, "no")];
        assert_eq!(
            reason(GaveUp::Refused, &refused),
            "receiver refused the message with HTTP 422"
        );
        let tls = [attempt(
            None,
            Some(Failure::Tls),
            "TLS handshake with 192.0.2.1:443: invalid peer certificate: UnknownIssuer",
        )];
        assert_eq!(
            reason(GaveUp::Tls, &tls),
            "TLS failure, not retried (check the receiver's certificate, the host in api_endpoint and webhook_ca_file): TLS handshake with 192.0.2.1:443: invalid peer certificate: UnknownIssuer"
        );
        let denied = [attempt(Some(401), None, ""), attempt(Some(404), None, "")];
        assert_eq!(
            reason(GaveUp::DeniedTooLong, &denied),
            "receiver answered HTTP 401, 403 or 404 for 60 minutes or more (2 attempts); last answer HTTP 404"
        );
        assert_eq!(
            reason(GaveUp::RetriesUsedUp, &denied),
            "retries exhausted (2 attempts); last answer HTTP 404"
        );
        let timeout = [attempt(None, Some(Failure::Timeout), "no answer within 2s")];
        assert_eq!(
            reason(GaveUp::RetriesUsedUp, &timeout),
            "retries exhausted (1 attempts); last error: no answer within 2s"
        );
    }
}
