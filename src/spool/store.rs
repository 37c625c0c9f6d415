//! The JSON store: GoMail's layout, `data_dir/inbox/YYYY/MM/DD/msg_<unix>_<id>.json`.
//!
//! One file per accepted message, in GoMail's payload shape (see
//! `docs/architecture.md`): `recipient` is the first recipient, as GoMail
//! consumers expect, and `recipients` lists all. A file appears whole or not
//! at all, and writing a message that is already stored changes nothing:
//! each message is in the store exactly once. [`write_batch`] makes the
//! batch durable with one `syncfs` of the data_dir filesystem.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use std::borrow::Cow;

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use serde::Serialize;

use super::record::{Envelope, RawJson};

/// Where a message's JSON file goes.
pub fn path_for(data_dir: &Path, env: &Envelope) -> PathBuf {
    path_at(data_dir, env.received_at_ms, &env.id)
}

/// [`path_for`] from a message's time of acceptance and queue id.
pub fn path_at(data_dir: &Path, received_at_ms: i64, id: &str) -> PathBuf {
    let at = DateTime::from_timestamp_millis(received_at_ms).unwrap_or_default();
    data_dir
        .join("inbox")
        .join(format!("{:04}", at.year()))
        .join(format!("{:02}", at.month()))
        .join(format!("{:02}", at.day()))
        .join(file_name(received_at_ms, id))
}

/// GoMail's file name for a message, `msg_<unix>_<id>.json`; `id` is the
/// queue id, or a per-recipient webhook id (`<queue id>.<n>`) for a dead
/// letter.
pub fn file_name(received_at_ms: i64, id: &str) -> String {
    let at = DateTime::from_timestamp_millis(received_at_ms).unwrap_or_default();
    format!("msg_{}_{id}.json", at.timestamp())
}

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
        Ok(text) if !message.iter().any(control) => return (Cow::Borrowed(text), None),
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

/// Writes one message's JSON file so that readers only ever see it whole.
///
/// The file is created unnamed (`O_TMPFILE`), written, then given its name
/// with `linkat`: one directory operation, and a message that is already
/// in the store (a re-delivery after a crash) is left as it is. Where the
/// filesystem has no `O_TMPFILE`, a temporary name and a rename are used.
pub fn write_one(data_dir: &Path, env: &Envelope, message: &[u8]) -> std::io::Result<PathBuf> {
    let path = path_for(data_dir, env);
    // Written by an earlier try of the same batch (or run): see write_json.
    if path.exists() {
        return Ok(path);
    }
    write_json(&path, &payload(env, message, None))?;
    Ok(path)
}

/// Writes a message's payload, already built (the one its webhook POST
/// carried), as its store file `path` (from [`path_at`]).
pub fn write_json(path: &Path, json: &[u8]) -> std::io::Result<()> {
    // Written by an earlier try of the same batch (or run): the same
    // message, the same file. Writing it again would need room for a
    // second copy, which a nearly full disk does not have, and the retry
    // would never get past it.
    if path.exists() {
        return Ok(());
    }
    let dir = path.parent().expect("store paths have a parent");
    // Two writes, no copy: serde_json writing straight to a File would
    // make a system call per JSON fragment.
    let parts: [&[u8]; 2] = [json, b"\n"];
    match write_linked(dir, path, &parts) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            write_linked(dir, path, &parts)
        }
        other => other,
    }
}

fn write_linked(dir: &Path, path: &Path, json: &[&[u8]]) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let cdir = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: open with a valid C string; the descriptor is owned below.
    let fd = unsafe {
        libc::open(
            cdir.as_ptr(),
            libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL) => {
                write_renamed(dir, path, json)
            }
            _ => Err(e),
        };
    }
    // SAFETY: fd is a fresh descriptor we own.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    for part in json {
        f.write_all(part)?;
    }
    let src = CString::new(format!("/proc/self/fd/{fd}"))?;
    let dst = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid C strings.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            src.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
        // Already stored by an earlier run: the same message, the same file.
    }
    Ok(())
}

fn write_renamed(dir: &Path, path: &Path, json: &[&[u8]]) -> std::io::Result<()> {
    let name = path.file_name().expect("store paths have a file name");
    let tmp = dir.join(format!(".tmp_{}", name.to_string_lossy()));
    let mut f = std::fs::File::create(&tmp)?;
    for part in json {
        f.write_all(part)?;
    }
    std::fs::rename(&tmp, path)
}

/// A message for [`write_batch`].
pub enum Stored<'a> {
    /// Its envelope and octets: the payload is built here.
    Message(&'a Envelope, &'a [u8]),
    /// Its payload, built already (the webhook POST's), with what names
    /// its file.
    Built {
        received_at_ms: i64,
        id: &'a str,
        json: &'a [u8],
    },
}

/// Writes every message of a batch, then makes them durable with one
/// `syncfs` of the filesystem holding `data_dir`. Blocking: run it off the
/// shard's event loop.
pub fn write_batch(data_dir: &Path, batch: &[Stored<'_>]) -> std::io::Result<()> {
    if batch.is_empty() {
        // Only done records this time (messages the webhook delivered and
        // `store_mode` does not keep): no file, so nothing to make durable,
        // and a syncfs would only slow the spool's fdatasyncs.
        return Ok(());
    }
    for item in batch {
        match item {
            Stored::Message(env, message) => {
                write_one(data_dir, env, message)?;
            }
            Stored::Built {
                received_at_ms,
                id,
                json,
            } => write_json(&path_at(data_dir, *received_at_ms, id), json)?,
        }
    }
    let dir = std::fs::File::open(data_dir)?;
    // SAFETY: syncfs takes a valid open descriptor, which `dir` is.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Envelope {
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
    fn layout_is_gomails() {
        let p = path_for(Path::new("/d"), &env());
        assert_eq!(
            p,
            Path::new("/d/inbox/2025/11/30/msg_1764489600_0123456789abcdef.json")
        );
    }

    #[test]
    fn a_file_already_written_is_not_written_again() {
        // A retried batch on a nearly full disk: rewriting what is there
        // would need room for a second copy.
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(dir.path(), &env());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"kept").unwrap();
        assert_eq!(
            write_one(dir.path(), &env(), b"Subject: x\r\n\r\ny").unwrap(),
            path
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
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

#[cfg(test)]
mod write_tests {
    use super::*;

    #[test]
    fn writing_twice_keeps_one_whole_file() {
        let tmp = tempfile::tempdir().unwrap();
        let env = crate::spool::record::test_envelope("00000000000000aa");
        let p1 = write_one(tmp.path(), &env, b"Subject: one\r\n\r\nx\r\n").unwrap();
        let p2 = write_one(tmp.path(), &env, b"Subject: one\r\n\r\nx\r\n").unwrap();
        assert_eq!(p1, p2);
        let dir: Vec<_> = std::fs::read_dir(p1.parent().unwrap()).unwrap().collect();
        assert_eq!(dir.len(), 1, "no temporary files are left behind");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p1).unwrap()).unwrap();
        assert_eq!(v["subject"], "one");
    }
}
