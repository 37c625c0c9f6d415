//! The ban endpoints (bearer token checked by the caller):
//! - `GET /api/v1/bans`: `{"bans":[…]}`, each ban as [`ban_json`];
//! - `POST /api/v1/bans` `{"ip":"192.0.2.7"|"10.0.0.0/8","duration":"2h"|7200,"reason":"…"}`:
//!   201 with the ban (published to every shard before the answer);
//! - `DELETE /api/v1/bans/<ip or cidr>`: 200 with the lifted ban, 404 if none.

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use super::{error, json, json_body, method_not_allowed, Answer, Ctx};
use crate::admission::bans::Ban;
use crate::admission::Cidr;

use crate::admission::service::rfc3339;

/// A ban as the API and `gomail security banned-ips --json` show it.
pub(super) fn ban_json(b: &Ban) -> serde_json::Value {
    serde_json::json!({
        "ip": b.net.to_string(),
        "reason": b.reason,
        "source": b.source.as_str(),
        "count": b.count,
        "since": rfc3339(b.since_ms),
        "expires": rfc3339(b.expires_ms),
    })
}

fn invalid(message: &str) -> Answer {
    error(StatusCode::BAD_REQUEST, "validation_error", message)
}

fn failed(e: impl std::fmt::Display) -> Answer {
    tracing::error!(error = %e, "ban change not saved; it applies until gomail stops");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        &format!("the change applies now but could not be saved, so a restart undoes it: {e}"),
    )
}

/// The change did not complete (a bug: its task panicked).
fn broken() -> Answer {
    tracing::error!("a ban change failed inside gomail");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "the ban change failed inside gomail; see its log",
    )
}

pub(super) async fn route(req: Request<Incoming>, ctx: &Ctx) -> Answer {
    let path = req.uri().path().to_string();
    let target = path
        .strip_prefix("/api/v1/bans/")
        .map(|t| t.replace("%2F", "/").replace("%2f", "/"));
    match (req.method().clone(), target) {
        (Method::GET, None) => {
            let bans: Vec<_> = ctx.bans.bans().iter().map(ban_json).collect();
            json(StatusCode::OK, serde_json::json!({ "bans": bans }))
        }
        (Method::POST, None) => add(req, ctx).await,
        (Method::DELETE, Some(t)) => {
            let net: Cidr = match t.parse() {
                Ok(n) => n,
                Err(e) => return invalid(&e),
            };
            let bans = ctx.bans.clone();
            // The ban file is fsync'd: off the control plane's event loop.
            let done = tokio::task::spawn_blocking(move || bans.unban(net)).await;
            let Ok(done) = done else {
                return broken();
            };
            match done {
                Ok(Some(b)) => json(
                    StatusCode::OK,
                    serde_json::json!({ "unbanned": ban_json(&b) }),
                ),
                Ok(None) => error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("{net} is not banned (give the address or block exactly as listed)"),
                ),
                Err(e) => failed(e),
            }
        }
        (_, None) => method_not_allowed("GET, POST"),
        (_, Some(_)) => method_not_allowed("DELETE"),
    }
}

async fn add(req: Request<Incoming>, ctx: &Ctx) -> Answer {
    let v = match json_body(req, ctx).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Some(ip) = v["ip"].as_str() else {
        return invalid("`ip`: expected an address or CIDR block, e.g. \"192.0.2.7\"");
    };
    let net: Cidr = match ip.parse() {
        Ok(n) => n,
        Err(e) => return invalid(&format!("`ip`: {e}")),
    };
    if ctx.cfg().trusted.contains(net.addr) {
        return invalid(&format!(
            "`ip`: {net} is in trusted_networks, which are never banned; remove it there first"
        ));
    }
    let duration = match &v["duration"] {
        serde_json::Value::Null => ctx.bans.default_duration(),
        serde_json::Value::Number(n) => match n.as_u64() {
            Some(s) => std::time::Duration::from_secs(s),
            None => return invalid("`duration`: expected whole seconds or a duration such as 2h"),
        },
        serde_json::Value::String(s) => match crate::config::keys::parse_duration(s) {
            Some(d) => d,
            None => return invalid("`duration`: expected a duration such as 30m, 2h or 7d"),
        },
        _ => return invalid("`duration`: expected whole seconds or a duration such as 2h"),
    };
    if duration.is_zero() || duration > crate::admission::bans::MAX_BAN {
        return invalid("`duration`: must be longer than 0s and at most 10 years");
    }
    let reason = match &v["reason"] {
        serde_json::Value::Null => "banned by an operator".to_string(),
        // Control characters would forge log lines: dropped.
        serde_json::Value::String(s) if s.len() <= 512 => {
            s.chars().filter(|c| !c.is_control()).collect()
        }
        _ => return invalid("`reason`: expected a text of at most 512 bytes"),
    };
    let bans = ctx.bans.clone();
    // The ban file is fsync'd: off the control plane's event loop.
    let done = tokio::task::spawn_blocking(move || bans.ban(net, duration, reason)).await;
    let Ok(done) = done else {
        return broken();
    };
    match done {
        Ok(b) => json(
            StatusCode::CREATED,
            serde_json::json!({ "ban": ban_json(&b) }),
        ),
        Err(e) => failed(e),
    }
}
