//! `validation.strict_headers`: the header section must be RFC 5322's.
//!
//! Every line before the first empty one is a field (`name: value`, the
//! name printable ASCII without a colon) or a continuation (it starts with
//! a space or tab), and the fields of RFC 5322 section 3.6 occur as often as
//! its table allows: `From` and `Date` exactly once; `Sender`, `Reply-To`,
//! `To`, `Cc`, `Bcc`, `Message-ID`, `In-Reply-To`, `References` and
//! `Subject` at most once. A message with two `From` fields is the classic
//! way to show a reader one author and DMARC another; a line that is not a
//! field hides fields from one parser and not from the next.

use super::Reply;

/// The fields of RFC 5322 section 3.6 with a count rule: (name, required).
/// A required field occurs exactly once, the others at most once.
const COUNTED: [(&str, bool); 11] = [
    ("from", true),
    ("date", true),
    ("sender", false),
    ("reply-to", false),
    ("to", false),
    ("cc", false),
    ("bcc", false),
    ("message-id", false),
    ("in-reply-to", false),
    ("references", false),
    ("subject", false),
];

fn refuse(why: String) -> Reply {
    Reply::new(
        550,
        "5.6.0",
        format!("Message rejected: {why} (RFC 5322 section 3.6)"),
    )
}

/// `Some(refusal)` when `message`'s header section breaks the rules above.
pub fn check(message: &[u8]) -> Option<Reply> {
    let mut counts = [0usize; COUNTED.len()];
    let mut first = true;
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            if first {
                return Some(refuse(
                    "the header section starts with a continuation line".into(),
                ));
            }
            continue;
        }
        first = false;
        let name = match line.iter().position(|&b| b == b':') {
            Some(n) if n > 0 && line[..n].iter().all(|&b| (33..=126).contains(&b)) => &line[..n],
            _ => {
                let shown = String::from_utf8_lossy(&line[..line.len().min(40)]).into_owned();
                return Some(refuse(format!("header line {shown:?} is not a field")));
            }
        };
        if let Some(i) = COUNTED
            .iter()
            .position(|(f, _)| name.eq_ignore_ascii_case(f.as_bytes()))
        {
            counts[i] += 1;
        }
    }
    for (&(field, required), &n) in COUNTED.iter().zip(&counts) {
        if required && n != 1 {
            return Some(refuse(format!(
                "{n} {field} header fields, exactly one is required"
            )));
        }
        if n > 1 {
            return Some(refuse(format!(
                "{n} {field} header fields, at most one is allowed"
            )));
        }
    }
    None
}

/// The longest line RFC 5322 allows, CRLF excluded (section 2.1.1).
const MAX_LINE: usize = 998;

/// Fields a sender must not be able to set for us, and the names they are
/// kept under once obscured: `Authentication-Results` carrying our own
/// authserv-id (RFC 8601 section 5: a receiver deletes or obscures them
/// before adding its own), and gomail's own quarantine and SPF marks.
const FORGEABLE: [(&str, &str); 3] = [
    (
        "authentication-results",
        "X-Gomail-Forged-Authentication-Results",
    ),
    ("x-gomail-quarantine", "X-Gomail-Forged-Quarantine"),
    ("x-gomail-spf-failed", "X-Gomail-Forged-SPF-Failed"),
];

/// The authserv-id of an (unfolded) `Authentication-Results` value: its
/// first token or quoted string after any whitespace and comments (RFC
/// 8601 section 2.2), without a trailing dot.
fn authserv_id(value: &[u8]) -> Vec<u8> {
    let mut v = value;
    loop {
        v = v.trim_ascii_start();
        if v.first() != Some(&b'(') {
            break;
        }
        // A comment, nested comments and escapes included.
        let mut depth = 0usize;
        let mut end = v.len();
        let mut k = 0;
        while k < v.len() {
            match v[k] {
                b'\\' => k += 1,
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                _ => {}
            }
            k += 1;
        }
        v = &v[end.min(v.len())..];
    }
    let id: &[u8] = if let Some(q) = v.strip_prefix(b"\"") {
        &q[..q.iter().position(|&b| b == b'"').unwrap_or(q.len())]
    } else {
        let end = v
            .iter()
            .position(|&b| b == b';' || b == b'(' || b.is_ascii_whitespace())
            .unwrap_or(v.len());
        &v[..end]
    };
    id.strip_suffix(b".").unwrap_or(id).to_vec()
}

/// `message` with every forgeable field (see [`FORGEABLE`]) of its header
/// section renamed, so that no one downstream takes it for gomail's;
/// `None` when there is none (the common case: nothing is copied).
/// `Authentication-Results` of other hosts are left alone. A renamed line
/// that would grow past 998 octets is folded after its colon instead.
pub fn obscure_forged(message: &[u8], authserv: &str) -> Option<Vec<u8>> {
    let mut renames: Vec<(usize, usize, &str, bool, bool)> = Vec::new();
    let mut at = 0;
    for line in message.split_inclusive(|&b| b == b'\n') {
        let start = at;
        at += line.len();
        let bare = line.strip_suffix(b"\n").unwrap_or(line);
        let bare = bare.strip_suffix(b"\r").unwrap_or(bare);
        if bare.is_empty() {
            break;
        }
        let Some(colon) = bare.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &bare[..colon];
        let Some(&(_, kept_as)) = FORGEABLE
            .iter()
            .find(|(f, _)| name.eq_ignore_ascii_case(f.as_bytes()))
        else {
            continue;
        };
        // The value may be folded: the id can be on a continuation line.
        let ours = !name.eq_ignore_ascii_case(b"authentication-results") || {
            let mut value = bare[colon + 1..].to_vec();
            for next in message[at..].split_inclusive(|&b| b == b'\n') {
                if !matches!(next.first(), Some(b' ' | b'\t')) {
                    break;
                }
                value.extend_from_slice(next);
            }
            authserv_id(&value).eq_ignore_ascii_case(authserv.as_bytes())
        };
        if ours {
            // The longer name must not take the line past RFC 5322's 998
            // octets (section 2.1.1): then the field is folded right after
            // its colon, which changes neither the field nor its value.
            let fold = bare.len() - colon + kept_as.len() > MAX_LINE;
            let indent = matches!(bare.get(colon + 1), Some(b' ' | b'\t'));
            renames.push((start, start + colon, kept_as, fold, indent));
        }
    }
    if renames.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(message.len() + 32 * renames.len());
    let mut copied = 0;
    for (start, colon, kept_as, fold, indent) in renames {
        out.extend_from_slice(&message[copied..start]);
        out.extend_from_slice(kept_as.as_bytes());
        copied = colon;
        if fold {
            out.extend_from_slice(if indent { b":\r\n" } else { b":\r\n " });
            copied = colon + 1;
        }
    }
    out.extend_from_slice(&message[copied..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "From: a@x.test\r\nDate: Fri, 4 Dec 2026 10:00:00 +0000\r\nSubject: hi\r\n  folded\r\nX-Any: 1\r\nX-Any: 2\r\n\r\nFrom: in the body\r\n";

    #[test]
    fn a_well_formed_header_passes() {
        assert_eq!(check(GOOD.as_bytes()), None);
    }

    #[test]
    fn counts_are_enforced() {
        let two_from = format!("From: b@y.test\r\n{GOOD}");
        let r = check(two_from.as_bytes()).unwrap();
        assert_eq!((r.code, r.status), (550, "5.6.0"));
        assert!(r.text.contains("2 from header fields"), "{}", r.text);
        let no_date = GOOD.replace("Date: Fri, 4 Dec 2026 10:00:00 +0000\r\n", "");
        assert!(check(no_date.as_bytes()).unwrap().text.contains("0 date"));
        let two_subjects = format!("Subject: again\r\n{GOOD}");
        assert!(check(two_subjects.as_bytes())
            .unwrap()
            .text
            .contains("at most one"));
        let case = format!("FROM: b@y.test\r\n{GOOD}");
        assert!(check(case.as_bytes()).is_some());
    }

    #[test]
    fn forged_results_for_our_host_are_renamed_and_others_kept() {
        let m = "Authentication-Results: MX.example.test; dmarc=pass\r\n\
                 authentication-results:mx.example.test (forged);\r\n  spf=pass\r\n\
                 Authentication-Results: other.example; spf=fail\r\n\
                 X-Gomail-Quarantine: no\r\n\
                 Subject: x\r\n\r\n\
                 Authentication-Results: mx.example.test; in the body\r\n";
        let out =
            String::from_utf8(obscure_forged(m.as_bytes(), "mx.example.test").unwrap()).unwrap();
        assert_eq!(
            out,
            "X-Gomail-Forged-Authentication-Results: MX.example.test; dmarc=pass\r\n\
             X-Gomail-Forged-Authentication-Results:mx.example.test (forged);\r\n  spf=pass\r\n\
             Authentication-Results: other.example; spf=fail\r\n\
             X-Gomail-Forged-Quarantine: no\r\n\
             Subject: x\r\n\r\n\
             Authentication-Results: mx.example.test; in the body\r\n"
        );
        assert_eq!(
            obscure_forged(b"Subject: clean\r\n\r\nbody\r\n", "mx.example.test"),
            None
        );
        // Folded, behind comments, quoted, with a trailing dot: still ours.
        for forged in [
            "Authentication-Results:\r\n mx.example.test; spf=pass\r\n\r\n",
            "Authentication-Results:   \r\n  \r\n mx.example.test; spf=pass\r\n\r\n",
            "Authentication-Results: (c) mx.example.test; spf=pass\r\n\r\n",
            "Authentication-Results: (x;(y)) mx.example.test; spf=pass\r\n\r\n",
            "Authentication-Results: (c)\r\n mx.example.test;\r\n\r\n",
            "Authentication-Results: \"mx.example.test\"; spf=pass\r\n\r\n",
            "Authentication-Results: mx.example.test.; spf=pass\r\n\r\n",
            "Authentication-Results: mx.example.test.(x);spf=pass\r\n\r\n",
        ] {
            let out = obscure_forged(forged.as_bytes(), "mx.example.test");
            assert!(
                out.is_some_and(|o| o.starts_with(b"X-Gomail-Forged-Authentication-Results:")),
                "{forged:?}"
            );
        }
        // A longer host that only starts with ours is someone else's.
        assert_eq!(
            obscure_forged(
                b"Authentication-Results: mx.example.test.evil; x\r\n\r\n",
                "mx.example.test"
            ),
            None
        );
    }

    /// RFC 5322 section 2.1.1: a line is at most 998 octets before its
    /// CRLF. A forged field at that length stays within it once renamed.
    #[test]
    fn a_renamed_field_keeps_its_lines_within_998_octets() {
        for (name, sep, kept_as) in [
            (
                "Authentication-Results",
                ": ",
                "X-Gomail-Forged-Authentication-Results",
            ),
            (
                "authentication-results",
                ":",
                "X-Gomail-Forged-Authentication-Results",
            ),
            (
                "Authentication-Results",
                ":\t",
                "X-Gomail-Forged-Authentication-Results",
            ),
            ("X-Gomail-Quarantine", ": ", "X-Gomail-Forged-Quarantine"),
            ("X-Gomail-SPF-Failed", ":", "X-Gomail-Forged-SPF-Failed"),
        ] {
            let head = format!("{name}{sep}mx.example.test; spf=pass ");
            let line = format!("{head}{}", "x".repeat(998 - head.len()));
            assert_eq!(line.len(), 998);
            let m = format!("Subject: s\r\n{line}\r\n  folded on\r\nTo: t\r\n\r\nbody\r\n");
            let out = String::from_utf8(obscure_forged(m.as_bytes(), "mx.example.test").unwrap())
                .unwrap();
            for l in out.split("\r\n") {
                assert!(l.len() <= 998, "{} octets: {l:?}", l.len());
            }
            // Folded after the colon: the same field, the same value.
            let value = &line[name.len() + 1..];
            let value = if value.starts_with([' ', '\t']) {
                value.to_string()
            } else {
                format!(" {value}")
            };
            assert_eq!(
                out,
                format!(
                    "Subject: s\r\n{kept_as}:\r\n{value}\r\n  folded on\r\nTo: t\r\n\r\nbody\r\n"
                ),
                "{name}{sep}"
            );
            assert_eq!(check(out.as_bytes()), check(m.as_bytes()));
        }
        // Short enough with the longer name: renamed in place, not folded.
        let line = format!(
            "Authentication-Results: mx.example.test; {}",
            "x".repeat(998 - 41 - 16)
        );
        let out = obscure_forged(format!("{line}\r\n\r\n").as_bytes(), "mx.example.test").unwrap();
        assert_eq!(out.len(), line.len() + 16 + 4);
        assert!(!out[..out.len() - 4].contains(&b'\n'));
    }

    #[test]
    fn lines_that_are_not_fields_are_refused() {
        for bad in [
            format!("From a@x.test\r\n{GOOD}"),
            format!(" folded first\r\n{GOOD}"),
            format!("Bad Name: x\r\n{GOOD}"),
            format!(": no name\r\n{GOOD}"),
        ] {
            assert!(check(bad.as_bytes()).is_some(), "{bad:?}");
        }
    }
}
