//! Dead letters: messages the receiver refused for good, that could not
//! be sent over TLS, that were answered 401/403/404 for too long, or that
//! ran out of retries (`delivery::retry::next`), written to
//! `data_dir/dead/` with their attempt log, and re-driven by
//! `gomail queue retry` (`Outbox::push_dead`).

use std::rc::Rc;

use serde_json::json;

use crate::delivery::retry::{GaveUp, DENIED_GRACE};
use crate::delivery::webhook::Attempt;
use crate::server::ShardState;

/// Where a dead letter goes.
pub(super) enum Target {
    /// A new file.
    New(std::path::PathBuf),
    /// A re-driven dead letter's own file, with the attempts it recorded.
    Redriven(std::path::PathBuf, Vec<serde_json::Value>),
}

/// The dead letter's `reason`, from why delivery gave up, the attempts
/// kept (the last is the one that decided) and how many there were in all
/// (over restarts).
fn reason(why: GaveUp, attempts: &[Attempt], n: u32) -> String {
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

/// Writes the payload and its attempt log to `data_dir/dead/` (durably);
/// true when it is there. A re-driven dead letter keeps its earlier
/// attempts and gets the new ones appended. `payload` is the posted JSON
/// (none when the message could not be read back from the spool).
pub(super) async fn write(
    state: &Rc<ShardState>,
    id: &str,
    target: Target,
    why: GaveUp,
    log: &[Attempt],
    attempts_made: u32,
    payload: Option<&[u8]>,
) -> bool {
    let reason = reason(why, log, attempts_made);
    let dir = state.data_dir.join("dead");
    let (path, mut attempts) = match target {
        Target::New(path) => (path, Vec::new()),
        Target::Redriven(path, earlier) => (path, earlier),
    };
    attempts.extend(log.iter().map(|a| {
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
    let mut doc: serde_json::Value = match payload {
        Some(p) => serde_json::from_slice(p).unwrap_or_default(),
        None => json!({ "metadata": { "queue_id": id.split('.').next().unwrap_or(id) } }),
    };
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
            true
        }
        Err(e) => {
            // Cannot record it as dead: keep it and try the webhook again later.
            tracing::error!(shard = state.id, %id, error = %e, "cannot write the dead letter; keeping the message queued");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::webhook::Failure;
    use std::time::Duration;

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
            reason(GaveUp::Refused, &refused, 1),
            "receiver refused the message with HTTP 422"
        );
        let tls = [attempt(
            None,
            Some(Failure::Tls),
            "TLS handshake with 192.0.2.1:443: invalid peer certificate: UnknownIssuer",
        )];
        assert_eq!(
            reason(GaveUp::Tls, &tls, 1),
            "TLS failure, not retried (check the receiver's certificate, the host in api_endpoint and webhook_ca_file): TLS handshake with 192.0.2.1:443: invalid peer certificate: UnknownIssuer"
        );
        let denied = [attempt(Some(401), None, ""), attempt(Some(404), None, "")];
        assert_eq!(
            reason(GaveUp::DeniedTooLong, &denied, 2),
            "receiver answered HTTP 401, 403 or 404 for 60 minutes or more (2 attempts); last answer HTTP 404"
        );
        assert_eq!(
            reason(GaveUp::RetriesUsedUp, &denied, 2),
            "retries exhausted (2 attempts); last answer HTTP 404"
        );
        let timeout = [attempt(None, Some(Failure::Timeout), "no answer within 2s")];
        assert_eq!(
            reason(GaveUp::RetriesUsedUp, &timeout, 1),
            "retries exhausted (1 attempts); last error: no answer within 2s"
        );
    }
}
