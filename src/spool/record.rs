//! The on-disk record format of spool segments.
//!
//! ```text
//! header (16 octets): "GMS1" | kind u8 | 0 0 0 | payload length u32 LE | CRC-32 of payload u32 LE
//! message payload:    envelope JSON length u32 LE | envelope JSON | message octets
//! done payload:       queue id (ASCII)
//! ```
//! A record whose header or CRC does not check marks the torn tail of a
//! segment written during a crash: reading stops there. Such a record was
//! never acknowledged, because `250` follows the fdatasync that covers it.

use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 4] = b"GMS1";
const HEADER: usize = 16;
const KIND_MESSAGE: u8 = 1;
const KIND_DONE: u8 = 2;

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

/// A decoded record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Record {
    /// A message and its envelope.
    Message(Box<Envelope>, Vec<u8>),
    /// The message with this id is in the store.
    Done(String),
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

/// Decodes the records of a segment, stopping at the first that does not check.
/// Returns the records and whether the segment ended cleanly: at its end,
/// or where its zero-filled (preallocated, never written) part begins.
pub(crate) fn decode_all(mut data: &[u8]) -> (Vec<Record>, bool) {
    let mut out = Vec::new();
    while !data.is_empty() {
        let Some(rec) = decode_one(data) else {
            return (out, data.iter().all(|&b| b == 0));
        };
        data = &data[rec.1..];
        out.push(rec.0);
    }
    (out, true)
}

fn decode_one(data: &[u8]) -> Option<(Record, usize)> {
    if data.len() < HEADER || &data[..4] != MAGIC {
        return None;
    }
    let kind = data[4];
    let len = u32::from_le_bytes(data[8..12].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(data[12..16].try_into().ok()?);
    let payload = data.get(HEADER..HEADER + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let rec = match kind {
        KIND_MESSAGE => {
            let mlen = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
            let meta = payload.get(4..4 + mlen)?;
            let env: Envelope = serde_json::from_slice(meta).ok()?;
            Record::Message(Box::new(env), payload[4 + mlen..].to_vec())
        }
        KIND_DONE => Record::Done(String::from_utf8(payload.to_vec()).ok()?),
        _ => return None,
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
mod tests {
    use super::*;

    fn env(id: &str) -> Envelope {
        test_envelope(id)
    }

    #[test]
    fn records_round_trip_and_torn_tails_stop_reading() {
        let mut seg = encode_message(&env("A"), b"Received: x\r\n", b"body\r\n");
        encode_done("A", &mut seg);
        let second = encode_message(&env("B"), b"", b"two");
        seg.extend_from_slice(&second);
        let (recs, clean) = decode_all(&seg);
        assert!(clean);
        assert_eq!(recs.len(), 3);
        assert_eq!(
            recs[0],
            Record::Message(Box::new(env("A")), b"Received: x\r\nbody\r\n".to_vec())
        );
        assert_eq!(recs[1], Record::Done("A".into()));
        for cut in 1..second.len() {
            let (recs, clean) = decode_all(&seg[..seg.len() - cut]);
            assert!(!clean);
            assert_eq!(recs.len(), 2, "cut {cut}");
        }
        let mut padded = seg.clone();
        padded.extend(std::iter::repeat_n(0u8, 4096));
        let (recs, clean) = decode_all(&padded);
        assert!(clean);
        assert_eq!(recs.len(), 3);
        let mut flipped = seg.clone();
        let n = flipped.len();
        flipped[n - 1] ^= 1;
        assert_eq!(decode_all(&flipped).0.len(), 2);
    }
}
