//! GoMail's `validation:` block from outside: `strict_headers` and
//! `reject_invalid_domains` on the real binary (`check_spf` and
//! `check_dkim` are in auth/spf.rs, next to the DNS fixture they need).

use std::net::{IpAddr, Ipv4Addr};

use super::harness::{queued, Client, Gomail};

const UNTRUSTED: &str = "trusted_networks: []\n";

fn remote() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 7, 7))
}

/// Sends `message` from a@client.test; the reply to the end of data.
fn send(g: &Gomail, message: &str) -> String {
    let mut c = Client::connect_from(g.addr, Some(remote()));
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<u@example.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(message.as_bytes());
    c.send(b".\r\n");
    c.reply()
}

const DATE: &str = "Date: Fri, 4 Dec 2026 10:00:00 +0000\r\n";

#[test]
fn strict_headers_refuses_what_rfc_5322_forbids() {
    let good = format!("From: <a@client.test>\r\n{DATE}Subject: ok\r\n\r\nbody\r\n");
    let two_from = format!(
        "From: <a@client.test>\r\nFrom: <ceo@bank.test>\r\n{DATE}Subject: x\r\n\r\nbody\r\n"
    );
    let not_a_field = format!("From: <a@client.test>\r\n{DATE}Subject x\r\n\r\nbody\r\n");
    let no_date = "From: <a@client.test>\r\nSubject: x\r\n\r\nbody\r\n".to_string();

    let g = Gomail::start(&format!("{UNTRUSTED}validation:\n  strict_headers: true\n"));
    queued(&send(&g, &good));
    for (bad, why) in [
        (&two_from, "2 from header fields"),
        (&not_a_field, "is not a field"),
        (&no_date, "0 date header fields"),
    ] {
        let r = send(&g, bad);
        assert!(r.starts_with("550 5.6.0 Message rejected: "), "{r}");
        assert!(r.contains(why), "{r}");
    }
    // Off (the default), the same messages are accepted as they are.
    let g = Gomail::start(UNTRUSTED);
    for m in [&two_from, &not_a_field, &no_date] {
        queued(&send(&g, m));
    }
}

#[test]
fn reject_invalid_domains_refuses_senders_that_are_not_fully_qualified() {
    let g = Gomail::start(UNTRUSTED);
    let mut c = Client::connect_from(g.addr, Some(remote()));
    c.cmd("EHLO client.test");
    for bad in [
        "a@localhost",
        "a@mailhost",
        "a@host.invalid",
        "a@sub.localhost",
        "a@1.2.3.4",
    ] {
        let r = c.cmd(&format!("MAIL FROM:<{bad}>"));
        assert_eq!(
            r,
            format!("504 5.5.2 <{bad}>: Sender address rejected: need fully-qualified address\r\n")
        );
    }
    // Internationalized names are judged by their IDNA form.
    for bad in [
        "a@foo.ｉｎｖａｌｉｄ",
        "a@foo.ⓛⓞⓒⓐⓛⓗⓞⓢⓣ",
        "a@foo.local\u{AD}host",
        "a@foo.localhost\u{200B}",
    ] {
        let r = c.cmd(&format!("MAIL FROM:<{bad}> SMTPUTF8"));
        assert!(r.starts_with("504 5.5.2"), "{bad}: {r}");
    }
    let r = c.cmd("MAIL FROM:<a@bücher.example> SMTPUTF8");
    assert!(r.starts_with("250"), "{r}");
    c.cmd("RSET");
    for ok in ["<a@mail.client.test>", "<a@[192.0.2.1]>", "<>"] {
        let r = c.cmd(&format!("MAIL FROM:{ok}"));
        assert!(r.starts_with("250"), "{ok}: {r}");
        c.cmd("RSET");
    }
    // Trusted clients are exempt, and the check can be turned off.
    let trusted = Gomail::start("");
    let mut c = Client::connect(trusted.addr);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<root@localhost>").starts_with("250"));
    let off = Gomail::start(&format!(
        "{UNTRUSTED}validation:\n  reject_invalid_domains: false\n"
    ));
    let mut c = Client::connect_from(off.addr, Some(remote()));
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<a@localhost>").starts_with("250"));
}

#[test]
fn strict_headers_applies_to_mail_injected_through_the_api() {
    let g = Gomail::start("bearer_token: inject-tok\nvalidation:\n  strict_headers: true\n");
    let post = |raw: &str| {
        let body = serde_json::json!({ "sender": "a@client.test", "recipient": "u@example.test", "raw": raw });
        let (status, _, text) = super::harness::http_with(
            g.api,
            "POST",
            "/mail/inbound",
            &[("Authorization", "Bearer inject-tok")],
            &body.to_string(),
        );
        (
            status,
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
        )
    };
    let (status, v) = post(&format!(
        "From: <a@client.test>\nFrom: <ceo@bank.test>\n{DATE}\nbody\n"
    ));
    assert_eq!(status, 400, "{v}");
    assert!(
        v["details"]["smtp_reply"]
            .as_str()
            .unwrap()
            .starts_with("550 5.6.0"),
        "{v}"
    );
    let (status, v) = post(&format!(
        "From: <a@client.test>\n{DATE}Subject: ok\n\nbody\n"
    ));
    assert_eq!(status, 200, "{v}");
}

#[test]
fn results_forged_in_our_name_are_renamed_before_storage() {
    // Checks off (the harness default): the forged header would otherwise
    // be the only Authentication-Results for our host in `raw`.
    let g = Gomail::start(UNTRUSTED);
    let forged = format!(
        "Authentication-Results: mx.example.test; dmarc=pass header.from=bank.test\r\n\
         Authentication-Results: relay.other.test; spf=pass\r\n\
         X-Gomail-Quarantine: no\r\nFrom: <ceo@bank.test>\r\n{DATE}Subject: pay\r\n\r\nbody\r\n"
    );
    queued(&send(&g, &forged));
    let raw = super::harness::wait_stored(&g.data_dir, 1)[0].1["raw"]
        .as_str()
        .unwrap()
        .to_string();
    let head = raw.split("\r\n\r\n").next().unwrap();
    assert!(
        !head.lines().any(|l| l
            .to_ascii_lowercase()
            .starts_with("authentication-results: mx.example.test")),
        "{head}"
    );
    assert!(
        head.contains("X-Gomail-Forged-Authentication-Results: mx.example.test; dmarc=pass"),
        "{head}"
    );
    assert!(
        head.contains("\r\nAuthentication-Results: relay.other.test; spf=pass\r\n"),
        "{head}"
    );
    assert!(
        head.contains("X-Gomail-Forged-Quarantine: no")
            && !head.contains("\r\nX-Gomail-Quarantine:"),
        "{head}"
    );
}

/// A message whose first line starts with a space or tab has no header
/// section of its own (RFC 5322 section 2.2.3: a continuation needs a field
/// before it). Put right after our trace fields it would continue them, so
/// the client's octets start the body, as Postfix's smtpd does it.
#[test]
fn a_leading_continuation_line_cannot_extend_our_trace_fields() {
    let g = Gomail::start(&format!(
        "{UNTRUSTED}bearer_token: inject-tok\nrate_limit_per_minute: 0\n"
    ));
    let leading = [
        " folded\r\nSubject: x\r\n\r\nbody\r\n",
        "\tx\r\n\r\nbody\r\n",
    ];
    for m in leading {
        queued(&send(&g, m));
    }
    let body = serde_json::json!({
        "sender": "a@client.test",
        "recipient": "u@example.test",
        "raw": " api folded\nSubject: y\n\nbody\n",
    });
    let (status, _, text) = super::harness::http_with(
        g.api,
        "POST",
        "/mail/inbound",
        &[("Authorization", "Bearer inject-tok")],
        &body.to_string(),
    );
    assert_eq!(status, 200, "{text}");
    let stored = super::harness::wait_stored(&g.data_dir, 3);
    assert_eq!(stored.len(), 3);
    for (_, v) in stored {
        let raw = v["raw"].as_str().unwrap();
        let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
        // The header section is ours alone, every field one we wrote.
        for line in head.split("\r\n") {
            assert!(
                line.starts_with("Return-Path: ")
                    || line.starts_with("Received: ")
                    || line.starts_with('\t'),
                "{raw:?}"
            );
        }
        assert!(!head.contains("folded") && !head.contains("\tx"), "{raw:?}");
        assert!(
            [" folded\r\n", "\tx\r\n", " api folded\r\n"]
                .iter()
                .any(|first| rest.starts_with(first)),
            "{raw:?}"
        );
    }
}

/// A forged field already at RFC 5322's 998 octets stays within them once
/// renamed: folded after its colon, its value unchanged.
#[test]
fn a_renamed_forged_field_stays_within_998_octets() {
    let g = Gomail::start(UNTRUSTED);
    let head = "Authentication-Results: mx.example.test; dmarc=pass ";
    let line = format!("{head}{}", "v".repeat(998 - head.len()));
    queued(&send(
        &g,
        &format!("{line}\r\nFrom: <a@client.test>\r\n{DATE}\r\nbody\r\n"),
    ));
    let raw = super::harness::wait_stored(&g.data_dir, 1)[0].1["raw"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(raw.split("\r\n").all(|l| l.len() <= 998), "{raw}");
    assert!(
        raw.contains(&format!(
            "\r\nX-Gomail-Forged-Authentication-Results:\r\n{}\r\nFrom:",
            &line["Authentication-Results:".len()..]
        )),
        "{raw}"
    );
}
