//! The `Received:` trace header gomail prepends to every accepted message
//! (RFC 5321 section 4.4; protocol names from RFC 3848 and RFC 6531).

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
    let helo = sanitize(&tx.helo);
    let mut h = format!("Received: from {helo} ([{peer}])\r\n");
    if let Some(tls) = &tx.tls {
        h.push_str(&format!(
            "\t(using {} with cipher {})\r\n",
            sanitize(&tls.version),
            sanitize(&tls.cipher)
        ));
    }
    h.push_str(&format!(
        "\tby {hostname} (gomail) with {proto} id {id}\r\n"
    ));
    if let [rcpt] = tx.recipients.as_slice() {
        h.push_str(&format!("\tfor <{}>;\r\n\t{date}\r\n", sanitize(rcpt)));
    } else {
        h.push_str(&format!("\t; {date}\r\n"));
    }
    h
}

/// Keeps client-chosen text from breaking the header's structure.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || c == '(' || c == ')' {
                '_'
            } else {
                c
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
    }
}
