//! GoMail's JSON payload for a message: what the webhook POSTs and the
//! JSON store writes (field by field in `docs/architecture.md`).
//!
//! [`PayloadParts`] builds it once per message (the MIME parse and the
//! escaping of `raw` are most of its cost) and splices each recipient in;
//! [`payload`] is one recipient's.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::spool::{Envelope, RawJson};

fn received_at(env: &Envelope) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(env.received_at_ms).unwrap_or_default()
}

/// The GoMail-compatible JSON payload for a message, serialized:
/// `recipient` is `recipient` when given (one webhook POST per recipient),
/// else the first recipient.
pub fn payload(env: &Envelope, message: &[u8], recipient: Option<&str>) -> Vec<u8> {
    PayloadParts::new(env, message)
        .with_recipient(recipient.or(env.recipients.first().map(String::as_str)))
}

/// A message's payload, built once (the MIME parse and the escaping of
/// `raw` are most of its cost), with the one field that differs between
/// recipients left out: [`PayloadParts::with_recipient`] splices it in.
#[derive(Debug, Clone)]
pub struct PayloadParts {
    /// `{` … every field before `recipient`, then `,"recipient":`.
    head: Vec<u8>,
    /// `,` … every field after `recipient`, then `}`.
    tail: Vec<u8>,
}

impl PayloadParts {
    /// The JSON for `recipient` (the first of the envelope's when `None`
    /// is given by [`payload`]; an empty string here).
    pub fn with_recipient(&self, recipient: Option<&str>) -> Vec<u8> {
        let r = serde_json::to_vec(recipient.unwrap_or_default()).expect("a string serializes");
        let mut out = Vec::with_capacity(self.head.len() + r.len() + self.tail.len());
        out.extend_from_slice(&self.head);
        out.extend_from_slice(&r);
        out.extend_from_slice(&self.tail);
        out
    }

    /// Octets of the payload without its recipient.
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// Never true: a payload always has fields.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Builds the parts of `message`'s payload.
    pub fn new(env: &Envelope, message: &[u8]) -> PayloadParts {
        let headers = HeaderFields::read(message);
        // The message is the sender's to shape; this runs on the webhook path
        // and in the store's blocking thread, where a panic would stop
        // delivery for the whole shard. Should the parser ever panic on it,
        // the payload goes out with the raw Subject and no attachment count.
        let parsed = std::panic::catch_unwind(|| {
        parser().parse(message).map(|m| {
            let subject = m.subject().map(str::to_string);
            (subject, m.attachment_count())
        })
    })
    .unwrap_or_else(|_| {
        tracing::error!(bytes = message.len(), "the MIME parser panicked on a message; its payload has the raw Subject and no attachment count");
        None
    });
        let (decoded_subject, attachments) = parsed.unwrap_or((None, 0));
        let subject = decoded_subject
            .as_deref()
            .or(headers.subject.as_deref())
            .unwrap_or_default();
        let (raw, raw_base64) = raw_text(message);
        let received_at = received_at(env).to_rfc3339_opts(SecondsFormat::Secs, true);
        let head = Head {
            authentication: env.authentication.as_ref(),
            from_header: headers.from.as_deref().unwrap_or_default(),
            message_id: headers.message_id.as_deref().unwrap_or_default(),
            metadata: Metadata {
                attachments,
                client_ip: &env.client_ip,
                helo: &env.helo,
                processing_time_ms: env.spool_us / 1000,
                queue_id: &env.id,
                raw_base64,
                request_id: env.request_id.as_deref().unwrap_or(&env.id),
                shard: env.shard,
                size_bytes: message.len(),
                smtp: Smtp {
                    body_8bitmime: env.eight_bit,
                    chunking: env.chunked,
                    esmtp: env.esmtp,
                    smtputf8: env.smtputf8,
                },
                timing: Timing {
                    spool_fdatasync_us: env.spool_us,
                },
                tls: env.tls_version.as_deref().map(|version| Tls {
                    cipher: env.tls_cipher.as_deref(),
                    requiretls: env.require_tls,
                    sni: env.tls_sni.as_deref(),
                    version,
                }),
            },
            raw: &raw,
            received_at: &received_at,
        };
        let tail = Tail {
            recipients: &env.recipients,
            sender: &env.mail_from,
            subject,
            to_header: headers.to.as_deref().unwrap_or_default(),
        };
        // The raw message dominates: room for it, its escapes and the rest.
        let mut h = Vec::with_capacity(message.len() + message.len() / 16 + 2048);
        serde_json::to_writer(&mut h, &head).expect("payload serializes");
        // `{…}` → `{…,"recipient":` and `{…}` → `,…}`: two objects of
        // distinct fields joined around the one that differs.
        h.pop();
        h.extend_from_slice(b",\"recipient\":");
        let mut t = serde_json::to_vec(&tail).expect("payload serializes");
        t[0] = b',';
        PayloadParts { head: h, tail: t }
    }
}

/// `raw` as a JSON string can carry it, and the exact octets base64-encoded
/// when it cannot carry them unchanged.
///
/// Text (UTF-8 without control characters other than TAB, CR and LF, i.e.
/// nearly every message) goes as it is: its JSON form is its size plus a
/// backslash per quote, backslash, TAB, CR and LF. Octets that are not
/// UTF-8, and the other control characters (which JSON could carry only
/// as six-octet `\u00XX` escapes), are each replaced by U+FFFD in `raw`,
/// and `metadata.raw_base64` carries the exact message. So `raw` is at
/// most 3× the message (an octet of garbage becomes the three octets of
/// U+FFFD), `raw_base64` 4/3×, and text never grows past 2×.
fn raw_text(message: &[u8]) -> (Cow<'_, str>, Option<String>) {
    let control = |b: &u8| *b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n');
    // `from_utf8` first: its check is several times faster than the lossy
    // conversion's, and almost every message passes it.
    let text = match std::str::from_utf8(message) {
        Ok(text) if !has_control(message) => return (Cow::Borrowed(text), None),
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(message),
    };
    let clean: String = text
        .chars()
        .map(|c| {
            if c.is_ascii() && control(&(c as u8)) {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect();
    (
        Cow::Owned(clean),
        Some(crate::delivery::sign::base64_encode(message)),
    )
}

/// Whether `octets` hold a control character other than TAB, CR and LF.
/// Folded over fixed chunks without an early exit inside one, so the
/// compiler vectorizes it: about 0.06 ms per MB where `iter().any()` took
/// 0.45 (the scan runs over every message).
fn has_control(octets: &[u8]) -> bool {
    octets.chunks(256).any(|chunk| {
        chunk.iter().fold(0u8, |acc, &b| {
            acc | u8::from((b < 0x20) & (b != b'\t') & (b != b'\n') & (b != b'\r'))
        }) != 0
    })
}

// The payload's fields in alphabetical order, as GoMail's JSON has them:
// those before `recipient`, then those after it.

#[derive(Serialize)]
struct Head<'a> {
    authentication: Option<&'a RawJson>,
    from_header: &'a str,
    message_id: &'a str,
    metadata: Metadata<'a>,
    raw: &'a str,
    received_at: &'a str,
}

#[derive(Serialize)]
struct Tail<'a> {
    recipients: &'a [String],
    sender: &'a str,
    subject: &'a str,
    to_header: &'a str,
}

#[derive(Serialize)]
struct Metadata<'a> {
    attachments: usize,
    client_ip: &'a str,
    helo: &'a str,
    processing_time_ms: u64,
    queue_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_base64: Option<String>,
    request_id: &'a str,
    shard: usize,
    size_bytes: usize,
    smtp: Smtp,
    timing: Timing,
    tls: Option<Tls<'a>>,
}

#[derive(Serialize)]
struct Smtp {
    body_8bitmime: bool,
    chunking: bool,
    esmtp: bool,
    smtputf8: bool,
}

#[derive(Serialize)]
struct Timing {
    spool_fdatasync_us: u64,
}

#[derive(Serialize)]
struct Tls<'a> {
    cipher: Option<&'a str>,
    requiretls: bool,
    sni: Option<&'a str>,
    version: &'a str,
}

/// The first occurrence of a few header fields, unfolded, as written.
#[derive(Debug, Default)]
struct HeaderFields {
    subject: Option<String>,
    message_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

impl HeaderFields {
    fn read(message: &[u8]) -> HeaderFields {
        const NAMES: [&str; 4] = ["subject", "message-id", "from", "to"];
        let mut found: [Option<String>; 4] = Default::default();
        let end = find(message, b"\r\n\r\n").unwrap_or(message.len());
        let text = String::from_utf8_lossy(&message[..end]);
        // The kept field that folded lines continue; only the fields kept
        // are copied.
        let mut current = None;
        for line in text.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(v) = current.and_then(|i: usize| found[i].as_mut()) {
                    v.push(' ');
                    v.push_str(line.trim());
                }
            } else if let Some((name, value)) = line.split_once(':') {
                let name = name.trim();
                current = NAMES
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case(name))
                    .filter(|&i| found[i].is_none());
                if let Some(i) = current {
                    found[i] = Some(value.trim().to_string());
                }
            }
        }
        let [subject, message_id, from, to] = found;
        HeaderFields {
            subject,
            message_id,
            from,
            to,
        }
    }
}

/// The payload needs the decoded Subject and the MIME structure (to count
/// attachments): other header fields are skipped, not parsed (a Received
/// field's full parse cost more than all the rest).
fn parser() -> &'static mail_parser::MessageParser {
    static PARSER: std::sync::LazyLock<mail_parser::MessageParser> =
        std::sync::LazyLock::new(|| {
            mail_parser::MessageParser::new()
                .with_mime_headers()
                .header_text(mail_parser::HeaderName::Subject)
                .default_header_ignore()
        });
    &PARSER
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A two-recipient envelope for the payload's and the store's tests.
    pub(crate) fn env() -> Envelope {
        Envelope {
            id: "0123456789abcdef".into(),
            recipients: vec!["r@example.test".into(), "s@example.test".into()],
            shard: 1,
            spool_us: 2500,
            request_id: None,
            ..crate::spool::record::test_envelope("")
        }
    }

    #[test]
    fn parts_splice_each_recipient_into_one_build() {
        let msg = b"From: a@b.example\r\nSubject: s\r\n\r\nbody \\ \"quoted\"\r\n";
        let parts = PayloadParts::new(&env(), msg);
        for r in ["r@example.test", "s@example.test", "we\"ird\\@x.example"] {
            let bytes = parts.with_recipient(Some(r));
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["recipient"], r);
            assert_eq!(v["raw"], std::str::from_utf8(msg).unwrap());
            assert_eq!(v["recipients"][1], "s@example.test");
            let text = String::from_utf8(bytes).unwrap();
            let at = |k: &str| text.find(&format!("\"{k}\":")).unwrap();
            assert!(at("received_at") < at("recipient") && at("recipient") < at("recipients"));
        }
        // The store's payload is the first recipient's.
        assert_eq!(
            payload(&env(), msg, None),
            parts.with_recipient(Some("r@example.test"))
        );
    }

    #[test]
    fn payload_has_gomail_fields() {
        let msg = b"From: John <a@b.example>\r\nTo: R <r@example.test>\r\nSubject: =?UTF-8?B?SMOpbGxv?=\r\n  there\r\nMessage-ID: <id1@b.example>\r\n\r\nbody\r\n";
        let v: serde_json::Value = serde_json::from_slice(&payload(&env(), msg, None)).unwrap();
        assert_eq!(v["sender"], "a@b.example");
        assert_eq!(v["recipient"], "r@example.test");
        assert_eq!(v["recipients"][1], "s@example.test");
        assert_eq!(v["received_at"], "2025-11-30T08:00:00Z");
        assert_eq!(v["subject"], "Héllo there");
        assert_eq!(v["message_id"], "<id1@b.example>");
        assert_eq!(v["from_header"], "John <a@b.example>");
        assert_eq!(v["to_header"], "R <r@example.test>");
        assert_eq!(v["raw"], std::str::from_utf8(msg).unwrap());
        assert_eq!(v["metadata"]["size_bytes"], msg.len());
        assert_eq!(v["metadata"]["processing_time_ms"], 2);
        assert!(v["metadata"].get("raw_base64").is_none());
    }

    /// Scrambled MIME (boundaries, encodings, folding, odd octets) never
    /// panics and always gives valid JSON with the raw message in it.
    #[test]
    fn scrambled_mime_always_gives_a_payload() {
        const PARTS: [&[u8]; 14] = [
            b"Content-Type: multipart/mixed; boundary=\"b\"\r\n",
            b"Content-Type: message/rfc822\r\n",
            b"Content-Transfer-Encoding: base64\r\n",
            b"Content-Transfer-Encoding: quoted-printable\r\n",
            b"Subject: =?UTF-8?B?",
            b"=?x?Q?=FF=",
            b"\r\n--b\r\n",
            b"\r\n--b--\r\n",
            b"\r\n\r\n",
            b"\r\n ",
            b"Content-Disposition: attachment; filename=",
            b"\xff\xfe\x00\xc3",
            b"A===",
            b"=\r\n",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..5_000 {
            let mut m = Vec::new();
            for _ in 0..rng.usize(1..40) {
                m.extend_from_slice(PARTS[rng.usize(..PARTS.len())]);
            }
            let v: serde_json::Value = serde_json::from_slice(&payload(&env(), &m, None)).unwrap();
            assert_eq!(v["metadata"]["size_bytes"], m.len());
        }
    }

    #[test]
    fn non_utf8_messages_keep_their_exact_octets() {
        let msg = b"Subject: x\r\n\r\n\xff\xfe\r\n";
        let v: serde_json::Value = serde_json::from_slice(&payload(&env(), msg, None)).unwrap();
        assert_eq!(v["metadata"]["raw_base64"], "U3ViamVjdDogeA0KDQr//g0K");
        assert_eq!(v["raw"], "Subject: x\r\n\r\n\u{fffd}\u{fffd}\r\n");
    }

    #[test]
    fn control_characters_are_found_anywhere_and_tab_cr_lf_are_text() {
        let mut text = b"a\tb\r\n".repeat(200);
        assert!(!has_control(&text));
        for at in [0, 255, 256, 511, text.len() - 1] {
            for b in [0u8, 1, 0x0b, 0x0c, 0x1b, 0x1f] {
                let keep = text[at];
                text[at] = b;
                assert!(has_control(&text), "{b:#x} at {at}");
                text[at] = keep;
            }
        }
        assert!(!has_control(b"\x7f\x20~"), "DEL and printable are not");
    }

    #[test]
    fn the_json_form_of_raw_is_bounded_by_the_message_size() {
        // Text goes as it is, with no raw_base64.
        let text = b"Subject: t\r\n\r\nplain \"text\"\twith tabs\r\n";
        let v: serde_json::Value = serde_json::from_slice(&payload(&env(), text, None)).unwrap();
        assert_eq!(v["raw"].as_str().unwrap().as_bytes(), text);
        assert!(v["metadata"].get("raw_base64").is_none());
        // A megabyte of control octets: each would be a six-octet \u00XX
        // escape; it is three octets in raw and 4/3 in raw_base64.
        let mut garbage = b"Subject: c\r\n\r\n".to_vec();
        garbage.extend((0..1_000_000).map(|i| [1u8, 2, 0x1b, 0x7f, 0][i % 5]));
        let json = payload(&env(), &garbage, None);
        assert!(
            json.len() < garbage.len() * 3 + garbage.len() * 4 / 3 + 4096,
            "{} octets of JSON for {} octets",
            json.len(),
            garbage.len()
        );
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert!(!v["raw"].as_str().unwrap().contains('\u{1b}'));
        assert_eq!(
            crate::delivery::sign::base64_decode(v["metadata"]["raw_base64"].as_str().unwrap()),
            Some(garbage)
        );
    }
}
