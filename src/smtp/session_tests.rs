//! Scripted-client tests of the session: bytes in, replies and spooled
//! transactions out, with a manual clock. Every script is replayed whole, at
//! every split point and one byte at a time; the results must be identical.

use super::*;
use std::time::Duration;

fn cfg() -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        hostname: "mx.example.test".into(),
        domains: vec!["example.test".into(), "other.test".into()],
        limits: Limits {
            max_message_size: 1000,
            max_recipients: 3,
            ..Limits::default()
        },
        starttls: true,
        check_sender: false,
        reject_non_fqdn_sender: true,
        strict_headers: false,
    })
}

/// What a client observes: the replies and what got spooled.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    replies: String,
    spooled: Vec<Transaction>,
    closed: bool,
}

/// Drives a session like the shard driver does, feeding `chunks` in order.
/// Every spool request succeeds unless `fail_spool` is set.
fn drive_with(cfg: Arc<SessionConfig>, chunks: &[&[u8]], fail_spool: bool) -> Outcome {
    let now = Instant::now();
    let mut s = Session::new(cfg, now);
    let mut out = Vec::new();
    s.greet(&mut out);
    let mut held: Vec<u8> = Vec::new();
    let mut spooled = Vec::new();
    for chunk in chunks {
        held.extend_from_slice(chunk);
        loop {
            let used = s.handle_input(&held, now, &mut out);
            held.drain(..used);
            let mut completed = false;
            while let Some(a) = s.poll_action() {
                if let Action::Spool(tx) = a {
                    // Promise 1: no 250 for the message before the spool answers.
                    assert!(!String::from_utf8_lossy(&out).ends_with("queued as Q1\r\n"));
                    spooled.push(*tx);
                    let c = if fail_spool {
                        Completion::SpoolFailed
                    } else {
                        Completion::Spooled { id: "Q1".into() }
                    };
                    s.handle_completion(c, now, &mut out);
                    completed = true;
                }
            }
            if !completed || held.is_empty() {
                break;
            }
        }
    }
    Outcome {
        replies: String::from_utf8(out).unwrap(),
        spooled,
        closed: s.is_closed(),
    }
}

fn drive(script: &[u8]) -> Outcome {
    drive_with(cfg(), &[script], false)
}

/// Runs `script` whole, at every split point and byte by byte; asserts all agree.
fn drive_all_splits(script: &[u8]) -> Outcome {
    let whole = drive(script);
    for split in 0..=script.len() {
        let (a, b) = script.split_at(split);
        assert_eq!(drive_with(cfg(), &[a, b], false), whole, "split at {split}");
    }
    let bytes: Vec<&[u8]> = script.chunks(1).collect();
    assert_eq!(drive_with(cfg(), &bytes, false), whole, "byte by byte");
    whole
}

fn codes(replies: &str) -> Vec<&str> {
    replies
        .split("\r\n")
        .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ')
        .map(|l| &l[..3])
        .collect()
}

const GREETING: &str = "220 mx.example.test ESMTP gomail\r\n";

#[test]
fn plain_transaction_is_spooled_then_acknowledged() {
    let o = drive_all_splits(
        b"EHLO client.example\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<b@example.test>\r\nDATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n",
    );
    assert_eq!(
        o.replies,
        format!(
            "{GREETING}250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n\
             250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n\
             250 2.0.0 Ok: queued as Q1\r\n221 2.0.0 Bye\r\n"
        )
    );
    assert_eq!(o.spooled.len(), 1);
    let tx = &o.spooled[0];
    assert_eq!(tx.mail_from, "a@sender.example");
    assert_eq!(tx.recipients, vec!["b@example.test"]);
    assert_eq!(tx.body, b"Subject: hi\r\n\r\nbody\r\n");
    assert_eq!((tx.helo.as_str(), tx.esmtp), ("client.example", true));
    assert!(o.closed);
}

#[test]
fn pipelined_transactions_at_every_split_point() {
    let o = drive_all_splits(
        b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@example.test>\r\nRCPT TO:<y@nowhere.example>\r\nDATA\r\n..dot\r\n.\r\n\
          MAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<Z@OTHER.TEST>\r\nDATA\r\nm2\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n",
    );
    assert_eq!(
        codes(&o.replies),
        [
            "220", "250", "250", "250", "550", "354", "250", "250", "250", "354", "250", "250",
            "250", "221"
        ]
    );
    assert_eq!(o.spooled.len(), 2);
    assert_eq!(o.spooled[0].mail_from, "");
    assert_eq!(o.spooled[0].body, b".dot\r\n");
    assert_eq!(o.spooled[1].recipients, vec!["Z@OTHER.TEST"]);
    assert!(o.spooled[1].eight_bit);
}

#[test]
fn smuggled_messages_are_never_accepted() {
    // Each body hides a second transaction behind a non-CRLF terminator,
    // then ends with the real CRLF.CRLF.
    for hidden in [&b"\n.\n"[..], b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r"] {
        let mut script =
            b"EHLO c\r\nMAIL FROM:<a@s.example>\r\nRCPT TO:<b@example.test>\r\nDATA\r\nhello"
                .to_vec();
        script.extend_from_slice(hidden);
        script.extend_from_slice(b"MAIL FROM:<evil@s.example>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nsmuggled\r\n.\r\nNOOP\r\n");
        let o = drive_all_splits(&script);
        assert!(o.spooled.is_empty(), "{hidden:?}: {:?}", o.spooled);
        assert!(
            o.replies
                .contains("550 5.6.0 Error: message refused, bare <CR> or <LF>"),
            "{hidden:?}: {}",
            o.replies
        );
        // The session goes on: NOOP after the refused message is answered.
        assert!(
            o.replies.ends_with("250 2.0.0 OK\r\n"),
            "{hidden:?}: {}",
            o.replies
        );
    }
}

#[test]
fn bare_newlines_in_commands_are_refused() {
    // Only CRLF ends a command: what follows a bare LF on the same CRLF
    // line is part of the bad line and is never executed.
    let o = drive_all_splits(b"EHLO c\nMAIL FROM:<a@b.example>\r\nNOOP\rNOOP\r\nQUIT\r\n");
    assert_eq!(codes(&o.replies), ["220", "500", "500", "221"]);
    assert!(o
        .replies
        .contains("500 5.5.2 Error: bare <CR> or <LF> in command"));
    assert!(!o.replies.contains("Sender OK"));
}

#[test]
fn bdat_chunks_are_assembled() {
    let o = drive_all_splits(
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<r@example.test>\r\nBDAT 5\r\nab\r\ncBDAT 3 LAST\r\n.\r\nQUIT\r\n",
    );
    assert_eq!(
        codes(&o.replies),
        ["220", "250", "250", "250", "250", "250", "221"]
    );
    assert!(o.replies.contains("250 2.0.0 5 octets received\r\n"));
    assert_eq!(o.spooled[0].body, b"ab\r\nc.\r\n");
    assert!(o.spooled[0].chunked);
}

#[test]
fn bdat_without_transaction_discards_its_octets() {
    // The chunk's octets look like commands; they must not be executed.
    let o = drive_all_splits(b"EHLO c\r\nBDAT 25 LAST\r\nMAIL FROM:<e@v.example>\r\nNOOP\r\n");
    assert_eq!(codes(&o.replies), ["220", "250", "503", "250"]);
    assert!(o.spooled.is_empty());
}

#[test]
fn bdat_content_follows_the_data_text_rules() {
    for (body, code) in [
        (
            &b"Subject: x\r\n\r\nline\n.\r\nMAIL FROM:<e@x.example>\r\n"[..],
            "550",
        ),
        (b"Subject: x\r\n\r\nline\rmore\r\n", "550"),
        (b"Subject: x\r\n\r\nends with CR\r", "550"),
        (b"Subject: x\r\n\r\nfine\r\n", "250"),
    ] {
        let mut script =
            b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<r@example.test>\r\n".to_vec();
        script.extend_from_slice(format!("BDAT {} LAST\r\n", body.len()).as_bytes());
        script.extend_from_slice(body);
        let o = drive_all_splits(&script);
        assert_eq!(
            codes(&o.replies).last(),
            Some(&code),
            "{body:?}: {}",
            o.replies
        );
        assert_eq!(o.spooled.len(), usize::from(code == "250"));
    }
}

#[test]
fn bdat_without_a_usable_size_ends_the_session() {
    let o = drive(b"EHLO c\r\nBDAT 99999999999999999999 LAST\r\nMAIL FROM:<e@x.example>\r\n");
    assert!(o.closed);
    assert!(o.replies.ends_with("501 5.5.4 Syntax: BDAT size [LAST]\r\n421 4.5.0 Error: BDAT framing lost, closing connection\r\n"), "{}", o.replies);
}

#[test]
fn data_after_bdat_is_out_of_sequence() {
    let o = drive(
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<r@example.test>\r\nBDAT 1\r\nxDATA\r\n",
    );
    assert!(o
        .replies
        .ends_with("503 5.5.1 Error: DATA cannot follow BDAT in one transaction\r\n"));
}

#[test]
fn declared_size_over_limit_is_refused() {
    let o = drive(
        b"EHLO c\r\nMAIL FROM:<a@b.example> SIZE=1001\r\nMAIL FROM:<a@b.example> SIZE=1000\r\n",
    );
    assert_eq!(codes(&o.replies), ["220", "250", "552", "250"]);
}

#[test]
fn oversized_data_gets_552_and_the_session_continues() {
    let mut script =
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<r@example.test>\r\nDATA\r\n".to_vec();
    for _ in 0..30 {
        script.extend_from_slice(&[b'x'; 60]);
        script.extend_from_slice(b"\r\n");
    }
    script.extend_from_slice(b".\r\nMAIL FROM:<a@b.example>\r\n");
    let o = drive_all_splits(&script);
    assert!(o.spooled.is_empty());
    assert!(o.replies.contains("552 5.3.4"));
    assert!(o.replies.ends_with("250 2.1.0 Sender OK\r\n"));
}

#[test]
fn oversized_bdat_gets_552() {
    let mut script =
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<r@example.test>\r\nBDAT 1001 LAST\r\n"
            .to_vec();
    script.extend_from_slice(&[b'y'; 1001]);
    script.extend_from_slice(b"NOOP\r\n");
    let o = drive(&script);
    assert!(o.spooled.is_empty());
    assert_eq!(
        codes(&o.replies),
        ["220", "250", "250", "250", "552", "250"]
    );
}

#[test]
fn recipients_past_the_limit_get_452() {
    let o = drive(
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<1@example.test>\r\nRCPT TO:<2@example.test>\r\nRCPT TO:<2@example.test>\r\nRCPT TO:<3@example.test>\r\nRCPT TO:<4@example.test>\r\n",
    );
    assert_eq!(
        codes(&o.replies),
        ["220", "250", "250", "250", "250", "250", "250", "452"]
    );
    assert!(o
        .replies
        .ends_with("452 4.5.3 Error: too many recipients\r\n"));
}

#[test]
fn relay_is_refused_and_postmaster_accepted() {
    let o = drive(
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@elsewhere.example>\r\nRCPT TO:<x@[127.0.0.1]>\r\nRCPT TO:<postmaster>\r\nDATA\r\nx\r\n.\r\n",
    );
    assert_eq!(
        codes(&o.replies),
        ["220", "250", "250", "550", "550", "250", "354", "250"]
    );
    assert!(o
        .replies
        .contains("550 5.7.1 Error: relay access denied\r\n"));
    assert_eq!(o.spooled[0].recipients, vec!["postmaster@example.test"]);
}

#[test]
fn sequence_errors() {
    let o = drive(b"MAIL FROM:<a@b.example>\r\nHELO c\r\nRCPT TO:<r@example.test>\r\nDATA\r\nMAIL FROM:<a@b.example>\r\nDATA\r\nMAIL FROM:<a@b.example>\r\n");
    assert_eq!(
        codes(&o.replies),
        ["220", "503", "250", "503", "503", "250", "554", "503"]
    );
}

#[test]
fn non_ascii_addresses_need_smtputf8() {
    let o = drive("EHLO c\r\nMAIL FROM:<jös@b.example>\r\nMAIL FROM:<jös@b.example> SMTPUTF8\r\nRCPT TO:<ünï@example.test>\r\n".as_bytes());
    assert_eq!(codes(&o.replies), ["220", "250", "553", "250", "250"]);
    assert!(o.replies.contains("553 5.6.7"));
}

#[test]
fn long_command_lines_are_refused_and_the_session_recovers() {
    let mut script = b"EHLO c\r\nNOOP ".to_vec();
    script.extend_from_slice(&[b'a'; 2000]);
    script.extend_from_slice(b"\r\nNOOP\r\n");
    let o = drive_all_splits(&script);
    assert_eq!(codes(&o.replies), ["220", "250", "500", "250"]);
    assert!(o.replies.contains("500 5.5.2 Error: command line too long"));
}

#[test]
fn too_many_errors_close_the_session() {
    let script = b"FOO\r\n".repeat(25);
    let o = drive(&script);
    assert!(o.closed);
    assert_eq!(o.replies.matches("500 5.5.2").count(), 20);
    assert!(o
        .replies
        .ends_with("421 4.7.0 Error: too many errors, closing connection\r\n"));
}

#[test]
fn input_after_quit_is_ignored() {
    let o = drive(b"QUIT\r\nNOOP\r\nNOOP\r\n");
    assert_eq!(o.replies, format!("{GREETING}221 2.0.0 Bye\r\n"));
    assert!(o.closed);
}

#[test]
fn spool_failure_gives_451_and_no_250() {
    let o = drive_with(
        cfg(),
        &[b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<r@example.test>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n"],
        true,
    );
    assert!(o.replies.contains("451 4.3.0"));
    assert!(!o.replies.contains("queued"));
    assert!(o.replies.ends_with("250 2.0.0 OK\r\n"));
}

#[test]
fn no_input_is_used_while_spooling() {
    let now = Instant::now();
    let mut s = Session::new(cfg(), now);
    let mut out = Vec::new();
    let script = b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<r@example.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n";
    let used = s.handle_input(script, now, &mut out);
    assert_eq!(&script[used..], b"QUIT\r\n");
    assert!(matches!(s.poll_action(), Some(Action::Spool(_))));
    assert_eq!(s.handle_input(&script[used..], now, &mut out), 0);
    assert!(!String::from_utf8_lossy(&out).contains("queued"));
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn stalled_clients_time_out() {
    let t0 = Instant::now();
    let mut s = Session::new(cfg(), t0);
    let mut out = Vec::new();
    s.greet(&mut out);
    let due = s.poll_timeout().unwrap();
    assert_eq!(due, t0 + Duration::from_secs(300));
    s.handle_timeout(due - Duration::from_secs(1), &mut out);
    assert!(!s.is_closed());
    // A partial line does not move the deadline (slowloris).
    assert_eq!(
        s.handle_input(b"NOO", t0 + Duration::from_secs(200), &mut out),
        0
    );
    assert_eq!(s.poll_timeout(), Some(due));
    s.handle_timeout(due, &mut out);
    assert!(s.is_closed());
    assert!(String::from_utf8_lossy(&out)
        .ends_with("421 4.4.2 Error: timeout exceeded, closing connection\r\n"));
    assert!(matches!(s.poll_action(), Some(Action::Close)));
}

#[test]
fn data_has_a_total_deadline() {
    let t0 = Instant::now();
    let mut s = Session::new(cfg(), t0);
    let mut out = Vec::new();
    s.handle_input(
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<r@example.test>\r\nDATA\r\n",
        t0,
        &mut out,
    );
    // Trickling a byte every 100 s keeps the block timer alive but not the total.
    let mut t = t0;
    for _ in 0..5 {
        t += Duration::from_secs(100);
        s.handle_input(b"x", t, &mut out);
    }
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(600)));
}

#[test]
fn mail_loops_are_refused() {
    let mut script =
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<r@example.test>\r\nDATA\r\n".to_vec();
    for _ in 0..101 {
        script.extend_from_slice(b"Received: x\r\n");
    }
    script.extend_from_slice(b"\r\nbody\r\n.\r\n");
    let cfg = Arc::new(SessionConfig {
        limits: Limits::default(),
        ..(*cfg()).clone()
    });
    let o = drive_with(cfg, &[&script], false);
    assert!(o.spooled.is_empty());
    assert!(o
        .replies
        .ends_with("554 5.4.6 Error: too many hops, mail loop suspected\r\n"));
}

fn tls_info() -> TlsInfo {
    TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
        sni: Some("mx.example.test".into()),
    }
}

#[test]
fn starttls_discards_pipelined_input_and_resets_the_session() {
    // CVE-2011-0411 class: commands pipelined after STARTTLS in plaintext
    // must never be executed after the handshake.
    let now = Instant::now();
    let mut s = Session::new(cfg(), now);
    let mut out = Vec::new();
    s.greet(&mut out);
    let script =
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<evil@b.example>\r\n";
    let used = s.handle_input(script, now, &mut out);
    assert_eq!(&script[used..], b"RSET\r\nMAIL FROM:<evil@b.example>\r\n");
    assert!(matches!(s.poll_action(), Some(Action::StartTls)));
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(text.contains("250 STARTTLS\r\n"), "{text}");
    assert!(
        text.ends_with("250 2.1.0 Sender OK\r\n220 2.0.0 Ready to start TLS\r\n"),
        "{text}"
    );
    // Nothing is used until the handshake is reported.
    assert_eq!(s.handle_input(b"NOOP\r\n", now, &mut out), 0);
    assert_eq!(s.poll_timeout(), None);
    // The driver drops the held bytes, shakes hands, reports success.
    s.handle_tls_established(tls_info(), now);
    out.clear();
    let after =
        b"MAIL FROM:<a@b.example>\r\nEHLO c\r\nSTARTTLS\r\nMAIL FROM:<a@b.example> REQUIRETLS\r\n";
    assert_eq!(s.handle_input(after, now, &mut out), after.len());
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with("503 5.5.1 Error: send EHLO/HELO first\r\n"),
        "{text}"
    );
    assert!(
        text.contains("250 REQUIRETLS\r\n") && !text.contains("STARTTLS\r\n250"),
        "{text}"
    );
    assert!(text.contains("503 5.5.1 Error: TLS already active\r\n"));
    assert!(text.ends_with("250 2.1.0 Sender OK\r\n"));
}

#[test]
fn tls_facts_reach_the_transaction_and_requiretls_needs_tls() {
    let o = drive(b"EHLO c\r\nMAIL FROM:<a@b.example> REQUIRETLS\r\n");
    assert!(o
        .replies
        .ends_with("555 5.5.4 Error: unsupported MAIL/RCPT parameter\r\n"));
    let now = Instant::now();
    let mut s = Session::new_tls(cfg(), now, tls_info());
    let mut out = Vec::new();
    s.handle_input(b"EHLO c\r\nMAIL FROM:<a@b.example> REQUIRETLS\r\nRCPT TO:<r@example.test>\r\nDATA\r\nx\r\n.\r\n", now, &mut out);
    let Some(Action::Spool(tx)) = s.poll_action() else {
        panic!("no spool")
    };
    assert_eq!(tx.tls, Some(tls_info()));
    assert!(tx.require_tls);
    let h =
        super::super::trace::received_header(&tx, "127.0.0.1".parse().unwrap(), "mx", "ID", "D");
    assert!(h.contains("(using TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256)\r\n\tby mx (gomail) with ESMTPS id ID"), "{h}");
}

#[test]
fn starttls_is_refused_when_no_tls_is_configured() {
    let c = Arc::new(SessionConfig {
        starttls: false,
        ..(*cfg()).clone()
    });
    let o = drive_with(c, &[b"EHLO c\r\nSTARTTLS\r\nNOOP\r\n"], false);
    assert!(!o.replies.contains("STARTTLS"));
    assert!(o.replies.contains("502 5.5.1"));
    assert!(o.replies.ends_with("250 2.0.0 OK\r\n"));
}

/// Random scripts over an SMTP alphabet: the session never panics, every
/// reply line is well formed, a message is acknowledged only after the
/// spool was asked for it, and splitting the input anywhere changes nothing.
#[test]
fn random_scripts_keep_the_invariants() {
    const PIECES: &[&[u8]] = &[
        b"EHLO c\r\n",
        b"HELO c\r\n",
        b"MAIL FROM:<a@b.example>\r\n",
        b"MAIL FROM:<>\r\n",
        b"MAIL FROM:<a@b.example> SIZE=10\r\n",
        b"RCPT TO:<r@example.test>\r\n",
        b"RCPT TO:<x@elsewhere.example>\r\n",
        b"DATA\r\n",
        b"BDAT 3\r\n",
        b"BDAT 2 LAST\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"STARTTLS\r\n",
        b"VRFY x\r\n",
        b"QUIT\r\n",
        b".\r\n",
        b"..\r\n",
        b"\r\n",
        b"\n",
        b"\r",
        b".",
        b"\0",
        b"x",
        b"hello world",
        b"\r\n.\r\n",
        b"\n.\n",
        b"\xff",
        b"MAIL FROM:<a@b.example> SMTPUTF8\r\n",
        b"RCPT TO:<p\xc3\xa9@example.test>\r\n",
    ];
    let mut rng = fastrand::Rng::with_seed(0x5eed_6d61_696c);
    for round in 0..3000 {
        let mut script = Vec::new();
        for _ in 0..rng.usize(1..40) {
            script.extend_from_slice(PIECES[rng.usize(..PIECES.len())]);
        }
        let whole = drive(&script);
        for line in whole.replies.split_terminator("\r\n") {
            let b = line.as_bytes();
            assert!(
                b.len() >= 4
                    && b[..3].iter().all(u8::is_ascii_digit)
                    && (b[3] == b' ' || b[3] == b'-'),
                "round {round}: bad reply line {line:?}"
            );
        }
        assert!(
            whole.replies.matches("queued as").count() <= whole.spooled.len(),
            "round {round}"
        );
        let split = rng.usize(..=script.len());
        let (a, b) = script.split_at(split);
        assert_eq!(
            drive_with(cfg(), &[a, b], false),
            whole,
            "round {round}, split {split}, script {script:?}"
        );
    }
}

/// A gate that allows `mails` MAIL and `rcpts` RCPT commands, then refuses
/// with 450, and records what it was told.
struct Budget {
    mails: u32,
    rcpts: u32,
    told: std::rc::Rc<std::cell::RefCell<Vec<Misbehaviour>>>,
}

impl Gate for Budget {
    fn mail(&mut self, _now: Instant) -> Option<Reply> {
        if self.mails == 0 {
            return Some(Reply::new(450, "4.7.1", "mail rate"));
        }
        self.mails -= 1;
        None
    }
    fn rcpt(&mut self, _now: Instant) -> Option<Reply> {
        if self.rcpts == 0 {
            return Some(Reply::new(450, "4.7.1", "rcpt rate"));
        }
        self.rcpts -= 1;
        None
    }
    fn misbehaved(&mut self, what: Misbehaviour) {
        self.told.borrow_mut().push(what);
    }
}

fn gated(mails: u32, rcpts: u32) -> (Session, std::rc::Rc<std::cell::RefCell<Vec<Misbehaviour>>>) {
    let told = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let mut s = Session::new(cfg(), Instant::now());
    s.set_gate(Box::new(Budget {
        mails,
        rcpts,
        told: told.clone(),
    }));
    (s, told)
}

fn feed(s: &mut Session, script: &[u8]) -> String {
    let mut out = Vec::new();
    let used = s.handle_input(script, Instant::now(), &mut out);
    assert_eq!(used, script.len());
    String::from_utf8(out).unwrap()
}

#[test]
fn the_gate_refuses_mail_and_rcpt_past_their_rates() {
    let (mut s, told) = gated(1, 2);
    let r = feed(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<1@example.test>\r\nRCPT TO:<2@example.test>\r\n\
          RCPT TO:<3@example.test>\r\nRSET\r\nMAIL FROM:<a@b.example>\r\n",
    );
    assert_eq!(
        codes(&r),
        ["250", "250", "250", "250", "450", "250", "450"],
        "{r}"
    );
    // A duplicate recipient and a refused relay use no allowance; the
    // relay attempt is told to the gate.
    assert!(told.borrow().is_empty());
    let (mut s, told) = gated(1, 1);
    let r = feed(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@elsewhere.example>\r\nRCPT TO:<1@example.test>\r\nRCPT TO:<1@example.test>\r\n",
    );
    assert_eq!(codes(&r), ["250", "250", "550", "250", "250"], "{r}");
    assert_eq!(*told.borrow(), [Misbehaviour::Relay]);
}

#[test]
fn relay_attempts_and_error_closes_are_told_to_the_gate() {
    let (mut s, told) = gated(10, 10);
    feed(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@elsewhere.example>\r\n",
    );
    assert_eq!(*told.borrow(), [Misbehaviour::Relay]);
    let script = b"BOGUS\r\n".repeat(Limits::default().max_errors as usize);
    feed(&mut s, &script);
    assert!(s.is_closed());
    assert_eq!(
        *told.borrow(),
        [Misbehaviour::Relay, Misbehaviour::TooManyErrors]
    );
}

#[test]
fn a_refused_session_answers_503_until_quit_and_reads_no_message() {
    let t0 = Instant::now();
    let mut s = Session::refused(cfg(), t0, Reply::new(554, "5.7.1", "192.0.2.1 is banned"));
    let mut out = Vec::new();
    s.greet(&mut out);
    assert_eq!(out, b"554 5.7.1 192.0.2.1 is banned\r\n");
    let r = feed(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<r@example.test>\r\nDATA\r\nSubject: x\r\n\r\n.\r\nQUIT\r\n",
    );
    assert_eq!(
        codes(&r),
        ["503", "503", "503", "503", "503", "503", "503", "221"],
        "{r}"
    );
    assert!(s.is_closed());
    assert!(s.poll_action().is_some_and(|a| matches!(a, Action::Close)));
    // Without QUIT it ends after REFUSED_TIMEOUT, whatever the client sends.
    let mut s = Session::refused(cfg(), t0, Reply::new(554, "5.7.1", "banned"));
    let mut out = Vec::new();
    s.handle_input(b"NOOP\r\n", t0 + Duration::from_secs(9), &mut out);
    assert_eq!(s.poll_timeout(), Some(t0 + REFUSED_TIMEOUT));
    s.handle_timeout(t0 + REFUSED_TIMEOUT, &mut out);
    assert!(s.is_closed());
}

#[test]
fn a_session_ends_at_its_time_limit_however_busy() {
    let t0 = Instant::now();
    let cfg = Arc::new(SessionConfig {
        limits: Limits {
            session_timeout: Duration::from_secs(60),
            ..cfg().limits.clone()
        },
        ..(*cfg()).clone()
    });
    let mut s = Session::new(cfg, t0);
    let mut out = Vec::new();
    for i in 0..59 {
        s.handle_input(b"NOOP\r\n", t0 + Duration::from_secs(i), &mut out);
    }
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    out.clear();
    s.handle_timeout(t0 + Duration::from_secs(60), &mut out);
    assert!(s.is_closed());
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "421 4.4.2 Error: session time limit exceeded, closing connection\r\n"
    );
}

#[test]
fn rate_refusals_count_as_errors_and_close_the_session_at_the_limit() {
    let (mut s, _) = gated(0, 0);
    let r = feed(&mut s, b"EHLO c\r\n");
    assert!(r.starts_with("250"));
    let script = b"MAIL FROM:<a@b.example>\r\n".repeat(Limits::default().max_errors as usize);
    let r = feed(&mut s, &script);
    assert!(s.is_closed(), "{r}");
    assert!(
        r.ends_with("421 4.7.0 Error: too many errors, closing connection\r\n"),
        "{r}"
    );
}

#[test]
fn a_client_that_never_reads_is_answered_up_to_the_reply_bound_only() {
    let mut s = Session::new(cfg(), Instant::now());
    let mut out = Vec::new();
    let script = b"NOOP\r\n".repeat(20_000);
    let used = s.handle_input(&script, Instant::now(), &mut out);
    assert!(used < script.len());
    assert!(out.len() >= MAX_PENDING_REPLIES && out.len() < MAX_PENDING_REPLIES + 64);
    // Once the replies are written, the rest is answered.
    out.clear();
    let more = s.handle_input(&script[used..], Instant::now(), &mut out);
    assert!(more > 0);
}

/// Regression (issue 12, found by the `session` fuzz target): a sender
/// verdict fed while the session waited for none put it back in command
/// mode, so the rest of a message body ran as commands, and a closed
/// session took commands again.
#[test]
fn a_sender_verdict_nobody_asked_for_changes_nothing() {
    let now = Instant::now();
    let mut s = Session::new(cfg(), now);
    let mut out = Vec::new();
    s.handle_input(
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<r@example.test>\r\nDATA\r\nline one\r\n",
        now,
        &mut out,
    );
    out.clear();
    s.handle_completion(Completion::Sender(None), now, &mut out);
    s.handle_input(b"RSET\r\n.\r\n", now, &mut out);
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    let Some(Action::Spool(tx)) = s.poll_action() else {
        panic!("the message did not end")
    };
    assert_eq!(tx.body, b"line one\r\nRSET\r\n");

    let mut s = Session::new(cfg(), now);
    s.handle_input(b"QUIT\r\n", now, &mut out);
    assert!(s.is_closed());
    s.handle_completion(Completion::Sender(None), now, &mut out);
    assert!(s.is_closed());
    out.clear();
    s.handle_input(b"NOOP\r\n", now, &mut out);
    assert!(out.is_empty());
}
