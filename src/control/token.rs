//! Tokens: which requests may go on. `admin_token` for management,
//! `bearer_token` or `admin_token` for `/mail/inbound`; compared in
//! constant time; every refusal and every success is an audit event, and
//! no token is ever logged.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::{error, error_with, Answer, Call, Ctx, REQUEST_ID};

/// The token of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive, RFC 7235).
fn presented_token(req: &Request<Incoming>) -> Option<&str> {
    let v = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Checks the request's token against `admin_token` (management
/// endpoints); `Some(refusal)` when the request may not go on.
pub(super) fn refuse_unauthorized(
    req: &Request<Incoming>,
    ctx: &Ctx,
    call: &Call,
) -> Option<Answer> {
    refuse_unless(
        req,
        ctx,
        call,
        &[ctx.cfg().admin_token.as_deref()],
        "the management API is off: set admin_token (bearer_token is the webhook's credential and is not accepted here)",
    )
}

/// Checks the request's token against `accepted` (unset ones skipped);
/// `Some(refusal)` when the request may not go on: 403 with `off` when
/// none is set, else 401. Failures and successes are audit events; a
/// token itself is never logged.
pub(super) fn refuse_unless(
    req: &Request<Incoming>,
    ctx: &Ctx,
    call: &Call,
    accepted: &[Option<&str>],
    off: &str,
) -> Option<Answer> {
    let id = REQUEST_ID.try_with(String::clone).unwrap_or_default();
    let tokens: Vec<&str> = accepted.iter().flatten().copied().collect();
    if tokens.is_empty() {
        return Some(error(StatusCode::FORBIDDEN, "forbidden", off));
    }
    let reason = match presented_token(req) {
        None => "missing_token",
        // Constant time: the comparison does not reveal where the token
        // differs (each accepted token is compared, whichever matches).
        Some(p)
            if tokens
                .iter()
                .map(|t| {
                    aws_lc_rs::constant_time::verify_slices_are_equal(p.as_bytes(), t.as_bytes())
                        .is_ok()
                })
                .fold(false, |a, b| a | b) =>
        {
            tracing::info!(event = "authentication_succeeded", ip = %call.client, request_id = %id, endpoint = %call.endpoint, method = %req.method(), "API call");
            return None;
        }
        Some(_) => "invalid_token",
    };
    ctx.http.lock().expect("http stats").auth_failures += 1;
    tracing::warn!(event = "authentication_failed", ip = %call.client, request_id = %id, endpoint = %call.endpoint, reason, "API request refused");
    Some(error_with(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Invalid or missing bearer token",
        serde_json::json!({ "reason": reason }),
    ))
}
