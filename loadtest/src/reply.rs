//! SMTP replies (RFC 5321 §4.2): one or more lines `NNN-text`, ending with
//! a line `NNN text` (or a bare `NNN`); every line carries the same code.
//!
//! [`ReplyBuilder`] turns lines into a [`Reply`] and is pure, so it is unit
//! tested on its own; [`read_reply`] feeds it from a buffered stream.

use std::fmt;
use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// Longest reply line accepted, CRLF included (RFC 5321 says 512; be lenient).
const MAX_LINE: usize = 4096;
/// Most lines accepted in one reply.
const MAX_LINES: usize = 200;

/// A complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    /// The three-digit code.
    pub(crate) code: u16,
    /// The text of each line, after the code and separator, without CRLF.
    pub(crate) lines: Vec<String>,
}

impl Reply {
    /// 2xx.
    pub(crate) fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// Whether an EHLO reply advertises `keyword`: the first word of any line
    /// after the first (which is the greeting), case-insensitively.
    pub(crate) fn has_extension(&self, keyword: &str) -> bool {
        self.lines.iter().skip(1).any(|l| {
            l.split_ascii_whitespace()
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case(keyword))
        })
    }
}

impl fmt::Display for Reply {
    /// `550 5.1.1 no such user`; further lines are joined with ` / `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == 0 { " " } else { " / " };
            write!(f, "{sep}{line}")?;
        }
        Ok(())
    }
}

/// One reply line, split.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) code: u16,
    /// False for `NNN-` continuation lines.
    pub(crate) last: bool,
    pub(crate) text: String,
}

/// Splits one line (with or without its CRLF; a bare LF is tolerated).
pub(crate) fn parse_line(raw: &[u8]) -> Result<Line, String> {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let shown = || String::from_utf8_lossy(raw).into_owned();
    if raw.len() < 3 || !raw[..3].iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&raw[0])
    {
        return Err(format!("malformed reply line {:?}", shown()));
    }
    let code = raw[..3]
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let (last, text) = match raw.get(3) {
        None => (true, &raw[3..]),
        Some(b' ') => (true, &raw[4..]),
        Some(b'-') => (false, &raw[4..]),
        Some(_) => return Err(format!("malformed reply line {:?}", shown())),
    };
    Ok(Line {
        code,
        last,
        text: String::from_utf8_lossy(text).into_owned(),
    })
}

/// Collects the lines of one reply.
#[derive(Debug, Default)]
pub(crate) struct ReplyBuilder {
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyBuilder {
    /// Feeds one line; returns the reply once its last line is in.
    pub(crate) fn push(&mut self, raw: &[u8]) -> Result<Option<Reply>, String> {
        let line = parse_line(raw)?;
        match self.code {
            Some(code) if code != line.code => {
                return Err(format!(
                    "reply code changed from {code} to {} inside a multi-line reply",
                    line.code
                ))
            }
            _ => self.code = Some(line.code),
        }
        if self.lines.len() >= MAX_LINES {
            return Err(format!("reply longer than {MAX_LINES} lines"));
        }
        self.lines.push(line.text);
        if !line.last {
            return Ok(None);
        }
        Ok(Some(Reply {
            code: line.code,
            lines: std::mem::take(&mut self.lines),
        }))
    }
}

/// Reads one complete reply; `buf` is scratch space kept by the caller.
pub(crate) async fn read_reply<R>(reader: &mut R, buf: &mut Vec<u8>) -> io::Result<Reply>
where
    R: AsyncBufRead + Unpin,
{
    let mut builder = ReplyBuilder::default();
    loop {
        buf.clear();
        let n = (&mut *reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', buf)
            .await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by server",
            ));
        }
        if buf.last() != Some(&b'\n') {
            let why = if n >= MAX_LINE {
                format!("reply line longer than {MAX_LINE} octets")
            } else {
                "connection closed inside a reply line".to_string()
            };
            return Err(io::Error::new(io::ErrorKind::InvalidData, why));
        }
        match builder.push(buf) {
            Ok(Some(reply)) => return Ok(reply),
            Ok(None) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line() {
        let l = parse_line(b"250 2.0.0 Ok: queued as X\r\n").unwrap();
        assert_eq!(
            (l.code, l.last, l.text.as_str()),
            (250, true, "2.0.0 Ok: queued as X")
        );
        let l = parse_line(b"354\r\n").unwrap();
        assert_eq!((l.code, l.last, l.text.as_str()), (354, true, ""));
        let l = parse_line(b"250-PIPELINING\n").unwrap();
        assert_eq!(
            (l.code, l.last, l.text.as_str()),
            (250, false, "PIPELINING")
        );
    }

    #[test]
    fn malformed_lines() {
        for bad in [
            &b"25\r\n"[..],
            b"abc ok\r\n",
            b"250xok\r\n",
            b"150 hi\r\n",
            b"\r\n",
        ] {
            assert!(parse_line(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn multi_line_ehlo() {
        let mut b = ReplyBuilder::default();
        assert_eq!(b.push(b"250-mx.example.test\r\n").unwrap(), None);
        assert_eq!(b.push(b"250-SIZE 26214400\r\n").unwrap(), None);
        assert_eq!(b.push(b"250-pipelining\r\n").unwrap(), None);
        let r = b.push(b"250 8BITMIME\r\n").unwrap().unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.lines.len(), 4);
        assert!(r.is_positive());
        assert!(r.has_extension("PIPELINING"));
        assert!(r.has_extension("size"));
        assert!(!r.has_extension("CHUNKING"));
        assert!(
            !r.has_extension("mx.example.test"),
            "greeting line is not an extension"
        );
        assert_eq!(
            r.to_string(),
            "250 mx.example.test / SIZE 26214400 / pipelining / 8BITMIME"
        );
    }

    #[test]
    fn code_change_is_an_error() {
        let mut b = ReplyBuilder::default();
        b.push(b"250-one\r\n").unwrap();
        assert!(b.push(b"550 two\r\n").is_err());
    }

    #[tokio::test]
    async fn reads_consecutive_replies() {
        let data: &[u8] = b"220 hi ESMTP\r\n250-a\r\n250-b\r\n250 c\r\n550 5.1.1 no\r\n";
        let mut r = tokio::io::BufReader::new(data);
        let mut buf = Vec::new();
        assert_eq!(read_reply(&mut r, &mut buf).await.unwrap().code, 220);
        let ehlo = read_reply(&mut r, &mut buf).await.unwrap();
        assert_eq!(ehlo.lines, ["a", "b", "c"]);
        let no = read_reply(&mut r, &mut buf).await.unwrap();
        assert_eq!(no.to_string(), "550 5.1.1 no");
        assert!(!no.is_positive());
        let eof = read_reply(&mut r, &mut buf).await.unwrap_err();
        assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn truncated_and_overlong_lines() {
        let mut r = tokio::io::BufReader::new(&b"250-a\r\n250 b"[..]);
        let e = read_reply(&mut r, &mut Vec::new()).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let long = [b"250 ".to_vec(), vec![b'x'; MAX_LINE], b"\r\n".to_vec()].concat();
        let mut r = tokio::io::BufReader::new(&long[..]);
        assert!(read_reply(&mut r, &mut Vec::new()).await.is_err());
    }
}
