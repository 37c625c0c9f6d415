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
    let g = Gomail::start(&format!("bearer_token: {TOKEN}\n"));
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
    let raw = stored[0].1["raw"].as_str().unwrap();
    assert!(raw.ends_with("nul \u{0}\r\nlf\r\nend\r\n"), "{raw:?}");
}
