//! Test messages: a realistic RFC 5322 header and plain-text body of an
//! exact size, and SMTP dot-stuffing for the DATA phase.
//!
//! A message is CRLF-only, every line at most [`MAX_LINE`] characters, and
//! it ends with CRLF, so the wire form is `dot_stuff(message)` followed by
//! [`TERMINATOR`] (together the usual `CRLF . CRLF`). The body deliberately
//! contains lines that start with a dot, including a line that is a lone
//! dot, so that the server's un-stuffing is exercised on every message.

use std::time::{SystemTime, UNIX_EPOCH};

/// Longest line, CRLF excluded (RFC 5322 §2.1.1 "SHOULD").
pub(crate) const MAX_LINE: usize = 78;
/// Ends the DATA phase; the stuffed message already ends with CRLF.
pub(crate) const TERMINATOR: &[u8] = b".\r\n";

const WORDS: &[&str] = &[
    "the",
    "quarterly",
    "report",
    "is",
    "attached",
    "for",
    "your",
    "review",
    "and",
    "we",
    "expect",
    "delivery",
    "of",
    "remaining",
    "items",
    "by",
    "friday",
    "please",
    "confirm",
    "that",
    "invoice",
    "numbers",
    "match",
    "our",
    "records",
    "meeting",
    "schedule",
    "was",
    "moved",
    "to",
    "room",
    "with",
    "a",
    "short",
    "agenda",
    "regarding",
    "budget",
    "planning",
    "next",
    "week",
    "thanks",
    "regards",
    "server",
    "capacity",
    "migration",
    "notes",
    "follow-up",
    "customer",
];

/// What every message of a run shares.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    pub(crate) from: String,
    pub(crate) to: String,
    /// Right-hand side of the Message-ID.
    pub(crate) domain: String,
    /// Makes Message-IDs unique across runs.
    pub(crate) run_id: String,
    /// RFC 5322 date, fixed for the run.
    pub(crate) date: String,
}

impl Template {
    /// A template dated now, with a run id from the clock and the pid.
    pub(crate) fn new(from: &str, to: &str, domain: &str) -> Template {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Template {
            from: from.to_string(),
            to: to.to_string(),
            domain: domain.to_string(),
            run_id: format!("lt{:x}.{}", now.as_micros(), std::process::id()),
            date: rfc5322_date(now.as_secs()),
        }
    }

    /// The header block, blank line included; `pad` appends one character
    /// to the Subject, to adjust the size by one.
    fn header(&self, seq: u64, pad: bool) -> String {
        let pad = if pad { "." } else { "" };
        format!(
            "From: Load Generator <{from}>\r\n\
             To: <{to}>\r\n\
             Subject: gomail load test message {seq}{pad}\r\n\
             Date: {date}\r\n\
             Message-ID: <{run}.{seq}@{domain}>\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\
             Content-Transfer-Encoding: 7bit\r\n\
             X-Loadtest-Seq: {seq}\r\n\
             \r\n",
            from = self.from,
            to = self.to,
            date = self.date,
            run = self.run_id,
            domain = self.domain,
        )
    }

    /// Smallest message size possible for `seq` (the header alone).
    pub(crate) fn min_size(&self, seq: u64) -> usize {
        self.header(seq, false).len()
    }

    /// Writes message `seq` of exactly `size` octets into `out` (cleared).
    pub(crate) fn build(&self, seq: u64, size: usize, out: &mut Vec<u8>) -> Result<(), String> {
        out.clear();
        let mut header = self.header(seq, false);
        if size.checked_sub(header.len()) == Some(1) {
            // A one-octet body cannot end with CRLF: grow the header instead.
            header = self.header(seq, true);
        }
        if header.len() > size {
            return Err(format!(
                "--size {size} is smaller than the message header ({} octets)",
                header.len()
            ));
        }
        if let Some(long) = header.split("\r\n").find(|l| l.len() > 998) {
            return Err(format!("header line over 998 octets: {long:.60}..."));
        }
        out.extend_from_slice(header.as_bytes());
        let mut rng = Rng(seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed);
        let mut n = 0u32;
        // Invariant: the octets still to write are 0 or at least 2 (CRLF).
        // Lines before the last take at most MAX_LINE + 2 of more than
        // MAX_LINE + 2 remaining, so at least 2 are left for the last.
        while out.len() < size {
            let remaining = size - out.len();
            n += 1;
            if remaining <= MAX_LINE + 2 {
                text(&mut rng, remaining - 2, out);
            } else {
                match n % 20 {
                    7 => {
                        // A line that needs stuffing ("..." ellipsis).
                        out.extend_from_slice(b"...");
                        text(&mut rng, 50, out);
                    }
                    13 => out.push(b'.'),
                    19 => {}
                    _ => {
                        let len = 56 + (rng.next() % 21) as usize;
                        text(&mut rng, len, out);
                    }
                }
            }
            out.extend_from_slice(b"\r\n");
        }
        debug_assert_eq!(out.len(), size);
        Ok(())
    }
}

/// Appends exactly `len` octets of words (no leading or trailing space).
fn text(rng: &mut Rng, len: usize, out: &mut Vec<u8>) {
    let start = out.len();
    while out.len() - start < len {
        if out.len() > start {
            out.push(b' ');
        }
        let w = WORDS[(rng.next() % WORDS.len() as u64) as usize];
        out.extend_from_slice(w.as_bytes());
    }
    out.truncate(start + len);
    if let Some(last) = out.last_mut().filter(|_| len > 0) {
        if *last == b' ' {
            *last = b'.';
        }
    }
}

/// Appends the dot-stuffed form of `msg` (RFC 5321 §4.5.2): a line that
/// starts with `.` gets one more. `msg` must be CRLF-only.
pub(crate) fn dot_stuff(msg: &[u8], out: &mut Vec<u8>) {
    for line in msg.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
}

/// A message read from a file (`--data-file`), sent as is every time:
/// returns its size and its wire form (dot-stuffed, with [`TERMINATOR`]).
/// A lone LF becomes CRLF and a missing final CRLF is added, so that the
/// file cannot end the DATA phase early or leave it open.
pub(crate) fn file_wire(file: &[u8]) -> Result<(usize, Vec<u8>), String> {
    if file.is_empty() {
        return Err("the file is empty".into());
    }
    let mut msg = Vec::with_capacity(file.len() + 2);
    for (i, &b) in file.iter().enumerate() {
        if b == b'\n' && (i == 0 || file[i - 1] != b'\r') {
            msg.push(b'\r');
        }
        msg.push(b);
    }
    if !msg.ends_with(b"\r\n") {
        msg.extend_from_slice(b"\r\n");
    }
    let mut wire = Vec::with_capacity(msg.len() + msg.len() / 32 + TERMINATOR.len());
    dot_stuff(&msg, &mut wire);
    wire.extend_from_slice(TERMINATOR);
    Ok((msg.len(), wire))
}

/// splitmix64: deterministic, varied filler without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `Tue, 14 Jul 2026 09:05:00 +0000` for seconds since the Unix epoch.
fn rfc5322_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (H. Hinnant), for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Template {
        Template::new(
            "sender@example.org",
            "rcpt@example.test",
            "loadgen.example.org",
        )
    }

    /// The lines of `msg`, each checked to end with CRLF, without it.
    fn lines(msg: &[u8]) -> Vec<&[u8]> {
        msg.split_inclusive(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r\n").expect("CRLF line ending"))
            .collect()
    }

    #[test]
    fn exact_size_and_line_rules() {
        let t = template();
        let mut m = Vec::new();
        let min = t.min_size(123_456);
        for size in (min..min + 300).chain([4096, 4097, 65_536, 1_000_003]) {
            t.build(123_456, size, &mut m).unwrap();
            assert_eq!(m.len(), size);
            for line in lines(&m) {
                assert!(!line.contains(&b'\r') && !line.contains(&b'\n'));
                assert!(line.len() <= MAX_LINE, "{} > {MAX_LINE}", line.len());
                assert!(line.is_ascii());
            }
        }
    }

    #[test]
    fn too_small_is_refused() {
        let t = template();
        let min = t.min_size(1);
        assert!(t.build(1, min - 1, &mut Vec::new()).is_err());
        assert!(t.build(1, min, &mut Vec::new()).is_ok());
    }

    #[test]
    fn headers_carry_sequence_and_unique_id() {
        let t = template();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        t.build(7, 4096, &mut a).unwrap();
        t.build(8, 4096, &mut b).unwrap();
        let a = String::from_utf8(a).unwrap();
        let b = String::from_utf8(b).unwrap();
        assert!(a.contains("\r\nX-Loadtest-Seq: 7\r\n"));
        let id = |s: &str| {
            s.lines()
                .find(|l| l.starts_with("Message-ID:"))
                .unwrap()
                .to_string()
        };
        assert_ne!(id(&a), id(&b));
        assert!(a.contains("\r\n\r\n"), "header/body separator");
    }

    #[test]
    fn dot_stuffing() {
        let mut out = Vec::new();
        dot_stuff(b".\r\nab\r\n..x\r\n a.\r\n", &mut out);
        assert_eq!(out, b"..\r\nab\r\n...x\r\n a.\r\n");

        // A generated body needs stuffing, and un-stuffing restores it.
        let t = template();
        let mut m = Vec::new();
        t.build(42, 4096, &mut m).unwrap();
        assert!(lines(&m).contains(&&b"."[..]), "lone-dot line present");
        let mut wire = Vec::new();
        dot_stuff(&m, &mut wire);
        wire.extend_from_slice(TERMINATOR);
        assert!(wire.ends_with(b"\r\n.\r\n"));
        let body = &wire[..wire.len() - TERMINATOR.len()];
        let mut unstuffed = Vec::new();
        for line in body.split_inclusive(|&b| b == b'\n') {
            assert_ne!(line, b".\r\n", "no premature terminator");
            unstuffed.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
        assert_eq!(unstuffed, m);
    }

    #[test]
    fn data_file_is_dot_stuffed_and_crlf_terminated() {
        // Already CRLF: sent byte for byte, dot-stuffed.
        let file =
            b"DKIM-Signature: v=1; a=ed25519-sha256\r\nFrom: <a@b.test>\r\n\r\n.\r\n..x\r\nend\r\n";
        let (size, wire) = file_wire(file).unwrap();
        assert_eq!(size, file.len());
        assert_eq!(
            wire,
            b"DKIM-Signature: v=1; a=ed25519-sha256\r\nFrom: <a@b.test>\r\n\r\n..\r\n...x\r\nend\r\n.\r\n"
        );
        // LF line ends and no final line end: made CRLF, terminated.
        let (size, wire) = file_wire(b"Subject: x\n\n.\nlast").unwrap();
        assert_eq!(wire, b"Subject: x\r\n\r\n..\r\nlast\r\n.\r\n");
        assert_eq!(size, wire.len() - TERMINATOR.len() - 1);
        assert!(file_wire(b"").is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_784_019_600),
            "Tue, 14 Jul 2026 09:00:00 +0000"
        );
    }
}
