//! The DATA decoder: finds the end of a message and removes dot-stuffing.
//!
//! Only `<CRLF>.<CRLF>` ends a message (RFC 5321 section 4.1.1.4). A line
//! starts only after CRLF: a bare LF or a bare CR never starts a line, so
//! `\n.\n`, `\r\n.\n` and `\n.\r\n` are ordinary message bytes and never end
//! DATA. They are recorded ([`DataDecoder::bare_newline`]) and the session
//! refuses the whole message once the real end arrives (SMTP smuggling
//! protection, CVE-2023-51764 class; see `docs/security.md`).
//!
//! The decoder keeps at most `limit` octets of the message; past that it still
//! scans for the end, so the session can answer `552` in sequence without
//! dropping the connection.

use super::limits::MAX_TEXT_LINE;
use crate::smtp::Reply;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Just after CRLF (or at the start of DATA).
    LineStart,
    /// Saw `.` at the start of a line.
    Dot,
    /// Saw `.` `\r` at the start of a line.
    DotCr,
    /// Inside a line.
    Mid,
    /// Saw `\r` inside a line.
    Cr,
}

/// Incremental decoder for one DATA section.
#[derive(Debug, Clone)]
pub struct DataDecoder {
    st: St,
    text: TextRules,
    /// Decoded octets seen so far, including those not kept.
    size: u64,
    limit: u64,
}

impl DataDecoder {
    /// A decoder that keeps at most `limit` decoded octets.
    pub fn new(limit: u64) -> DataDecoder {
        DataDecoder {
            st: St::LineStart,
            text: TextRules::default(),
            size: 0,
            limit,
        }
    }

    /// Decoded size so far (what the message would weigh without the limit).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True when the message is larger than the limit.
    pub fn oversized(&self) -> bool {
        self.size > self.limit
    }

    /// How the message kept to the text rules so far.
    pub fn text(&self) -> &TextRules {
        &self.text
    }

    #[inline]
    fn keep(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let room = self.limit.saturating_sub(self.size);
        let n = (bytes.len() as u64).min(room) as usize;
        out.extend_from_slice(&bytes[..n]);
        self.size += bytes.len() as u64;
    }

    /// Feeds `input`; appends decoded octets to `out`. Returns how many input
    /// octets were used and whether the end of data was reached (the octets
    /// after the terminating CRLF are not used).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            match self.st {
                St::Mid => {
                    // Fast path: copy the run up to the next CR or LF.
                    let rest = &input[i..];
                    let run = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                    if run > 0 {
                        self.keep(&rest[..run], out);
                        self.text.grow(run);
                        i += run;
                        continue;
                    }
                    let b = input[i];
                    i += 1;
                    if b == b'\r' {
                        self.st = St::Cr;
                    } else {
                        // Bare LF: kept as a byte, never a line end.
                        self.text.bare();
                        self.keep(b"\n", out);
                        self.text.grow(1);
                    }
                }
                St::LineStart => {
                    let b = input[i];
                    i += 1;
                    self.text.end_line();
                    match b {
                        b'.' => self.st = St::Dot,
                        b'\r' => self.st = St::Cr,
                        b'\n' => {
                            self.text.bare();
                            self.keep(b"\n", out);
                            self.text.grow(1);
                            self.st = St::Mid;
                        }
                        _ => {
                            self.keep(&[b], out);
                            self.text.grow(1);
                            self.st = St::Mid;
                        }
                    }
                }
                St::Dot => {
                    let b = input[i];
                    if b == b'\r' {
                        i += 1;
                        self.st = St::DotCr;
                    } else {
                        // Dot-stuffing: the leading dot is removed and the
                        // byte is handled as the line's first octet.
                        self.st = St::Mid;
                        if b != b'\n' {
                            i += 1;
                            self.keep(&[b], out);
                            self.text.grow(1);
                        }
                    }
                }
                St::DotCr => {
                    if input[i] == b'\n' {
                        self.st = St::LineStart;
                        return (i + 1, true);
                    }
                    // `.` `\r` then not LF: a bare CR on a dot-stuffed line.
                    self.text.bare();
                    self.keep(b"\r", out);
                    self.text.grow(1);
                    self.st = St::Mid;
                }
                St::Cr => {
                    let b = input[i];
                    if b == b'\n' {
                        i += 1;
                        self.keep(b"\r\n", out);
                        self.st = St::LineStart;
                    } else {
                        // Bare CR: kept as a byte, never a line end.
                        self.text.bare();
                        self.keep(b"\r", out);
                        self.text.grow(1);
                        self.st = St::Mid;
                    }
                }
            }
        }
        (i, false)
    }
}

/// Checks octets against the text rules (every CR and LF as CRLF, lines of
/// at most 1000 octets) without decoding them: for BDAT chunks, which carry
/// the message unstuffed.
#[derive(Debug, Clone, Default)]
pub struct TextCheck {
    prev_cr: bool,
    text: TextRules,
}

impl TextCheck {
    /// Feeds the next octets of the message.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.prev_cr {
                self.prev_cr = false;
                if bytes[0] == b'\n' {
                    self.text.end_line();
                    bytes = &bytes[1..];
                    continue;
                }
                self.text.bare();
                self.text.grow(1);
            }
            let run = memchr::memchr2(b'\r', b'\n', bytes).unwrap_or(bytes.len());
            self.text.grow(run);
            bytes = &bytes[run..];
            if let Some(&b) = bytes.first() {
                if b == b'\r' {
                    self.prev_cr = true;
                } else {
                    self.text.bare();
                    self.text.grow(1);
                }
                bytes = &bytes[1..];
            }
        }
    }

    /// Marks the end of the message (a final lone CR is bare).
    pub fn finish(&mut self) {
        if std::mem::take(&mut self.prev_cr) {
            self.text.bare();
        }
    }

    /// How the message kept to the text rules so far.
    pub fn text(&self) -> &TextRules {
        &self.text
    }
}

/// The text rules' verdict on a whole message that did not come through
/// DATA or BDAT (`POST /mail/inbound`): the reply SMTP would give the same
/// octets, or `None`.
pub fn text_refusal(message: &[u8]) -> Option<Reply> {
    let mut check = TextCheck::default();
    check.feed(message);
    check.finish();
    check.text().refusal()
}

/// The text rules DATA and BDAT both apply (RFC 5321 sections 2.3.8 and
/// 4.5.3.1.6): every CR and LF part of a CRLF, and lines of at most 1000
/// octets, CRLF included.
#[derive(Debug, Clone, Default)]
pub struct TextRules {
    /// Octets of the current line, CRLF excluded.
    line_len: usize,
    bare_newline: bool,
    long_line: bool,
}

impl TextRules {
    #[inline]
    fn grow(&mut self, n: usize) {
        self.line_len += n;
        if self.line_len + 2 > MAX_TEXT_LINE {
            self.long_line = true;
        }
    }

    #[inline]
    fn end_line(&mut self) {
        self.line_len = 0;
    }

    #[inline]
    fn bare(&mut self) {
        self.bare_newline = true;
    }

    /// True when a bare CR or bare LF was seen.
    pub fn bare_newline(&self) -> bool {
        self.bare_newline
    }

    /// True when a line longer than 1000 octets (CRLF included) was seen.
    pub fn long_line(&self) -> bool {
        self.long_line
    }

    /// The reply refusing a message that broke the rules, if it did.
    pub fn refusal(&self) -> Option<Reply> {
        if self.bare_newline {
            Some(Reply::BARE_NEWLINE_DATA)
        } else if self.long_line {
            Some(Reply::DATA_LINE_TOO_LONG)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> (Vec<u8>, usize, bool, DataDecoder) {
        let mut d = DataDecoder::new(1 << 20);
        let mut out = Vec::new();
        let (n, done) = d.decode(input, &mut out);
        (out, n, done, d)
    }

    #[test]
    fn only_crlf_dot_crlf_ends_data() {
        let (out, n, done, d) = decode_all(b"Subject: x\r\n\r\nhello\r\n.\r\nMAIL FROM:<a@b>\r\n");
        assert!(done);
        assert_eq!(&out, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(n, b"Subject: x\r\n\r\nhello\r\n.\r\n".len());
        assert!(!d.text().bare_newline());
    }

    #[test]
    fn smuggling_terminators_do_not_end_data() {
        for body in [
            &b"hi\n.\nMAIL FROM:<x@y>\r\n"[..],
            b"hi\r\n.\nMAIL FROM:<x@y>\r\n",
            b"hi\n.\r\nMAIL FROM:<x@y>\r\n",
            b"hi\r.\rMAIL FROM:<x@y>\r\n",
            b"hi\r\n.\rMAIL FROM:<x@y>\r\n",
        ] {
            let (_, n, done, d) = decode_all(body);
            assert!(!done, "{body:?} must not end DATA");
            assert_eq!(n, body.len());
            assert!(d.text().bare_newline(), "{body:?} must be flagged");
        }
    }

    #[test]
    fn dot_stuffing_is_removed() {
        let (out, _, done, _) = decode_all(b"..leading\r\n...\r\n.\r\n");
        assert!(done);
        assert_eq!(&out, b".leading\r\n..\r\n");
    }

    #[test]
    fn every_split_point_gives_the_same_result() {
        let input = b"a\r\n..b\r\n.x\r\n\r\n.\r\nNEXT";
        let (whole, n_whole, _, _) = decode_all(input);
        for split in 0..input.len() {
            let mut d = DataDecoder::new(1 << 20);
            let mut out = Vec::new();
            let (n1, done1) = d.decode(&input[..split], &mut out);
            assert!(!done1 || split >= n_whole);
            let (n2, done2) = if done1 {
                (0, true)
            } else {
                d.decode(&input[split..], &mut out)
            };
            assert!(done2, "split {split}");
            assert_eq!(n1 + n2, n_whole, "split {split}");
            assert_eq!(out, whole, "split {split}");
        }
    }

    #[test]
    fn oversized_message_is_scanned_to_the_end() {
        let mut d = DataDecoder::new(4);
        let mut out = Vec::new();
        let (_, done) = d.decode(b"0123456789\r\n.\r\n", &mut out);
        assert!(done);
        assert!(d.oversized());
        assert_eq!(out.len(), 4);
        assert_eq!(d.size(), 12);
    }

    #[test]
    fn long_lines_are_flagged() {
        let mut line = vec![b'x'; 999];
        line.extend_from_slice(b"\r\n.\r\n");
        let (_, _, done, d) = decode_all(&line);
        assert!(done);
        assert!(d.text().long_line());
        let mut ok = vec![b'x'; 998];
        ok.extend_from_slice(b"\r\n.\r\n");
        let (_, _, _, d) = decode_all(&ok);
        assert!(!d.text().long_line());
    }

    #[test]
    fn text_check_applies_the_data_rules_across_chunks() {
        let check = |chunks: &[&[u8]]| {
            let mut t = TextCheck::default();
            for c in chunks {
                t.feed(c);
            }
            t.finish();
            (t.text().bare_newline(), t.text().long_line())
        };
        assert_eq!(check(&[b"Subject: x\r\n\r\nbody\r\n"]), (false, false));
        assert_eq!(check(&[b"a\r", b"\nb\r\n"]), (false, false));
        assert_eq!(check(&[b"line\n.\r\nMAIL FROM:<e@x>\r\n"]), (true, false));
        assert_eq!(check(&[b"a\rb\r\n"]), (true, false));
        assert_eq!(check(&[b"a\r\n", b"\nmore\r\n"]), (true, false));
        assert_eq!(check(&[b"ends in CR\r"]), (true, false));
        let mut long = vec![b'q'; 999];
        long.extend_from_slice(b"\r\n");
        assert_eq!(check(&[&long[..500], &long[500..]]), (false, true));
        let mut ok = vec![b'q'; 998];
        ok.extend_from_slice(b"\r\n");
        assert_eq!(check(&[&ok]), (false, false));
    }

    #[test]
    fn empty_message_ends_immediately() {
        let (out, n, done, _) = decode_all(b".\r\n");
        assert!(done);
        assert_eq!(n, 3);
        assert!(out.is_empty());
    }
}
