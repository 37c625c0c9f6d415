//! The answer of `gomail ssl status` and `GET /api/v1/ssl`: the same JSON
//! whether a running server or the command line builds it.

use super::store::State;
use super::{AcmeSettings, CertInfo};

/// The certificate in place and the renewal state, as JSON. `next_renewal`
/// is the renewal loop's plan when a server runs, else when the loop of a
/// started server would renew.
pub fn status_json(s: &AcmeSettings, state: &State, now: i64) -> serde_json::Value {
    let cert = CertInfo::read(&s.cert_file);
    let certificate = match &cert {
        Ok(c) => serde_json::json!({
            "issuer": c.issuer,
            "names": c.names,
            "not_before": rfc3339(c.not_before),
            "not_after": rfc3339(c.not_after),
            "days_left": (c.not_after - now).div_euclid(86_400),
            "self_signed": c.self_signed,
            "covers_acme_domains": c.covers(&s.domains),
        }),
        Err(_) => serde_json::Value::Null,
    };
    let next = state
        .next_renewal
        .or_else(|| s.has_account().then(|| s.due_at(now).max(now)));
    serde_json::json!({
        "cert_file": s.cert_file.display().to_string(),
        "key_file": s.key_file.display().to_string(),
        "certificate": certificate,
        "certificate_error": cert.err(),
        "domains": s.domains,
        "directory": s.directory,
        "account": s.has_account(),
        "next_renewal": next.map(rfc3339),
        "last_attempt": state.last_attempt.map(rfc3339),
        "last_success": state.last_success.map(rfc3339),
        "last_error": state.last_error,
        "failures": state.failures,
    })
}

/// Unix seconds as RFC 3339 (UTC).
pub fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| t.to_string())
}
