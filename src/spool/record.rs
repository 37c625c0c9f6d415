//! The on-disk record format of spool segments.
//!
//! ```text
//! header (16 octets): "GMS1" | kind u8 | 0 0 0 | payload length u32 LE | CRC-32 of payload u32 LE
//! message payload:    envelope JSON length u32 LE | envelope JSON | message octets
//! done payload:       queue id (ASCII)
//! progress payload:   progress JSON (a delivery's retry state, see [`Progress`])
//! ```
//! The CRC covers the payload only, so a record checks when its magic,
//! kind and length read, its payload fits in the segment, its CRC matches
//! and its payload parses.
//!
//! A record that does not check is one of two things:
//! - the torn tail of a segment: the last write before a crash, cut short
//!   before its fdatasync, so never acknowledged (`250` follows the
//!   fdatasync that covers it). Nothing after it checks, and it reaches
//!   past the end of the file or into whole sectors of zeros, where an
//!   unfinished write leaves off;
//! - damage (a bad disk, a stray write): [`decode_all`] skips to the next
//!   offset where a record checks and reports how many octets it skipped,
//!   so one bad record costs that record, not the rest of its segment.

use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 4] = b"GMS1";
const HEADER: usize = 16;
const KIND_MESSAGE: u8 = 1;
const KIND_DONE: u8 = 2;
const KIND_PROGRESS: u8 = 3;
/// Unfinished writes leave off at a multiple of this (a disk sector).
const SECTOR: usize = 512;
/// Queue ids are 16 hex digits; a done record's id is checked against a
/// looser shape (see [`plausible_id`]).
const ID_MAX: usize = 64;

/// A JSON document kept as its text: built once, then copied as it is into
/// the spool record, the store file and every webhook payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<serde_json::value::RawValue>);

impl RawJson {
    /// Serializes `value` once.
    pub fn new(value: &impl Serialize) -> RawJson {
        RawJson(serde_json::value::to_raw_value(value).expect("JSON serializes"))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &RawJson) -> bool {
        self.get() == other.get()
    }
}

impl Eq for RawJson {}

/// The envelope and trace data kept with each spooled message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Queue id, unique over shards and restarts.
    pub id: String,
    /// When the message was accepted, Unix milliseconds.
    pub received_at_ms: i64,
    /// Reverse-path; empty for the null sender.
    pub mail_from: String,
    /// Accepted recipients.
    pub recipients: Vec<String>,
    /// EHLO/HELO name.
    pub helo: String,
    /// Client IP address.
    pub client_ip: String,
    /// The client said EHLO.
    pub esmtp: bool,
    /// `BODY=8BITMIME`.
    pub eight_bit: bool,
    /// `SMTPUTF8`.
    pub smtputf8: bool,
    /// The body came by BDAT.
    pub chunked: bool,
    /// The shard that accepted it.
    pub shard: usize,
    /// TLS protocol version, if the session was encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    /// TLS cipher suite, if the session was encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cipher: Option<String>,
    /// The server name (SNI) the client asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_sni: Option<String>,
    /// `REQUIRETLS` was given (RFC 8689).
    #[serde(default)]
    pub require_tls: bool,
    /// GoMail's `authentication` object (SPF, DKIM, DMARC), if checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<RawJson>,
    /// Microseconds from the end of the message to the end of its fdatasync;
    /// 0 in the record itself (it is only known afterwards).
    #[serde(default)]
    pub spool_us: u64,
    /// The API request that injected it (`POST /mail/inbound`), for the
    /// payload's `metadata.request_id`; SMTP mail has none (its queue id
    /// stands in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Where one webhook delivery of a message stands, written to the spool
/// when it changes so that a restart resumes it: its attempt count and
/// backoff go on where they were, and the recipients of a message that
/// were served already are not posted again. The latest record for a
/// delivery wins; a message's done record makes them all moot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The delivery's `webhook-id`: the queue id, or `<queue id>.<n>` for
    /// recipient n of a message with several.
    pub id: String,
    /// Attempts made so far, over all runs.
    pub attempts: u32,
    /// Where the delivery stands.
    pub state: ProgressState,
    /// When the next attempt is due (Unix milliseconds), for `waiting`.
    #[serde(default)]
    pub due_ms: i64,
    /// When the first 401/403/404 came (Unix milliseconds), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_since_ms: Option<i64>,
}

/// See [`Progress::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressState {
    /// Waiting for its next attempt.
    Waiting,
    /// Delivered (2xx).
    Delivered,
    /// Written to the dead-letter folder.
    Dead,
}

impl Progress {
    /// The queue id of the message the delivery belongs to.
    pub fn queue_id(&self) -> &str {
        self.id.split_once('.').map_or(&self.id, |(q, _)| q)
    }
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// A message and its envelope.
    Message(Box<Envelope>, Vec<u8>),
    /// The message with this id is in the store.
    Done(String),
    /// A delivery's progress.
    Progress(Progress),
}

fn header(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[kind, 0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
}

/// Encodes a message record. The payload is written in place after room
/// for the header, which is filled in last: the body is copied once.
pub(crate) fn encode_message(env: &Envelope, prefix: &[u8], body: &[u8]) -> Vec<u8> {
    let meta = serde_json::to_vec(env).expect("envelope serializes");
    let mut out = Vec::with_capacity(HEADER + 4 + meta.len() + prefix.len() + body.len());
    out.resize(HEADER, 0);
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(prefix);
    out.extend_from_slice(body);
    let mut head = Vec::with_capacity(HEADER);
    header(KIND_MESSAGE, &out[HEADER..], &mut head);
    out[..HEADER].copy_from_slice(&head);
    out
}

/// Encodes a done record.
pub(crate) fn encode_done(id: &str, out: &mut Vec<u8>) {
    header(KIND_DONE, id.as_bytes(), out);
    out.extend_from_slice(id.as_bytes());
}

/// Encodes a progress record.
pub(crate) fn encode_progress(p: &Progress, out: &mut Vec<u8>) {
    let json = serde_json::to_vec(p).expect("progress serializes");
    header(KIND_PROGRESS, &json, out);
    out.extend_from_slice(&json);
}

/// The length of the record whose header starts `data` (header included),
/// as its header says: for a record [`decode_all`] found, its extent.
pub(crate) fn length_at(data: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?) as usize;
    HEADER.checked_add(len)
}

/// Decodes the one record that `data` holds exactly (one read back by
/// its location): `None` unless it checks and fills `data`.
pub(crate) fn decode_exact(data: &[u8]) -> Option<Record> {
    let mut budget = usize::MAX;
    match decode_one(data, &mut budget) {
        Some((rec, n)) if n == data.len() => Some(rec),
        _ => None,
    }
}

/// What [`decode_all`] read from a segment.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Decoded {
    /// Every record that checks, with its offset, in segment order.
    pub records: Vec<(usize, Record)>,
    /// Damaged places, each skipped up to the next record that checks (or
    /// to the end of the written part of the segment).
    pub damaged: Vec<Damaged>,
    /// Where a torn last record begins: a write cut short by a crash.
    pub torn_at: Option<usize>,
}

/// A damaged place in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damaged {
    /// Offset of the first octet that did not read as a record.
    pub offset: usize,
    /// Octets skipped from there.
    pub skipped: usize,
    /// What the damaged record seems to have been (unverified).
    pub what: Salvaged,
}

/// What a damaged record's header and envelope still say, for the operator
/// looking for it. Unverified: the damage may be in these octets too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Salvaged {
    /// The header does not read.
    Unknown,
    /// A message record with this queue id.
    Message(String),
    /// A done record for this queue id.
    Done(String),
}

impl Salvaged {
    /// The record kind, for logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Salvaged::Unknown => "unknown",
            Salvaged::Message(_) => "message",
            Salvaged::Done(_) => "done",
        }
    }

    /// The queue id it names, if any.
    pub(crate) fn queue_id(&self) -> Option<&str> {
        match self {
            Salvaged::Unknown => None,
            Salvaged::Message(id) | Salvaged::Done(id) => Some(id),
        }
    }
}

/// Decodes the records of a segment (see the module docs). The segment
/// ends at the end of `data` or where its zero-filled (preallocated,
/// never written) part begins.
pub(crate) fn decode_all(data: &[u8]) -> Decoded {
    let mut out = Decoded::default();
    // The written part ends at its last non-zero octet. A record may end
    // in zeros itself and reach past it; then what follows is zero fill.
    let written = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let mut budget = scan_budget(data.len());
    // Records read in order are each hashed once: no budget for them.
    let mut unmetered = usize::MAX;
    let mut pos = 0;
    while pos < written {
        if let Some((rec, n)) = decode_one(&data[pos..], &mut unmetered) {
            out.records.push((pos, rec));
            pos += n;
            continue;
        }
        match resync(data, pos, &mut budget) {
            Some(next) => {
                out.damaged.push(Damaged {
                    offset: pos,
                    skipped: next - pos,
                    what: salvage(&data[pos..]),
                });
                pos = next;
            }
            None if torn(data, pos, written) => {
                out.torn_at = Some(pos);
                break;
            }
            None => {
                out.damaged.push(Damaged {
                    offset: pos,
                    skipped: written - pos,
                    what: salvage(&data[pos..]),
                });
                break;
            }
        }
    }
    out
}

/// The CRC work a resync may do in a segment of `len` octets. Each offset
/// that starts with the magic is a candidate whose payload is hashed if its
/// length fits; a message body can hold many of them (only a damaged
/// record's body is ever scanned). Past the budget the rest of the segment
/// counts as damaged: bounded time at start-up, and the segment is kept.
fn scan_budget(len: usize) -> usize {
    len.saturating_mul(4).saturating_add(1 << 20)
}

/// The offset of the next record after `pos` that checks, if any.
///
/// Every offset is tried, even inside what the damaged record's length
/// says is its payload: that length may be the damaged part, and trusting
/// it could skip good records. A record found inside a damaged message's
/// body is taken as it is: it checks, and only a damaged record is ever
/// read that way.
fn resync(data: &[u8], pos: usize, budget: &mut usize) -> Option<usize> {
    let mut from = pos + 1;
    while let Some(i) = memchr::memmem::find(data.get(from..)?, MAGIC) {
        let at = from + i;
        if decode_one(&data[at..], budget).is_some() {
            return Some(at);
        }
        if *budget == 0 {
            return None;
        }
        from = at + 1;
    }
    None
}

/// Whether the record at `pos`, after which nothing checks, is an
/// unfinished write: it reaches past the end of the file, or into the zero
/// fill where that begins at a sector boundary. Damage to a complete last
/// record does neither (unless its own last octets are zeros ending at a
/// sector boundary: then it is taken for a torn write).
fn torn(data: &[u8], pos: usize, written: usize) -> bool {
    let rest = &data[pos..];
    let reach = match rest.get(..HEADER) {
        Some(h) if &h[..4] == MAGIC => {
            pos + HEADER + u32::from_le_bytes(h[8..12].try_into().expect("4 octets")) as usize
        }
        // A header that does not read reaches at least past itself.
        _ => pos + HEADER,
    };
    reach > data.len() || (reach > written && written.is_multiple_of(SECTOR))
}

/// Reads what a damaged record's header and envelope still say.
fn salvage(rest: &[u8]) -> Salvaged {
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    if rest.len() < HEADER || &rest[..4] != MAGIC {
        return Salvaged::Unknown;
    }
    let len = u32::from_le_bytes(rest[8..12].try_into().expect("4 octets")) as usize;
    let payload = &rest[HEADER..rest.len().min(HEADER.saturating_add(len))];
    match rest[4] {
        KIND_MESSAGE => payload
            .get(..4)
            .map(|l| u32::from_le_bytes(l.try_into().expect("4 octets")) as usize)
            .and_then(|mlen| payload.get(4..4usize.saturating_add(mlen)))
            .and_then(|meta| serde_json::from_slice::<Id>(meta).ok())
            .map_or(Salvaged::Unknown, |m| Salvaged::Message(m.id)),
        KIND_DONE if plausible_id(payload) => {
            Salvaged::Done(String::from_utf8_lossy(payload).into_owned())
        }
        _ => Salvaged::Unknown,
    }
}

/// A queue id as gomail writes them, loosely: 1 to [`ID_MAX`] printable
/// ASCII octets. Keeps a message payload whose kind octet was damaged into
/// "done" (the kind is outside the CRC) from reading as a done record.
fn plausible_id(id: &[u8]) -> bool {
    (1..=ID_MAX).contains(&id.len()) && id.iter().all(u8::is_ascii_graphic)
}

/// Decodes the record at the start of `data`, if it checks. The CRC is
/// computed only for a header that reads and a payload that fits, and is
/// charged to `budget` (nothing is hashed once it is spent).
fn decode_one(data: &[u8], budget: &mut usize) -> Option<(Record, usize)> {
    if data.len() < HEADER || &data[..4] != MAGIC {
        return None;
    }
    let kind = data[4];
    if !matches!(kind, KIND_MESSAGE | KIND_DONE | KIND_PROGRESS) {
        return None;
    }
    let len = u32::from_le_bytes(data[8..12].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(data[12..16].try_into().ok()?);
    // A length that points past the end of the segment does not read.
    let payload = data.get(HEADER..HEADER.checked_add(len)?)?;
    let Some(left) = budget.checked_sub(len) else {
        *budget = 0;
        return None;
    };
    *budget = left;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let rec = match kind {
        KIND_MESSAGE => {
            let mlen = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
            let meta = payload.get(4..4usize.checked_add(mlen)?)?;
            let env: Envelope = serde_json::from_slice(meta).ok()?;
            Record::Message(Box::new(env), payload[4 + mlen..].to_vec())
        }
        KIND_PROGRESS => Record::Progress(serde_json::from_slice(payload).ok()?),
        _ => {
            if !plausible_id(payload) {
                return None;
            }
            Record::Done(String::from_utf8(payload.to_vec()).ok()?)
        }
    };
    Some((rec, HEADER + len))
}

/// An envelope for tests of the spool and the store.
#[cfg(test)]
pub(crate) fn test_envelope(id: &str) -> Envelope {
    Envelope {
        id: id.into(),
        received_at_ms: 1_764_489_600_123, // 2025-11-30T08:00:00.123Z
        mail_from: "a@b.example".into(),
        recipients: vec!["r@example.test".into()],
        helo: "c.example".into(),
        client_ip: "127.0.0.1".into(),
        esmtp: true,
        eight_bit: false,
        smtputf8: false,
        chunked: false,
        shard: 0,
        tls_version: None,
        tls_cipher: None,
        tls_sni: None,
        require_tls: false,
        authentication: None,
        spool_us: 0,
        request_id: None,
    }
}

#[cfg(test)]
mod tests;
