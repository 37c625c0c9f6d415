//! A message's octets through what gomail does with them before and after
//! the spool: the strict header check, the renaming of forged
//! authentication fields, the signature limits and mail-auth's parse that
//! DKIM, ARC and DMARC start from, and the JSON payload (store file and
//! webhook body). No DNS is asked: the verifications themselves are not
//! run.
//!
//! Input layout: the message, as the session hands it over.

use base64::Engine as _;

use crate::auth::limits::{limit_signatures, DKIM_MAX_SIGNATURES};
use crate::payload::{payload, PayloadParts};
use crate::smtp::headers::{check, obscure_forged};
use crate::spool::Envelope;

const AUTHSERV: &str = "mx.example.test";

fn envelope() -> Envelope {
    Envelope {
        id: "Q1".into(),
        received_at_ms: 1_764_576_000_000,
        mail_from: "a@b.example".into(),
        recipients: vec!["r@example.test".into(), "s@example.test".into()],
        helo: "client.example".into(),
        client_ip: "192.0.2.7".into(),
        esmtp: true,
        ..Envelope::default()
    }
}

/// See the module docs.
pub fn message(msg: &[u8]) {
    let verdict = check(msg);
    if let Some(r) = &verdict {
        assert_eq!((r.code, r.status), (550, "5.6.0"));
        super::assert_reply(r);
    }

    if let Some(renamed) = obscure_forged(msg, AUTHSERV) {
        assert_ne!(renamed, msg, "nothing renamed");
        assert_eq!(
            obscure_forged(&renamed, AUTHSERV),
            None,
            "a forged field survived"
        );
        assert_eq!(
            check(&renamed),
            verdict,
            "renaming changed the header verdict"
        );
        // Line by line: the same, or renamed with the same value, or (when
        // the name would take it past 998 octets) renamed and folded after
        // the colon, the value on the next line.
        let before: Vec<&[u8]> = msg.split_inclusive(|&b| b == b'\n').collect();
        let after: Vec<&[u8]> = renamed.split_inclusive(|&b| b == b'\n').collect();
        let value = |l: &[u8]| {
            l.iter()
                .position(|&c| c == b':')
                .map(|i| l[i + 1..].to_vec())
        };
        let content = |l: &[u8]| {
            let l = l.strip_suffix(b"\n").unwrap_or(l);
            l.strip_suffix(b"\r").unwrap_or(l).len()
        };
        let mut b = after.iter();
        for a in &before {
            let next = *b.next().expect("renaming dropped a line");
            if *a == next {
                continue;
            }
            assert!(
                next.starts_with(b"X-Gomail-Forged-"),
                "renamed to {:?}",
                String::from_utf8_lossy(next)
            );
            if value(a) == value(next) {
                assert!(content(next) <= 998, "renamed past 998 octets");
                continue;
            }
            assert!(next.ends_with(b":\r\n"), "renaming changed a value");
            let folded = *b.next().expect("a fold with no value");
            let mut was = value(a).unwrap();
            if !matches!(was.first(), Some(b' ' | b'\t')) {
                was.insert(0, b' ');
            }
            assert_eq!(folded, was.as_slice(), "folding changed a value");
            assert!(
                content(next) <= 998 && content(folded) <= content(a).max(998),
                "a folded line past 998 octets"
            );
        }
        assert!(b.next().is_none(), "renaming added lines");
    }

    // A message gomail can hold has every LF after a CR (SMTP refuses
    // others; the API makes them CRLF): there, mail-auth sees no more
    // signature fields than the limit lets through.
    let limited = limit_signatures(msg);
    let parsed = mail_auth::AuthenticatedMessage::parse(&limited);
    let crlf_only = msg
        .iter()
        .enumerate()
        .all(|(i, &b)| b != b'\n' || (i > 0 && msg[i - 1] == b'\r'));
    if let (Some(m), true) = (&parsed, crlf_only) {
        let signatures = m.dkim_headers.len();
        assert!(
            signatures <= DKIM_MAX_SIGNATURES,
            "{signatures} DKIM signatures reach the verifier"
        );
        for (kind, n) in [
            ("ARC-Seal", m.as_headers.len()),
            ("ARC-Message-Signature", m.ams_headers.len()),
        ] {
            assert!(n <= 50, "{n} {kind} fields reach the verifier");
        }
        let _ = (m.from(), m.from.join(", "));
    }

    let env = envelope();
    let json = payload(&env, msg, None);
    let v: serde_json::Value = serde_json::from_slice(&json).expect("the payload is JSON");
    assert_eq!(v["recipient"], "r@example.test");
    assert_eq!(v["recipients"][1], "s@example.test");
    assert_eq!(v["metadata"]["size_bytes"], msg.len());
    let raw = v["raw"].as_str().expect("raw is a string");
    // `raw`'s JSON form is bounded: at most 3× the message, plus 4/3× for
    // `raw_base64`, never the 6× of \u00XX escapes.
    assert!(
        json.len() <= msg.len() * 3 + msg.len().div_ceil(3) * 4 + 64 * 1024,
        "{} octets of JSON for {} octets",
        json.len(),
        msg.len()
    );
    let control = |b: &u8| *b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n');
    match std::str::from_utf8(msg) {
        Ok(text) if !msg.iter().any(control) => {
            assert_eq!(raw, text, "raw differs from the message");
            assert!(v["metadata"].get("raw_base64").is_none());
        }
        _ => {
            assert!(
                !raw.bytes().any(|b| control(&b)),
                "a control character in raw"
            );
            let b64 = v["metadata"]["raw_base64"]
                .as_str()
                .expect("raw_base64 for 8-bit octets");
            let back = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("raw_base64 decodes");
            assert!(back == msg, "raw_base64 differs from the message");
        }
    }
    for field in ["subject", "from_header", "to_header", "message_id"] {
        assert!(v[field].is_string(), "{field} is not a string");
    }
    let parts = PayloadParts::new(&env, msg);
    let one = parts.with_recipient(Some("s@example.test"));
    let v2: serde_json::Value = serde_json::from_slice(&one).expect("a spliced payload is JSON");
    assert_eq!(v2["recipient"], "s@example.test");
    assert_eq!(parts.len() + "\"s@example.test\"".len(), one.len());
}
