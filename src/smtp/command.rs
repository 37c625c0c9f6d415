//! Command-line parsing: one line (CRLF removed) in, a [`Command`] out.
//!
//! A parse failure is the reply to send, never a Rust error: the session
//! sends it and goes on. Parsed commands borrow the input line.

use super::limits::{MAX_DOMAIN, MAX_LOCAL_PART, MAX_PATH};
use super::reply::Reply;

/// A parsed SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `EHLO name`.
    Ehlo(&'a str),
    /// `HELO name`.
    Helo(&'a str),
    /// `MAIL FROM:<path> [params]`; the path is empty for the null sender.
    Mail(Path<'a>, MailParams),
    /// `RCPT TO:<path>`.
    Rcpt(Path<'a>),
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Octets in the chunk that follows the command line.
        size: u64,
        /// True for the last chunk.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`.
    Vrfy,
    /// `EXPN string`.
    Expn,
    /// `HELP [string]`.
    Help,
    /// `STARTTLS`.
    StartTls,
    /// `AUTH ...`.
    Auth,
}

/// A mailbox from a MAIL or RCPT path, source route removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path<'a> {
    /// `local@domain`, or empty for `<>`, or `postmaster` for `<postmaster>`.
    pub address: &'a str,
    /// The domain part (empty for `<>` and `<postmaster>`).
    pub domain: &'a str,
}

impl Path<'_> {
    /// True when the address holds non-ASCII octets (needs SMTPUTF8).
    pub fn is_utf8(&self) -> bool {
        !self.address.is_ascii()
    }
}

/// The MAIL parameters gomail understands (RFC 1870, 6152, 6531).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=n`: the client's estimate.
    pub size: Option<u64>,
    /// `BODY=8BITMIME`.
    pub eight_bit: bool,
    /// `SMTPUTF8`.
    pub smtputf8: bool,
    /// `REQUIRETLS` (RFC 8689).
    pub require_tls: bool,
}

/// Parses one command line (without its CRLF).
pub fn parse(line: &[u8]) -> Result<Command<'_>, Reply> {
    if line
        .iter()
        .any(|&b| b == 0 || (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err(Reply::BAD_COMMAND_BYTES);
    }
    let line = std::str::from_utf8(line).map_err(|_| Reply::BAD_COMMAND_BYTES)?;
    let line = line.trim_end_matches([' ', '\t']);
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let is = |v: &str| verb.eq_ignore_ascii_case(v);
    let no_args = |c: Command<'static>| {
        if rest.is_empty() {
            Ok(c)
        } else {
            Err(Reply::SYNTAX_NO_ARGS)
        }
    };
    if is("EHLO") || is("HELO") {
        let name = rest.trim_start();
        if name.is_empty() || name.contains(' ') && !name.starts_with('[') {
            return Err(Reply::SYNTAX_EHLO);
        }
        return Ok(if is("EHLO") {
            Command::Ehlo(name)
        } else {
            Command::Helo(name)
        });
    }
    if is("MAIL") {
        let args = strip_prefix_ci(rest, "FROM:").ok_or(Reply::SYNTAX_PARAMS)?;
        let (path, params) =
            split_path(args.trim_start_matches(' ')).ok_or(Reply::BAD_SENDER_SYNTAX)?;
        let path = parse_path(path, true).ok_or(Reply::BAD_SENDER_SYNTAX)?;
        return Ok(Command::Mail(path, parse_mail_params(params)?));
    }
    if is("RCPT") {
        let args = strip_prefix_ci(rest, "TO:").ok_or(Reply::SYNTAX_PARAMS)?;
        let (path, params) =
            split_path(args.trim_start_matches(' ')).ok_or(Reply::BAD_RECIPIENT_SYNTAX)?;
        let path = parse_path(path, false).ok_or(Reply::BAD_RECIPIENT_SYNTAX)?;
        if !params.trim().is_empty() {
            // No RCPT extension (DSN's NOTIFY/ORCPT) is advertised.
            return Err(Reply::UNSUPPORTED_PARAM);
        }
        return Ok(Command::Rcpt(path));
    }
    if is("DATA") {
        return no_args(Command::Data);
    }
    if is("BDAT") {
        let mut it = rest.split(' ').filter(|s| !s.is_empty());
        let size = it
            .next()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()) && s.len() <= 18)
            .and_then(|s| s.parse().ok())
            .ok_or(Reply::SYNTAX_BDAT)?;
        let last = match it.next() {
            None => false,
            Some(s) if s.eq_ignore_ascii_case("LAST") => true,
            Some(_) => return Err(Reply::SYNTAX_BDAT),
        };
        if it.next().is_some() {
            return Err(Reply::SYNTAX_BDAT);
        }
        return Ok(Command::Bdat { size, last });
    }
    if is("RSET") {
        return no_args(Command::Rset);
    }
    if is("QUIT") {
        return no_args(Command::Quit);
    }
    if is("NOOP") {
        return Ok(Command::Noop);
    }
    if is("STARTTLS") {
        return no_args(Command::StartTls);
    }
    if is("VRFY") {
        if rest.trim().is_empty() {
            return Err(Reply::SYNTAX_VRFY);
        }
        return Ok(Command::Vrfy);
    }
    if is("EXPN") {
        return Ok(Command::Expn);
    }
    if is("HELP") {
        return Ok(Command::Help);
    }
    if is("AUTH") {
        return Ok(Command::Auth);
    }
    Err(Reply::UNRECOGNIZED)
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Splits `<...> params` at the closing bracket, honouring quoted strings.
fn split_path(s: &str) -> Option<(&str, &str)> {
    let b = s.as_bytes();
    if b.first() != Some(&b'<') {
        return None;
    }
    let mut quoted = false;
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => {
                let params = &s[i + 1..];
                if !params.is_empty() && !params.starts_with(' ') {
                    return None;
                }
                return Some((&s[1..i], params.trim_start_matches(' ')));
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Parses the inside of `<...>`: `[@route,@route:]local@domain`.
fn parse_path(inner: &str, reverse: bool) -> Option<Path<'_>> {
    if inner.len() + 2 > MAX_PATH {
        return None;
    }
    if inner.is_empty() {
        return reverse.then_some(Path {
            address: "",
            domain: "",
        });
    }
    // A source route is accepted and ignored (RFC 5321 section 4.1.1.3 / C).
    let mailbox = if inner.starts_with('@') {
        let colon = inner.find(':')?;
        let route = &inner[..colon];
        if !route
            .split(',')
            .all(|hop| hop.strip_prefix('@').is_some_and(is_domain))
        {
            return None;
        }
        &inner[colon + 1..]
    } else {
        inner
    };
    if !reverse && mailbox.eq_ignore_ascii_case("postmaster") {
        return Some(Path {
            address: mailbox,
            domain: "",
        });
    }
    let at = mailbox.rfind('@')?;
    let (local, domain) = (&mailbox[..at], &mailbox[at + 1..]);
    if !is_local_part(local) || !(is_domain(domain) || is_address_literal(domain)) {
        return None;
    }
    Some(Path {
        address: mailbox,
        domain,
    })
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn is_local_part(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_LOCAL_PART {
        return false;
    }
    if let Some(q) = s.strip_prefix('"') {
        // Quoted-string: qtext or quoted-pair, then the closing quote.
        let Some(body) = q.strip_suffix('"') else {
            return false;
        };
        let mut esc = false;
        for c in body.chars() {
            if esc {
                if !(' '..='~').contains(&c) {
                    return false;
                }
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' || (c.is_ascii() && !(' '..='~').contains(&c)) {
                return false;
            }
        }
        return !esc;
    }
    s.split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_DOMAIN
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        })
}

/// True for a domain a sender can really have: an address literal, or a
/// name of two labels or more whose last one has a letter and is not one
/// RFC 6761 keeps from ever resolving (`localhost`, `invalid`). A UTF-8
/// name is judged by its IDNA (ASCII) form.
pub fn is_fqdn(domain: &str) -> bool {
    if is_address_literal(domain) {
        return true;
    }
    if !domain.is_ascii() {
        // Judged as DNS will see it (UTS #46): `ｌｏｃａｌｈｏｓｔ` and a name
        // with invisible characters are the names they map to; one that
        // does not map is no domain at all.
        return idna::domain_to_ascii(domain).is_ok_and(|ascii| is_fqdn(&ascii));
    }
    let Some((_, tld)) = domain.trim_end_matches('.').rsplit_once('.') else {
        return false;
    };
    tld.chars().any(|c| c.is_alphabetic())
        && !tld.eq_ignore_ascii_case("localhost")
        && !tld.eq_ignore_ascii_case("invalid")
}

fn is_address_literal(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) else {
        return false;
    };
    if let Some(v6) = inner.strip_prefix("IPv6:") {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    inner.parse::<std::net::Ipv4Addr>().is_ok()
}

fn parse_mail_params(params: &str) -> Result<MailParams, Reply> {
    let mut p = MailParams::default();
    for param in params.split(' ').filter(|s| !s.is_empty()) {
        let (key, value) = match param.find('=') {
            Some(i) => (&param[..i], Some(&param[i + 1..])),
            None => (param, None),
        };
        if key.eq_ignore_ascii_case("SIZE") {
            let v = value
                .filter(|v| !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()))
                .ok_or(Reply::SYNTAX_PARAMS)?;
            p.size = Some(v.parse().unwrap_or(u64::MAX));
        } else if key.eq_ignore_ascii_case("BODY") {
            match value {
                Some(v) if v.eq_ignore_ascii_case("7BIT") => p.eight_bit = false,
                Some(v) if v.eq_ignore_ascii_case("8BITMIME") => p.eight_bit = true,
                Some(_) => return Err(Reply::UNSUPPORTED_PARAM),
                None => return Err(Reply::SYNTAX_PARAMS),
            }
        } else if key.eq_ignore_ascii_case("REQUIRETLS") {
            if value.is_some() {
                return Err(Reply::SYNTAX_PARAMS);
            }
            p.require_tls = true;
        } else if key.eq_ignore_ascii_case("SMTPUTF8") {
            if value.is_some() {
                return Err(Reply::SYNTAX_PARAMS);
            }
            p.smtputf8 = true;
        } else {
            return Err(Reply::UNSUPPORTED_PARAM);
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(line: &str) -> Result<(String, MailParams), u16> {
        match parse(line.as_bytes()) {
            Ok(Command::Mail(p, params)) => Ok((p.address.to_string(), params)),
            Ok(other) => panic!("{other:?}"),
            Err(r) => Err(r.code),
        }
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            parse(b"ehlo client.example"),
            Ok(Command::Ehlo("client.example"))
        );
        assert_eq!(parse(b"QuIt"), Ok(Command::Quit));
        assert_eq!(parse(b"noop anything"), Ok(Command::Noop));
    }

    #[test]
    fn mail_paths() {
        assert_eq!(mail("MAIL FROM:<>").unwrap().0, "");
        assert_eq!(mail("MAIL FROM:<a@b.example>").unwrap().0, "a@b.example");
        assert_eq!(mail("mail from: <a@b.example>").unwrap().0, "a@b.example");
        assert_eq!(
            mail("MAIL FROM:<@r1.example,@r2.example:a@b.example>")
                .unwrap()
                .0,
            "a@b.example"
        );
        assert_eq!(
            mail("MAIL FROM:<\"x y\"@b.example>").unwrap().0,
            "\"x y\"@b.example"
        );
        assert_eq!(
            mail("MAIL FROM:<a@[127.0.0.1]>").unwrap().0,
            "a@[127.0.0.1]"
        );
        assert_eq!(mail("MAIL FROM:foo"), Err(501));
        assert_eq!(mail("MAIL FROM:<a@b.example"), Err(501));
        assert_eq!(mail("MAIL FROM:<a@b.example>x"), Err(501));
        assert_eq!(mail("MAIL FROM:<a@-b.example>"), Err(501));
        assert_eq!(mail("MAIL FROM:<a..b@c.example>"), Err(501));
        assert_eq!(mail("MAIL TO:<a@b.example>"), Err(501));
        let long = format!("MAIL FROM:<{}@b.example>", "x".repeat(65));
        assert_eq!(mail(&long), Err(501));
    }

    #[test]
    fn mail_parameters() {
        let (_, p) = mail("MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME SMTPUTF8").unwrap();
        assert_eq!(
            p,
            MailParams {
                size: Some(1000),
                eight_bit: true,
                smtputf8: true,
                require_tls: false
            }
        );
        assert_eq!(mail("MAIL FROM:<a@b.example> SIZE=abc"), Err(501));
        assert_eq!(mail("MAIL FROM:<a@b.example> BODY=BINARYMIME"), Err(555));
        assert_eq!(mail("MAIL FROM:<a@b.example> RET=FULL"), Err(555));
    }

    #[test]
    fn rcpt_postmaster_without_domain() {
        match parse(b"RCPT TO:<Postmaster>") {
            Ok(Command::Rcpt(p)) => assert_eq!((p.address, p.domain), ("Postmaster", "")),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(b"RCPT TO:<>").unwrap_err().code, 501);
        assert_eq!(
            parse(b"RCPT TO:<a@b.example> NOTIFY=NEVER")
                .unwrap_err()
                .code,
            555
        );
    }

    #[test]
    fn bdat_syntax() {
        assert_eq!(
            parse(b"BDAT 10 LAST"),
            Ok(Command::Bdat {
                size: 10,
                last: true
            })
        );
        assert_eq!(
            parse(b"bdat 0"),
            Ok(Command::Bdat {
                size: 0,
                last: false
            })
        );
        assert_eq!(parse(b"BDAT -1").unwrap_err().code, 501);
        assert_eq!(parse(b"BDAT 1 MORE").unwrap_err().code, 501);
    }

    #[test]
    fn control_bytes_and_bad_utf8_are_refused() {
        assert_eq!(parse(b"NOOP \0").unwrap_err(), Reply::BAD_COMMAND_BYTES);
        assert_eq!(parse(b"NOOP \xff").unwrap_err(), Reply::BAD_COMMAND_BYTES);
        assert_eq!(parse(b"FOO").unwrap_err(), Reply::UNRECOGNIZED);
        assert_eq!(parse(b"DATA x").unwrap_err(), Reply::SYNTAX_NO_ARGS);
    }
}
