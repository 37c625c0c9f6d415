//! `POST /mail/inbound` holds a message to the rules SMTP holds the same
//! octets to: the text rules of DATA, the sender checks of MAIL and the
//! header section our trace fields are put on.

use super::harness::{http_with, wait_stored, Gomail};

const TOKEN: &str = "inject-tok";

/// Posts `body` to `/mail/inbound`; (status, JSON answer).
fn post(g: &Gomail, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {TOKEN}");
    let (status, _, text) = http_with(
        g.api,
        "POST",
        "/mail/inbound",
        &[("Authorization", &auth)],
        &body.to_string(),
    );
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, v)
}

fn message(raw: &str) -> serde_json::Value {
    serde_json::json!({ "sender": "a@client.test", "recipient": "u@example.test", "raw": raw })
}

/// A 400 `validation_error` naming `field`, in GoMail's error shape.
fn assert_invalid(answer: &(u16, serde_json::Value), field: &str) {
    let (status, v) = answer;
    assert_eq!(*status, 400, "{v}");
    assert_eq!(v["error"], "validation_error", "{v}");
    assert_eq!(v["details"]["field"], field, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v["request_id"].as_str().is_some(), "{v}");
}

#[test]
fn raw_with_a_bare_cr_or_a_long_line_is_refused_as_smtp_data_would_be() {
    let g = Gomail::start(&format!(
        "bearer_token: {TOKEN}\nrate_limit_per_minute: 0\n"
    ));
    for raw in [
        "Subject: x\n\nline\rMAIL FROM:<evil@x.test>\n",
        "Subject: x\r\n\r\nends in a lone CR\r",
        "Subject: x\r\n\r\nbare\r.\r\n",
    ] {
        let a = post(&g, &message(raw));
        assert_invalid(&a, "raw");
        assert!(
            a.1["details"]["smtp_reply"]
                .as_str()
                .is_some_and(|r| r.starts_with("550 5.6.0") && r.contains("bare <CR>")),
            "{raw:?}: {}",
            a.1
        );
    }
    let long = format!("Subject: x\n\n{}\n", "y".repeat(999));
    let a = post(&g, &message(&long));
    assert_invalid(&a, "raw");
    assert!(
        a.1["details"]["smtp_reply"]
            .as_str()
            .is_some_and(|r| r.contains("longer than 1000 octets")),
        "{}",
        a.1
    );
    // LF alone is the API's line end (JSON clients write `\n`), and NUL is
    // kept as DATA keeps it: both accepted, stored with CRLF line ends.
    let (status, v) = post(&g, &message("Subject: ok\n\nnul \u{0}\r\nlf\nend\n"));
    assert_eq!(status, 200, "{v}");
    let stored = wait_stored(&g.data_dir, 1);
    assert_eq!(stored.len(), 1, "only the accepted message is stored");
    // The exact octets are in metadata.raw_base64 (raw shows the NUL as
    // U+FFFD).
    use base64::Engine as _;
    let b64 = stored[0].1["metadata"]["raw_base64"]
        .as_str()
        .expect("metadata.raw_base64");
    let octets = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert!(
        octets.ends_with(b"\r\n\r\nnul \0\r\nlf\r\nend\r\n"),
        "{:?}",
        String::from_utf8_lossy(&octets)
    );
}

#[test]
fn a_sender_that_is_not_fully_qualified_is_refused_unless_its_client_is_trusted() {
    let g = Gomail::start(&format!(
        "bearer_token: {TOKEN}\nrate_limit_per_minute: 0\n"
    ));
    let with = |sender: &str, extra: serde_json::Value| {
        let mut m = message("Subject: x\n\nbody\n");
        m["sender"] = sender.into();
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        post(&g, &m)
    };
    // The API's caller is on loopback (trusted), but the sender is
    // someone else's: without `client_ip` the rule applies.
    for bad in ["a@localhost", "a@mailhost", "a@host.invalid", "a@1.2.3.4"] {
        for extra in [
            serde_json::json!({}),
            serde_json::json!({ "client_ip": "192.0.2.7", "helo": "client.test" }),
        ] {
            let a = with(bad, extra);
            assert_invalid(&a, "sender");
            assert_eq!(
                a.1["details"]["smtp_reply"],
                format!("504 5.5.2 <{bad}>: Sender address rejected: need fully-qualified address"),
            );
        }
    }
    for ok in ["a@mail.client.test", "a@[192.0.2.1]", ""] {
        let (status, v) = with(ok, serde_json::json!({}));
        assert_eq!(status, 200, "{ok:?}: {v}");
    }
    // A client in trusted_networks is exempt, as it is in SMTP.
    let (status, v) = with(
        "root@localhost",
        serde_json::json!({ "client_ip": "127.0.0.9" }),
    );
    assert_eq!(status, 200, "{v}");
    // `helo` is held to the EHLO syntax: one name (or an address literal).
    for bad in ["two words", "x\r\nX-Injected: 1", "tab\there"] {
        let a = with("a@client.test", serde_json::json!({ "helo": bad }));
        assert_invalid(&a, "helo");
    }
    let (status, v) = with(
        "a@client.test",
        serde_json::json!({ "client_ip": "192.0.2.7", "helo": "[192.0.2.7]" }),
    );
    assert_eq!(status, 200, "{v}");

    let off = Gomail::start(&format!(
        "bearer_token: {TOKEN}\nvalidation:\n  reject_invalid_domains: false\n"
    ));
    let mut m = message("Subject: x\n\nbody\n");
    m["sender"] = "a@localhost".into();
    let (status, v) = post(&off, &m);
    assert_eq!(status, 200, "{v}");
}
