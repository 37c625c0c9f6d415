//! `POST /mail/inbound`: GoMail's injection endpoint. The body is
//! `{"sender","recipient","raw"}` plus optional `client_ip` and `helo`
//! (which feed SPF when given); the message goes through a shard like SMTP
//! mail: DKIM/DMARC, the durable spool (fsync'd before the answer), the
//! webhook and the store. Answered `{"status":"success","message",
//! "request_id","queue_id"}`.

use std::sync::atomic::Ordering;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::{error, error_with, invalid, json, json_body_within, Answer, Ctx, REQUEST_ID};
use crate::server::Injected;

/// The message with every line ending in CRLF (a JSON client writes `\n`).
fn crlf(raw: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    let mut prev = 0u8;
    for &b in raw.as_bytes() {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

pub(super) async fn post(req: Request<Incoming>, ctx: &Ctx) -> Answer {
    // JSON escaping can double a message's size; more is refused.
    let cfg = ctx.cfg();
    let limit = (cfg.max_message_size as usize).saturating_mul(2) + 64 * 1024;
    let v = match json_body_within(req, ctx, limit).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let text = |k: &str| v[k].as_str();
    let Some(sender) = text("sender") else {
        return invalid(
            "sender",
            "`sender`: expected the envelope sender, a string (\"\" for <>)",
        );
    };
    let Some(recipient) = text("recipient") else {
        return invalid("recipient", "`recipient`: expected an address, a string");
    };
    let Some(raw) = text("raw") else {
        return invalid("raw", "`raw`: expected the whole message, a string");
    };
    let address_like = |a: &str| {
        a.len() <= 256
            && a.rsplit_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
            && !a
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>')
    };
    let ours = address_like(recipient)
        && recipient
            .rsplit_once('@')
            .is_some_and(|(_, domain)| cfg.domains.iter().any(|d| d.eq_ignore_ascii_case(domain)));
    if !ours {
        return invalid(
            "recipient",
            &format!(
                "`recipient`: {recipient:?} is not an address at one of our domains ({})",
                cfg.domains.join(", ")
            ),
        );
    }
    if !sender.is_empty() && !address_like(sender) {
        return invalid(
            "sender",
            "`sender`: expected an address (local@domain, no spaces or control characters) or \"\"",
        );
    }
    let client_ip = match &v["client_ip"] {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => match s.parse::<std::net::IpAddr>() {
            Ok(ip) => Some(ip.to_canonical()),
            Err(_) => return invalid("client_ip", "`client_ip`: expected an IP address"),
        },
        _ => return invalid("client_ip", "`client_ip`: expected an IP address"),
    };
    // What EHLO takes: one name, or an address literal (which may hold
    // a space), of printable ASCII.
    let helo = match &v["helo"] {
        serde_json::Value::Null => None,
        serde_json::Value::String(s)
            if !s.is_empty()
                && s.len() <= 255
                && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
                && (!s.contains(' ') || s.starts_with('[')) =>
        {
            Some(s.clone())
        }
        _ => {
            return invalid(
                "helo",
                "`helo`: expected the client's EHLO name, one host name or address literal",
            )
        }
    };
    // `validation.reject_invalid_domains`, as at MAIL: the exemption is
    // the SMTP client's (`client_ip` in trusted_networks), never the API
    // caller's own address, which forwards someone else's sender.
    if cfg.reject_non_fqdn_sender
        && !client_ip.is_some_and(|ip| cfg.trusted.contains(ip))
        && sender
            .rsplit_once('@')
            .is_some_and(|(_, domain)| !crate::smtp::command::is_fqdn(domain))
    {
        let reply = crate::smtp::Reply::non_fqdn_sender(sender);
        return error_with(
            StatusCode::BAD_REQUEST,
            "validation_error",
            &format!(
                "`sender`: {sender:?} is not fully qualified (validation.reject_invalid_domains)"
            ),
            serde_json::json!({
                "field": "sender",
                "smtp_reply": format!("{} {} {}", reply.code, reply.status, reply.text),
            }),
        );
    }
    let raw = crlf(raw);
    if raw.len() as u64 > cfg.max_message_size {
        return error_with(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("the message is {} octets, over max_message_size", raw.len()),
            serde_json::json!({ "max_message_size": cfg.max_message_size }),
        );
    }
    // The text rules of DATA, on the octets SMTP would have received: a
    // bare CR (an LF was made a line end above) or a line over 1000
    // octets is refused, as DATA refuses it (docs/security.md).
    if let Some(reply) = crate::smtp::data::text_refusal(&raw) {
        return error_with(
            StatusCode::BAD_REQUEST,
            "validation_error",
            if reply == crate::smtp::Reply::BARE_NEWLINE_DATA {
                "`raw`: a bare CR (one not followed by LF); end lines with LF or CRLF, \
                 as SMTP refuses the same message"
            } else {
                "`raw`: a line longer than 1000 octets with its CRLF (RFC 5321 section \
                 4.5.3.1.6), as SMTP refuses the same message"
            },
            serde_json::json!({
                "field": "raw",
                "smtp_reply": format!("{} {} {}", reply.code, reply.status, reply.text),
            }),
        );
    }
    let request_id = REQUEST_ID.try_with(String::clone).unwrap_or_default();
    let msg = Injected {
        sender: sender.to_string(),
        recipient: recipient.to_string(),
        raw,
        client_ip,
        helo,
        request_id: request_id.clone(),
    };
    let n = ctx.next_shard.fetch_add(1, Ordering::Relaxed);
    match ctx.stats.inject(n, msg).await {
        Some(Ok(queue_id)) => json(
            StatusCode::OK,
            serde_json::json!({
                "status": "success",
                "message": "Email received and queued",
                "request_id": request_id,
                "queue_id": queue_id,
            }),
        ),
        // A temporary refusal (backlog full, spool or DNS failure): try again.
        Some(Err(reply)) if reply.code < 500 => {
            let mut r = error_with(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                &format!(
                    "not accepted now, try again later: {} {}",
                    reply.code, reply.text
                ),
                serde_json::json!({ "smtp_reply": format!("{} {} {}", reply.code, reply.status, reply.text) }),
            );
            r.headers_mut().insert("retry-after", 60u32.into());
            r
        }
        Some(Err(reply)) => error_with(
            StatusCode::BAD_REQUEST,
            "validation_error",
            &format!("refused: {} {}", reply.code, reply.text),
            serde_json::json!({ "smtp_reply": format!("{} {} {}", reply.code, reply.status, reply.text) }),
        ),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "the shard did not answer; try again",
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_end_in_crlf() {
        assert_eq!(super::crlf("a\nb\r\nc"), b"a\r\nb\r\nc\r\n");
        assert_eq!(super::crlf("x\r\n"), b"x\r\n");
    }
}
