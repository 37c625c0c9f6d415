//! Webhook delivery to a real HTTP receiver (`webhook_receiver.rs`) that
//! verifies Standard Webhooks signatures with an independent implementation
//! (RustCrypto HMAC, ed25519-dalek) and can fail on demand; crashes are real
//! `kill -9`s.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::harness::{metric, queue_id, queued, stored, wait_stored, wait_until, Client, Gomail};

use super::webhook_receiver::{b64decode, receiver, receiver_with, Mode, CLOSE, HANG, SECRET};

/// Sends `n` messages on one session; their queue ids.
pub(crate) fn send(g: &Gomail, n: usize, subject: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO hooks.example");
    for i in 0..n {
        let r = c.mail(
            "s@sender.example",
            &["r@example.test"],
            &format!("Subject: {subject} {i}\r\n\r\nbody {i}"),
        );
        ids.push(queued(&r));
    }
    ids
}

#[test]
fn messages_are_posted_signed_with_a_stable_id() {
    let rx = receiver(Mode::Fixed(200));
    let g = Gomail::start(&rx.config(""));
    let ids = send(&g, 2, "hello");
    rx.wait_delivered(&ids);
    let log = rx.log();
    assert_eq!(log.len(), 2);
    for r in &log {
        assert!(r.signature_ok, "signature did not verify");
        assert_eq!(r.authorization.as_deref(), Some("Bearer tok-123"));
        assert!(ids.contains(&r.id));
        assert_eq!(r.body["sender"], "s@sender.example");
        assert_eq!(r.body["recipient"], "r@example.test");
        assert_eq!(r.body["metadata"]["queue_id"], r.id.as_str());
        assert!(r.body["raw"].as_str().unwrap().contains("Subject: hello"));
    }
    // store_mode always (default): the JSON store has them too, each the
    // very payload its POST carried.
    let stored = wait_stored(&g.data_dir, 2);
    assert_eq!(stored.len(), 2);
    for (id, doc) in stored {
        let posted = log.iter().find(|r| r.id == id).expect("posted");
        assert_eq!(doc, posted.body, "the stored file of {id}");
    }
}

#[test]
fn failures_are_retried_with_backoff_and_retry_after() {
    let rx = receiver(Mode::Script(VecDeque::from([
        (500, None),
        (429, Some(1)),
        (503, None),
    ])));
    let g = Gomail::start(&rx.config("webhook_retry_delay: 100ms\nwebhook_retries: 5\n"));
    let ids = send(&g, 1, "retry");
    rx.wait_delivered(&ids);
    let log = rx.log();
    assert_eq!(
        log.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [500, 429, 503, 200]
    );
    assert!(
        log.iter().all(|r| r.id == ids[0] && r.signature_ok),
        "the same webhook-id on every attempt"
    );
    let gap = log[2].at - log[1].at;
    assert!(
        gap >= Duration::from_millis(900),
        "Retry-After: 1 was not honoured: {gap:?}"
    );
}

#[test]
fn a_receiver_that_hangs_or_hangs_up_is_retried() {
    // First attempt: the receiver reads the request and says nothing past
    // webhook_timeout (2 s); second: it closes the connection unanswered.
    let rx = receiver(Mode::Script(VecDeque::from([(HANG, None), (CLOSE, None)])));
    let g = Gomail::start(&rx.config("webhook_retry_delay: 100ms\nwebhook_retries: 5\n"));
    let ids = send(&g, 1, "silent");
    rx.wait_delivered(&ids);
    let log = rx.log();
    assert_eq!(
        log.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [HANG, CLOSE, 200]
    );
    assert!(log.iter().all(|r| r.id == ids[0] && r.signature_ok));
    // gomail gave up on the silent attempt at its timeout, not at the
    // hang's end. The timeout runs from gomail's connect, the receiver
    // notes the request a little later: on a loaded machine the gap can be
    // a few tens of ms under the 2 s (seen: 1.976 s in CI).
    let gap = log[1].at - log[0].at;
    assert!(
        gap >= Duration::from_millis(1500) && gap < Duration::from_secs(5),
        "{gap:?}"
    );
    // The receiver logs before it answers: let gomail read the 200 first.
    wait_until(Duration::from_secs(10), "the delivery counted", || {
        metric(&g, "gomail_webhook_delivered_total") >= 1.0
    });
    assert_eq!(metric(&g, "gomail_webhook_attempts_total"), 3.0);
}

#[test]
fn kill_9_with_deliveries_pending_delivers_every_message_after_restart() {
    let rx = receiver(Mode::Fixed(503));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = rx.config("webhook_retry_delay: 100ms\nwebhook_retries: 50\nstore_mode: never\n");
    let mut g = Gomail::start_on(&data, &cfg);
    let ids = send(&g, 20, "crash");
    // Deliveries under way (and refused) before the crash; the breaker
    // opens after 10 failures, so not every message gets an attempt.
    wait_until(Duration::from_secs(10), "attempts before the crash", || {
        rx.log().len() >= 10
    });
    g.kill9();
    assert!(
        rx.log().iter().all(|r| r.answered == 503),
        "nothing was delivered before the crash"
    );
    *rx.mode.lock().unwrap() = Mode::Fixed(200);
    let _g = Gomail::start_on(&data, &cfg);
    rx.wait_delivered(&ids);
    for r in rx.log() {
        assert!(ids.contains(&r.id), "unknown webhook-id {}", r.id);
        assert!(r.signature_ok);
    }
}

#[test]
fn a_thousand_messages_through_a_flaky_receiver_all_arrive() {
    let rx = receiver(Mode::Flaky(0.3));
    let g =
        Gomail::start(&rx.config(
            "webhook_retry_delay: 50ms\nwebhook_retries: 30\nstore_mode: never\nshards: 2\n",
        ));
    let mut ids = Vec::new();
    for batch in 0..10 {
        ids.extend(send(&g, 100, &format!("bulk {batch}")));
    }
    rx.wait_delivered(&ids);
    let log = rx.log();
    let failed = log.iter().filter(|r| r.answered >= 500).count();
    assert!(failed > 100, "the receiver failed only {failed} requests");
    let delivered: std::collections::HashSet<_> = log
        .iter()
        .filter(|r| r.delivered())
        .map(|r| r.id.clone())
        .collect();
    assert_eq!(delivered.len(), 1000);
}

#[test]
fn a_receiver_that_is_down_leads_to_452_not_unbounded_growth() {
    let rx = receiver(Mode::Fixed(503));
    let g = Gomail::start(&rx.config(
        "shards: 1\nspool_max_backlog: 4\nwebhook_retries: 100\nwebhook_retry_delay: 10s\n",
    ));
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO backlog.example");
    for i in 0..4 {
        let r = c.mail(
            "s@sender.example",
            &["r@example.test"],
            &format!("Subject: {i}\r\n\r\nx"),
        );
        assert!(queue_id(&r).is_some(), "{i}: {r}");
    }
    let r = c.mail(
        "s@sender.example",
        &["r@example.test"],
        "Subject: 5\r\n\r\nx",
    );
    assert_eq!(
        r,
        "452 4.3.1 Insufficient system storage: delivery backlog full, try again later\r\n"
    );
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 OK\r\n");
}

#[test]
fn a_410_gone_disables_delivery_and_keeps_the_messages() {
    let rx = receiver(Mode::Fixed(410));
    let g = Gomail::start(&rx.config("shards: 1\n"));
    send(&g, 1, "gone");
    wait_until(
        Duration::from_secs(10),
        "the receiver saw an attempt",
        || !rx.log().is_empty(),
    );
    send(&g, 2, "after gone");
    // All three queued for the receiver, none sent (the engine's tests
    // show that nothing is attempted while disabled).
    wait_until(Duration::from_secs(10), "three deliveries kept", || {
        metric(&g, "gomail_webhook_pending") == 3.0
    });
    assert_eq!(rx.log().len(), 1, "no attempts after 410 Gone");
    assert_eq!(metric(&g, "gomail_webhook_disabled"), 1.0);
    assert_eq!(
        metric(&g, "gomail_store_backlog"),
        3.0,
        "all three messages are kept"
    );
    assert!(
        !g.data_dir.join("dead").exists(),
        "410 is not a dead letter"
    );
}

#[test]
fn a_failing_receiver_trips_the_breaker_and_recovery_closes_it() {
    let rx = receiver(Mode::Fixed(503));
    let g = Gomail::start(&rx.config(
        "shards: 1\nwebhook_retry_delay: 10ms\nwebhook_retries: 1000\nstore_mode: never\n",
    ));
    let ids = send(&g, 5, "breaker");
    wait_until(Duration::from_secs(10), "the breaker never opened", || {
        metric(&g, "gomail_webhook_circuit_open") == 1.0
    });
    // That the open breaker lets one probe through at a time, and how
    // its wait grows, is outbox/breaker.rs's unit tests (a clock passed
    // in, no sleeping here to prove that nothing happened).
    *rx.mode.lock().unwrap() = Mode::Fixed(200);
    rx.wait_delivered(&ids);
    // The receiver logs before it answers: the 200 reaches gomail after.
    wait_until(Duration::from_secs(10), "the breaker closed", || {
        metric(&g, "gomail_webhook_circuit_open") == 0.0
    });
}

#[test]
fn failures_in_flight_when_the_breaker_opens_do_not_hold_delivery_back_for_minutes() {
    // Every delivery in flight fails at once (a receiver restarting): the
    // breaker opens at the 10th answer and the other ~54 arrive while it is
    // open. Only a failed probe may widen the wait, so the first probe, a
    // second later, finds the receiver back and every message goes.
    let rx = receiver(Mode::Late(Duration::from_millis(1500), 503));
    let g =
        Gomail::start(&rx.config(
            "shards: 1\nwebhook_retry_delay: 1s\nwebhook_retries: 1000\nstore_mode: never\n",
        ));
    let ids = send(&g, 64, "burst");
    wait_until(Duration::from_secs(15), "64 failed answers", || {
        rx.log().len() >= 64
    });
    assert_eq!(metric(&g, "gomail_webhook_circuit_open"), 1.0);
    *rx.mode.lock().unwrap() = Mode::Fixed(200);
    // Deadline for the test, not a measurement: with the wait widened by
    // every late answer the first probe came after 5 minutes.
    wait_until(
        Duration::from_secs(20),
        "all 64 delivered after the receiver came back",
        || {
            let ok: std::collections::HashSet<String> = rx
                .log()
                .into_iter()
                .filter(|r| r.delivered())
                .map(|r| r.id)
                .collect();
            ids.iter().all(|i| ok.contains(i))
        },
    );
}

#[test]
fn ed25519_signatures_verify_with_the_public_key() {
    use ed25519_dalek::Verifier;
    let seed = [9u8; 32];
    let rx = receiver(Mode::Fixed(200));
    let key = format!("whsk_{}", super::harness::b64encode(&seed));
    let g = Gomail::start(&rx.config(&format!("webhook_signing_key: \"{key}\"\n")));
    let ids = send(&g, 1, "asymmetric");
    rx.wait_delivered(&ids);
    let r = &rx.log()[0];
    assert!(r.signature_ok, "the v1 HMAC signature is still there");
    let v1a = r
        .signature
        .split(' ')
        .find_map(|p| p.strip_prefix("v1a,"))
        .expect("a v1a signature");
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    let sig = ed25519_dalek::Signature::from_slice(&b64decode(v1a)).unwrap();
    let mut signed = format!("{}.{}.", r.id, r.timestamp).into_bytes();
    signed.extend_from_slice(&r.raw_body);
    public
        .verify(&signed, &sig)
        .expect("v1a verifies with the public key");
    signed.push(b' ');
    assert!(
        public.verify(&signed, &sig).is_err(),
        "and not for other bytes"
    );
}

#[test]
fn a_message_for_two_recipients_is_posted_once_per_recipient() {
    let rx = receiver(Mode::Fixed(200));
    let g = Gomail::start(&rx.config(""));
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO fanout.example");
    let r = c.mail(
        "s@sender.example",
        &["ann@example.test", "bob@other.test"],
        "Subject: both\r\n\r\nhi",
    );
    let id = queue_id(&r).unwrap();
    let ids = [format!("{id}.0"), format!("{id}.1")];
    rx.wait_delivered(&ids);
    let mut log = rx.log();
    log.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].body["recipient"], "ann@example.test");
    assert_eq!(log[1].body["recipient"], "bob@other.test");
    for r in &log {
        assert!(r.signature_ok);
        assert_eq!(
            r.body["recipients"],
            serde_json::json!(["ann@example.test", "bob@other.test"])
        );
        assert_eq!(r.body["metadata"]["queue_id"], id.as_str());
    }
    wait_stored(&g.data_dir, 1);
    wait_until(Duration::from_secs(10), "the message done", || {
        metric(&g, "gomail_store_backlog") == 0.0
    });
    assert_eq!(
        stored(&g.data_dir).len(),
        1,
        "stored once, after both deliveries"
    );
}

#[test]
fn https_endpoints_are_verified_against_the_configured_ca() {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("receiver.pem");
    std::fs::write(&ca, made.cert.pem()).unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(made.cert.pem().as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(made.signing_key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    let rx = receiver_with(Mode::Fixed(200), Some(Arc::new(cfg)));
    let https = format!(
        "api_endpoint: \"https://{}/hook\"\nwebhook_secret: \"{SECRET}\"\nwebhook_ca_file: \"{}\"\n",
        rx.addr,
        ca.display()
    );
    let g = Gomail::start(&https);
    let ids = send(&g, 1, "over https");
    rx.wait_delivered(&ids);
    assert!(rx.log()[0].signature_ok);
    // Without the CA the receiver's certificate is not trusted: no delivery.
    let untrusted = https.replace(
        &format!("webhook_ca_file: \"{}\"\n", ca.display()),
        "webhook_retry_delay: 10s\n",
    );
    let g2 = Gomail::start(&untrusted);
    let before = rx.log().len();
    send(&g2, 1, "untrusted");
    // Wait for the attempt itself, so the check below is not vacuous.
    wait_until(
        Duration::from_secs(10),
        "an attempt over untrusted TLS",
        || metric(&g2, "gomail_webhook_attempts_total") >= 1.0,
    );
    assert_eq!(rx.log().len(), before, "a TLS failure must not deliver");
}

#[test]
fn sync_mode_makes_the_receivers_answer_the_smtp_reply() {
    let rx = receiver(Mode::Script(VecDeque::from([
        (200, None),
        (422, None),
        (503, None),
    ])));
    // A short retry delay, so a retry that should not happen would show.
    let g = Gomail::start(&rx.config("webhook_mode: sync\nshards: 1\nwebhook_retry_delay: 10ms\n"));
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO sync.example");
    let ok = c.mail(
        "s@sender.example",
        &["r@example.test"],
        "Subject: 1\r\n\r\nx",
    );
    assert!(queue_id(&ok).is_some(), "{ok}");
    let refused = c.mail(
        "s@sender.example",
        &["r@example.test"],
        "Subject: 2\r\n\r\nx",
    );
    assert_eq!(
        refused,
        "550 5.7.1 Rejected by the receiving application (HTTP 422): answer 422\r\n"
    );
    let later = c.mail(
        "s@sender.example",
        &["r@example.test"],
        "Subject: 3\r\n\r\nx",
    );
    assert_eq!(
        later,
        "451 4.3.0 Receiving application unavailable (HTTP 503), try again later\r\n"
    );
    // Each message was posted exactly once, and nothing is left to retry.
    wait_until(Duration::from_secs(10), "nothing left", || {
        metric(&g, "gomail_store_backlog") == 0.0 && metric(&g, "gomail_webhook_pending") == 0.0
    });
    assert_eq!(rx.log().len(), 3);
}

#[test]
fn hybrid_mode_accepts_at_the_deadline_and_delivers_later() {
    let rx = receiver(Mode::Slow(Duration::from_millis(1500)));
    let g = Gomail::start(&rx.config("webhook_mode: hybrid\nwebhook_sync_deadline: 200ms\n"));
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO hybrid.example");
    let t0 = Instant::now();
    let r = c.mail(
        "s@sender.example",
        &["r@example.test"],
        "Subject: h\r\n\r\nx",
    );
    let waited = t0.elapsed();
    let id = queued(&r);
    // A bound, not a benchmark: the client did not wait for the slow receiver.
    assert!(waited < Duration::from_millis(1400), "{waited:?}");
    rx.wait_delivered(&[id]);
}

#[test]
fn in_sync_mode_a_410_keeps_the_message_instead_of_bouncing_it() {
    let rx = receiver(Mode::Fixed(410));
    let g = Gomail::start(&rx.config("webhook_mode: sync\nshards: 1\n"));
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO sync.example");
    // The endpoint is gone, which the sender cannot fix: accepted and kept.
    let first = c.mail(
        "s@sender.example",
        &["r@example.test"],
        "Subject: 1\r\n\r\nx",
    );
    assert!(queue_id(&first).is_some(), "{first}");
    assert_eq!(metric(&g, "gomail_webhook_disabled"), 1.0);
    // From now on the shard does not post at all; messages are kept.
    let second = c.mail(
        "s@sender.example",
        &["r@example.test"],
        "Subject: 2\r\n\r\nx",
    );
    assert!(queue_id(&second).is_some(), "{second}");
    wait_until(Duration::from_secs(10), "both queued", || {
        metric(&g, "gomail_webhook_pending") == 2.0
    });
    assert_eq!(rx.log().len(), 1, "one POST, the one that got 410");
    assert_eq!(metric(&g, "gomail_store_backlog"), 2.0, "both kept");
}

#[test]
fn in_sync_mode_a_failing_receiver_trips_the_breaker_too() {
    let rx = receiver(Mode::Fixed(503));
    let g = Gomail::start(
        &rx.config("webhook_mode: sync\nshards: 1\nwebhook_retry_delay: 10ms\nstore_mode: never\n"),
    );
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO sync.example");
    // Each failure is the client's to retry (451) and counts toward the
    // breaker; once it is open, clients no longer wait for a receiver that
    // keeps failing: messages are accepted and queued.
    for i in 0..10 {
        let r = c.mail(
            "s@sender.example",
            &["r@example.test"],
            &format!("Subject: {i}\r\n\r\nx"),
        );
        assert!(r.starts_with("451 4.3.0 "), "{i}: {r}");
    }
    assert_eq!(metric(&g, "gomail_webhook_circuit_open"), 1.0);
    let reply = c.mail(
        "s@sender.example",
        &["r@example.test"],
        "Subject: q\r\n\r\nx",
    );
    let id = queued(&reply);
    *rx.mode.lock().unwrap() = Mode::Fixed(200);
    rx.wait_delivered(&[id]);
}
