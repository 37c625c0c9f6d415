//! DATA and BDAT decoding, against a plain reference written from RFC 5321
//! section 4.5.2 (a line is what ends in CRLF; a line of one dot ends the
//! message; a leading dot is removed), and across arbitrary split points.
//!
//! Input layout: `limit | k | k split octets | octets after DATA's 354`.
//! The same octets are also checked as BDAT chunks ([`TextCheck`]).

use crate::smtp::data::{DataDecoder, TextCheck};
use crate::smtp::limits::MAX_TEXT_LINE;

/// The reference decoding of `input`: how many octets end the message
/// (with its terminating line), and the decoded octets.
struct Reference {
    end: Option<usize>,
    body: Vec<u8>,
}

fn reference(input: &[u8]) -> Reference {
    let mut body = Vec::new();
    let mut at = 0;
    while let Some(n) = memchr::memmem::find(&input[at..], b"\r\n") {
        let line = &input[at..at + n];
        if line == b"." {
            return Reference {
                end: Some(at + n + 2),
                body,
            };
        }
        body.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        body.extend_from_slice(b"\r\n");
        at += n + 2;
    }
    // An unfinished line: its leading dot is removed, and a final CR may
    // yet be the start of a CRLF, so it is not decoded yet.
    let rest = &input[at..];
    let rest = rest.strip_prefix(b".").unwrap_or(rest);
    body.extend_from_slice(rest.strip_suffix(b"\r").unwrap_or(rest));
    Reference { end: None, body }
}

/// (bare CR or LF, a line over 998 octets) of decoded or chunked text.
fn text_rules(text: &[u8]) -> (bool, bool) {
    let bare = text.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => text.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || text[i - 1] != b'\r',
        _ => false,
    });
    let mut long = false;
    let mut rest = text;
    while !rest.is_empty() {
        let n = memchr::memmem::find(rest, b"\r\n").unwrap_or(rest.len());
        long |= n + 2 > MAX_TEXT_LINE;
        rest = rest.get(n + 2..).unwrap_or_default();
    }
    (bare, long)
}

/// See the module docs.
pub fn data(data: &[u8]) {
    let at = |i: usize| data.get(i).copied().unwrap_or(0);
    let limit = [0, 16, 1000, u64::MAX][usize::from(at(0) % 4)];
    let k = usize::from(at(1));
    let rest = data.get(2..).unwrap_or_default();
    let (splits, input) = rest.split_at(k.min(rest.len()));
    let chunk = |j: usize| match splits.len() {
        0 => 1,
        n => usize::from(splits[j % n] % 64) + 1,
    };

    let r = reference(input);
    let mut whole = DataDecoder::new(limit);
    let mut out = Vec::new();
    let (used, done) = whole.decode(input, &mut out);
    assert_eq!(
        done,
        r.end.is_some(),
        "end of DATA found: {done}, reference: {:?}",
        r.end
    );
    assert_eq!(used, r.end.unwrap_or(input.len()), "octets used");
    assert_eq!(whole.size(), r.body.len() as u64, "decoded size");
    assert_eq!(whole.oversized(), r.body.len() as u64 > limit);
    let kept = r
        .body
        .len()
        .min(usize::try_from(limit).unwrap_or(usize::MAX));
    assert!(
        out == r.body[..kept],
        "decoded octets differ from the reference"
    );
    if done {
        let (bare, long) = text_rules(&r.body);
        assert_eq!(whole.text().bare_newline(), bare, "bare CR/LF in DATA");
        assert_eq!(whole.text().long_line(), long, "long line in DATA");
    }

    // The same octets in chunks: the same end, octets and verdicts.
    let mut chunked = DataDecoder::new(limit);
    let mut out2 = Vec::new();
    let (mut at, mut j, mut done2) = (0, 0, false);
    while at < input.len() {
        let n = chunk(j).min(input.len() - at);
        let (u, d) = chunked.decode(&input[at..at + n], &mut out2);
        assert!(u <= n);
        at += u;
        j += 1;
        if d {
            done2 = true;
            break;
        }
        assert_eq!(u, n, "unfinished DATA left octets unused");
    }
    assert_eq!((at, done2), (used, done), "chunked DATA ended elsewhere");
    assert!(out2 == out, "chunked DATA decoded differently");
    assert_eq!(chunked.size(), whole.size());
    assert_eq!(chunked.text().refusal(), whole.text().refusal());

    // BDAT carries the octets as they are: the same rules, unstuffed.
    let (bare, long) = text_rules(input);
    let mut bdat = TextCheck::default();
    bdat.feed(input);
    bdat.finish();
    assert_eq!(bdat.text().bare_newline(), bare, "bare CR/LF in BDAT");
    if !bare {
        assert_eq!(bdat.text().long_line(), long, "long line in BDAT");
    }
    let mut split = TextCheck::default();
    let (mut at, mut j) = (0, 0);
    while at < input.len() {
        let n = chunk(j).min(input.len() - at);
        split.feed(&input[at..at + n]);
        at += n;
        j += 1;
    }
    split.finish();
    assert_eq!(
        split.text().refusal(),
        bdat.text().refusal(),
        "chunked BDAT judged differently"
    );
    assert_eq!(split.text().long_line(), bdat.text().long_line());
}
