//! The SMTP dialogue over real sockets, as clients see it.

use super::harness::{queue_id, require_tool, stored, wait_stored, Client, Gomail};

#[test]
fn lettre_delivers_and_the_json_file_has_gomails_fields() {
    let g = Gomail::start("");
    let port = g.addr.port();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let response = rt.block_on(async move {
        use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
        let msg = Message::builder()
            .from("Alice Sender <alice@sender.example>".parse().unwrap())
            .to("Bob <bob@example.test>".parse().unwrap())
            .cc("carol@other.test".parse().unwrap())
            .subject("Quarterly report")
            .message_id(Some("<q1@sender.example>".into()))
            .body(String::from("Numbers attached.\r\n"))
            .unwrap();
        let t = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(port)
            .build();
        t.send(msg).await.unwrap()
    });
    assert_eq!(response.code().to_string(), "250");
    let first = response.message().next().unwrap();
    let id = first
        .trim_start_matches("2.0.0 ")
        .strip_prefix("Ok: queued as ")
        .unwrap_or_else(|| panic!("{first}"))
        .to_string();
    let files = wait_stored(&g.data_dir, 1);
    assert_eq!(files.len(), 1);
    let (file_id, v) = &files[0];
    assert_eq!(file_id, &id);
    assert_eq!(v["sender"], "alice@sender.example");
    assert_eq!(v["recipient"], "bob@example.test");
    assert_eq!(
        v["recipients"],
        serde_json::json!(["bob@example.test", "carol@other.test"])
    );
    assert_eq!(v["subject"], "Quarterly report");
    assert_eq!(v["message_id"], "<q1@sender.example>");
    assert_eq!(v["from_header"], "\"Alice Sender\" <alice@sender.example>");
    assert_eq!(v["to_header"], "Bob <bob@example.test>");
    let raw = v["raw"].as_str().unwrap();
    assert!(
        raw.starts_with("Return-Path: <alice@sender.example>\r\nReceived: from "),
        "{raw}"
    );
    assert!(raw.contains("by mx.example.test (gomail) with ESMTP id "));
    assert!(
        raw.ends_with("\r\n\r\nNumbers attached.\r\n\r\n"),
        "{raw:?}"
    );
    assert_eq!(v["metadata"]["size_bytes"], raw.len());
    assert_eq!(v["metadata"]["client_ip"], "127.0.0.1");
    assert!(v["received_at"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn swaks_delivers_plain_and_pipelined() {
    let swaks = require_tool("swaks");
    let g = Gomail::start("");
    for extra in [&[][..], &["--pipeline"][..]] {
        let out = std::process::Command::new(&swaks)
            .args([
                "--server",
                &g.addr.to_string(),
                "--from",
                "s@sender.example",
                "--to",
                "rcpt@example.test",
            ])
            .args(["--h-Subject", "via swaks", "--body", "swaks body"])
            .args(extra)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("<-  250 2.0.0 Ok: queued as "), "{text}");
    }
    let files = wait_stored(&g.data_dir, 2);
    assert_eq!(files.len(), 2);
    assert!(files
        .iter()
        .all(|(_, v)| v["subject"] == "via swaks"
            && v["raw"].as_str().unwrap().contains("swaks body")));
}

#[test]
fn pipelined_transactions_in_one_write() {
    let g = Gomail::start("");
    let mut c = Client::connect(g.addr);
    c.send(
        b"EHLO client.example\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<x@example.test>\r\nRCPT TO:<y@nowhere.example>\r\nDATA\r\n",
    );
    let ehlo = c.reply();
    assert!(
        ehlo.contains("250-PIPELINING\r\n")
            && ehlo.contains("250-CHUNKING\r\n")
            && ehlo.contains("250-ENHANCEDSTATUSCODES\r\n")
            && ehlo.ends_with("250 STARTTLS\r\n"),
        "{ehlo}"
    );
    assert_eq!(c.reply(), "250 2.1.0 Sender OK\r\n");
    assert_eq!(c.reply(), "250 2.1.5 Recipient OK\r\n");
    assert_eq!(c.reply(), "550 5.7.1 Error: relay access denied\r\n");
    assert_eq!(c.reply(), "354 End data with <CR><LF>.<CR><LF>\r\n");
    c.send(b"Subject: one\r\n\r\n..dotted\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<z@other.test>\r\nBDAT 16 LAST\r\nSubject: two\r\n\r\nQUIT\r\n");
    let id1 = queue_id(&c.reply()).expect("first message queued");
    assert_eq!(c.reply(), "250 2.1.0 Sender OK\r\n");
    assert_eq!(c.reply(), "250 2.1.5 Recipient OK\r\n");
    let id2 = queue_id(&c.reply()).expect("BDAT message queued");
    assert_eq!(c.reply(), "221 2.0.0 Bye\r\n");
    let files = wait_stored(&g.data_dir, 2);
    let get = |id: &str| &files.iter().find(|(i, _)| i == id).unwrap().1;
    assert!(get(&id1)["raw"]
        .as_str()
        .unwrap()
        .ends_with("Subject: one\r\n\r\n.dotted\r\n"));
    assert_eq!(get(&id2)["sender"], "");
    assert!(get(&id2)["raw"]
        .as_str()
        .unwrap()
        .ends_with("Subject: two\r\n\r\n"));
    assert_eq!(get(&id2)["metadata"]["smtp"]["chunking"], true);
}

#[test]
fn size_limit_is_announced_and_enforced_without_dropping_the_connection() {
    let g = Gomail::start("max_message_size: 2048\n");
    let mut c = Client::connect(g.addr);
    assert!(c.cmd("EHLO c").contains("250-SIZE 2048\r\n"));
    assert!(c
        .cmd("MAIL FROM:<a@s.example> SIZE=4096")
        .starts_with("552 5.3.4 "));
    let big = "x".repeat(70) + "\r\n";
    let r = c.mail("a@s.example", &["r@example.test"], &big.repeat(40));
    assert!(r.starts_with("552 5.3.4 "), "{r}");
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 OK\r\n");
    let mut chunk =
        b"MAIL FROM:<a@s.example>\r\nRCPT TO:<r@example.test>\r\nBDAT 3000 LAST\r\n".to_vec();
    chunk.extend(std::iter::repeat_n(b'y', 3000));
    c.send(&chunk);
    c.reply();
    c.reply();
    assert!(c.reply().starts_with("552 5.3.4 "));
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 OK\r\n");
    assert!(stored(&g.data_dir).is_empty());
}

#[test]
fn recipient_101_gets_452() {
    let g = Gomail::start("");
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO c");
    c.cmd("MAIL FROM:<a@s.example>");
    for i in 0..100 {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<u{i}@example.test>")),
            "250 2.1.5 Recipient OK\r\n"
        );
    }
    assert_eq!(
        c.cmd("RCPT TO:<u100@example.test>"),
        "452 4.5.3 Error: too many recipients\r\n"
    );
    assert_eq!(c.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
    c.send(b"Subject: many\r\n\r\nx\r\n.\r\n");
    assert!(queue_id(&c.reply()).is_some());
    let files = wait_stored(&g.data_dir, 1);
    assert_eq!(files[0].1["recipients"].as_array().unwrap().len(), 100);
}

#[test]
fn relay_and_malformed_paths_are_refused() {
    let g = Gomail::start("");
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO c");
    assert_eq!(
        c.cmd("MAIL FROM:foo@bar.example"),
        "501 5.1.7 Error: bad sender address syntax\r\n"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<foo@bar.example"),
        "501 5.1.7 Error: bad sender address syntax\r\n"
    );
    assert_eq!(c.cmd("MAIL FROM:<>"), "250 2.1.0 Sender OK\r\n");
    assert_eq!(
        c.cmd("RCPT TO:<victim@gmail.example>"),
        "550 5.7.1 Error: relay access denied\r\n"
    );
    assert_eq!(
        c.cmd("RCPT TO:<user@example.test.evil.example>"),
        "550 5.7.1 Error: relay access denied\r\n"
    );
    assert_eq!(
        c.cmd("RCPT TO:<user@EXAMPLE.TEST>"),
        "250 2.1.5 Recipient OK\r\n"
    );
    assert_eq!(
        c.cmd("VRFY root"),
        "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"
    );
    assert_eq!(
        c.cmd("NOOP \0"),
        "500 5.5.2 Error: invalid characters in command\r\n"
    );
    assert_eq!(
        c.cmd(&format!("NOOP {}", "a".repeat(600))),
        "500 5.5.2 Error: command line too long (limit 512 octets)\r\n"
    );
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    assert!(c.closed());
}

#[test]
fn smuggled_messages_are_not_accepted() {
    let g = Gomail::start("");
    for hidden in ["\n.\n", "\r\n.\n", "\n.\r\n", "\r.\r", "\r\n.\r"] {
        let mut c = Client::connect(g.addr);
        c.cmd("EHLO attacker.example");
        c.cmd("MAIL FROM:<a@attacker.example>");
        c.cmd("RCPT TO:<b@example.test>");
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(format!("Subject: cover\r\n\r\ncover{hidden}MAIL FROM:<admin@example.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n").as_bytes());
        let r = c.reply();
        assert!(r.starts_with("550 5.6.0 "), "{hidden:?}: {r}");
        assert_eq!(c.cmd("NOOP"), "250 2.0.0 OK\r\n", "{hidden:?}");
    }
    // A clean message afterwards, so the store is known to be flushing.
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO clean.example");
    assert!(queue_id(&c.mail(
        "a@s.example",
        &["b@example.test"],
        "Subject: clean\r\n\r\nok"
    ))
    .is_some());
    let files = wait_stored(&g.data_dir, 1);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let files2 = stored(&g.data_dir);
    assert_eq!(files.len(), 1);
    assert_eq!(files2.len(), 1);
    assert_eq!(files2[0].1["subject"], "clean");
}

#[test]
fn abusive_sessions_are_closed_after_20_errors() {
    let g = Gomail::start("");
    let mut c = Client::connect(g.addr);
    for _ in 0..19 {
        assert_eq!(
            c.cmd("BOGUS"),
            "500 5.5.2 Error: command not recognized\r\n"
        );
    }
    c.send(b"BOGUS\r\n");
    assert_eq!(c.reply(), "500 5.5.2 Error: command not recognized\r\n");
    assert_eq!(
        c.reply(),
        "421 4.7.0 Error: too many errors, closing connection\r\n"
    );
    assert!(c.closed());
    // Everyone else is still served.
    let mut d = Client::connect(g.addr);
    assert!(d.cmd("EHLO ok").starts_with("250-"));
}

#[test]
fn bdat_cannot_bypass_the_smuggling_policy() {
    let g = Gomail::start("");
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO attacker.example");
    let body = b"Subject: x\r\n\r\nline\n.\r\nMAIL FROM:<e@attacker.example>\r\n";
    c.cmd("MAIL FROM:<a@attacker.example>");
    c.cmd("RCPT TO:<b@example.test>");
    c.send(format!("BDAT {} LAST\r\n", body.len()).as_bytes());
    c.send(body);
    let r = c.reply();
    assert!(r.starts_with("550 5.6.0 "), "{r}");
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 OK\r\n");
    // A clean message afterwards, so the store is known to be flushing:
    // only it may be there.
    let r = c.mail(
        "a@s.example",
        &["b@example.test"],
        "Subject: clean\r\n\r\nok",
    );
    assert!(queue_id(&r).is_some(), "{r}");
    wait_stored(&g.data_dir, 1);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let files = stored(&g.data_dir);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].1["subject"], "clean");
}
