//! Dead letters: messages the receiver refused for good, or that ran out
//! of retries, written to `data_dir/dead/` with their attempt log, and
//! re-driven by `gomail queue retry`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{finish, Item, Outbox, Pending};
use crate::delivery::retry::Verdict;
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

/// Writes the message and its attempt log to `data_dir/dead/` (durably),
/// then lets the spool forget it. A re-driven dead letter keeps its earlier
/// attempts and gets the new ones appended.
pub(super) async fn dead_letter(
    state: &Rc<ShardState>,
    p: Pending,
    verdict: Verdict,
    payload: &[u8],
) {
    let Some(outbox) = state.outbox.as_ref() else {
        return;
    };
    let last = p.attempts.last();
    let reason = match (verdict, last.and_then(|a| a.status)) {
        (Verdict::Permanent, Some(s)) => format!("receiver refused the message with HTTP {s}"),
        (_, Some(s)) => format!(
            "retries exhausted ({} attempts); last answer HTTP {s}",
            p.attempts.len()
        ),
        (_, None) => format!(
            "retries exhausted ({} attempts); last error: {}",
            p.attempts.len(),
            last.map_or("", |a| a.detail.as_str())
        ),
    };
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
