//! The trace headers gomail prepends to every accepted message: as the
//! final delivery (into the store), `Return-Path:` with the envelope sender,
//! then `Received:` (RFC 5321 section 4.4; protocol names from RFC 3848
//! and RFC 6531).

use std::net::IpAddr;

use super::session::Transaction;

/// Builds the `Received:` header (CRLF-terminated, folded) for `tx`.
///
/// `date` is an RFC 5322 date-time. The `for` clause names the recipient only
/// when there is exactly one, as Postfix does, so a message to many
/// recipients does not disclose the others.
pub fn received_header(
    tx: &Transaction,
    peer: IpAddr,
    hostname: &str,
    id: &str,
    date: &str,
) -> String {
    let proto = match (tx.esmtp, tx.smtputf8, tx.tls.is_some()) {
        (false, _, _) => "SMTP",
        (true, false, false) => "ESMTP",
        (true, false, true) => "ESMTPS",
        (true, true, false) => "UTF8SMTP",
        (true, true, true) => "UTF8SMTPS",
    };
    let helo = sanitize_name(&tx.helo);
    use std::fmt::Write;
    let mut h = String::with_capacity(256);
    // Writing into a String cannot fail.
    let _ = write!(h, "Received: from {helo} ([{peer}])\r\n");
    if let Some(tls) = &tx.tls {
        let _ = write!(
            h,
            "\t(using {} with cipher {})\r\n",
            sanitize(&tls.version),
            sanitize(&tls.cipher)
        );
    }
    let _ = write!(h, "\tby {hostname} (gomail) with {proto} id {id}\r\n");
    if let [rcpt] = tx.recipients.as_slice() {
        let _ = write!(h, "\tfor <{}>;\r\n\t{date}\r\n", sanitize(rcpt));
    } else {
        let _ = write!(h, "\t; {date}\r\n");
    }
    h
}

/// What goes between the trace fields and a message: an empty line when
/// the message's first line starts with a space or tab, else nothing.
///
/// Such a line is a continuation with no field before it (RFC 5322
/// section 2.2.3): put right after the trace fields, it would continue our
/// `Received:`. So it starts the body instead, as in Postfix's smtpd, which
/// writes an empty line before a message that starts with whitespace;
/// the message then has no header section of its own.
pub fn separator(message: &[u8]) -> &'static str {
    if matches!(message.first(), Some(b' ' | b'\t')) {
        "\r\n"
    } else {
        ""
    }
}

/// The `Return-Path:` header for the envelope sender (`<>` for none).
pub fn return_path_header(mail_from: &str) -> String {
    format!("Return-Path: <{}>\r\n", sanitize(mail_from))
}

/// Keeps client-chosen text from breaking the header's structure.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || "()<>;".contains(c) {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The EHLO name as it may stand in the `from` clause: domain or address
/// literal characters only (letters of any script, for SMTPUTF8 names).
fn sanitize_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_alphanumeric() || ".-_[]:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_header_names_one_recipient_only() {
        let mut tx = Transaction {
            helo: "client.example".into(),
            esmtp: true,
            mail_from: "a@b.example".into(),
            recipients: vec!["r@example.test".into()],
            body: Vec::new(),
            eight_bit: false,
            smtputf8: false,
            chunked: false,
            tls: None,
            require_tls: false,
        };
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let h = received_header(
            &tx,
            ip,
            "mx.example.test",
            "ID1",
            "Mon, 30 Nov 2026 08:00:00 +0000",
        );
        assert_eq!(
            h,
            "Received: from client.example ([127.0.0.1])\r\n\tby mx.example.test (gomail) with ESMTP id ID1\r\n\tfor <r@example.test>;\r\n\tMon, 30 Nov 2026 08:00:00 +0000\r\n"
        );
        tx.recipients.push("s@example.test".into());
        tx.helo = "evil)\r\nX-Injected: 1".into();
        let h = received_header(&tx, ip, "mx", "ID1", "D");
        assert!(!h.contains("s@example.test"));
        assert!(!h.contains("\r\nX-Injected"));
        tx.helo = "x.test;evil <a@b>".into();
        let h = received_header(&tx, ip, "mx", "ID1", "D");
        assert!(
            h.starts_with("Received: from x.test_evil__a_b_ ([127.0.0.1])\r\n"),
            "{h}"
        );
        assert_eq!(return_path_header(""), "Return-Path: <>\r\n");
        assert_eq!(
            return_path_header("a@b.example"),
            "Return-Path: <a@b.example>\r\n"
        );
    }

    #[test]
    fn a_message_starting_with_whitespace_is_kept_off_the_trace_fields() {
        assert_eq!(separator(b" folded\r\nSubject: x\r\n\r\n"), "\r\n");
        assert_eq!(separator(b"\tx\r\n"), "\r\n");
        assert_eq!(separator(b"Subject: x\r\n\r\nbody\r\n"), "");
        assert_eq!(separator(b"\r\nno header section\r\n"), "");
        assert_eq!(separator(b""), "");
    }
}
