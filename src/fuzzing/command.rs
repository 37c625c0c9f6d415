//! The command parser: one line in, a command or the reply refusing it.

use crate::smtp::command::{parse, Command, Path};
use crate::smtp::limits::MAX_PATH;

/// `data` is one command line without its CRLF (the session passes only
/// lines without CR or LF; others are tried too).
pub fn command(data: &[u8]) {
    let parsed = parse(data);
    if data.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        assert!(
            parsed.is_err(),
            "a line with CR, LF or NUL parsed: {parsed:?}"
        );
    }
    let cmd = match parsed {
        Err(reply) => {
            assert!(reply.code >= 500, "parse refused with {}", reply.code);
            return super::assert_reply(&reply);
        }
        Ok(cmd) => cmd,
    };
    // Borrowed from the line (an empty part may be a constant).
    let within = |s: &str| {
        let (start, end) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
        let p = s.as_ptr() as usize;
        s.is_empty() || (p >= start && p + s.len() <= end)
    };
    match cmd {
        Command::Ehlo(name) | Command::Helo(name) => {
            assert!(within(name), "EHLO name not borrowed from the line");
            assert!(
                !name.is_empty() && !name.starts_with(' '),
                "EHLO name {name:?}"
            );
        }
        Command::Mail(path, _) => assert_path(&path, true, &within),
        Command::Rcpt(path) => assert_path(&path, false, &within),
        Command::Bdat { size, .. } => {
            let text = String::from_utf8_lossy(data);
            assert!(
                text.contains(&size.to_string()),
                "BDAT size {size} not in {text:?}"
            );
        }
        _ => {}
    }
}

fn assert_path(path: &Path<'_>, reverse: bool, within: &dyn Fn(&str) -> bool) {
    let (a, d) = (path.address, path.domain);
    assert!(within(a) && within(d), "path not borrowed from the line");
    assert!(a.len() + 2 <= MAX_PATH, "path of {} octets", a.len());
    assert_eq!(path.is_utf8(), !a.is_ascii());
    assert!(
        !a.bytes()
            .any(|b| b < 0x20 || b == 0x7f || b == b'<' || b == b'>')
            || a.starts_with('"'),
        "address {a:?}"
    );
    if a.is_empty() {
        assert!(reverse && d.is_empty(), "empty forward-path");
    } else if d.is_empty() {
        assert!(
            !reverse && a.eq_ignore_ascii_case("postmaster"),
            "address {a:?} without a domain"
        );
    } else {
        let local = a.strip_suffix(d).and_then(|l| l.strip_suffix('@'));
        assert!(
            local.is_some_and(|l| !l.is_empty()),
            "address {a:?} does not end in @{d}"
        );
    }
}
