//! How the receiver's answers are classified (issue 11): 401/403/404 are
//! retried for a while, a TLS failure is a dead letter at once, and
//! `Retry-After` may be an HTTP-date. Real receiver (`webhook_receiver.rs`).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::harness::{queue_id, queued, Client, Gomail};
use super::webhook_receiver::{receiver, receiver_with, Mode, Receiver, SECRET};

fn send_one(g: &Gomail, subject: &str) -> String {
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO classes.example");
    queued(&c.mail(
        "s@sender.example",
        &["r@example.test"],
        &format!("Subject: {subject}\r\n\r\nbody"),
    ))
}

/// Waits for the first dead letter in `data_dir/dead/` and reads it.
fn wait_dead_letter(data_dir: &Path) -> serde_json::Value {
    let dead = data_dir.join("dead");
    let t0 = Instant::now();
    loop {
        if let Some(e) = std::fs::read_dir(&dead).ok().and_then(|mut d| d.next()) {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            return serde_json::from_slice(&bytes).unwrap();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no dead letter");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTPS receiver with a fresh self-signed certificate for `names`,
/// and that certificate's PEM file (in `dir`) for `webhook_ca_file`.
fn https_receiver(mode: Mode, names: &[&str], dir: &Path) -> (Receiver, std::path::PathBuf) {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let made =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let ca = dir.join("receiver.pem");
    std::fs::write(&ca, made.cert.pem()).unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(made.cert.pem().as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(made.signing_key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    (receiver_with(mode, Some(Arc::new(cfg))), ca)
}

#[test]
fn a_401_during_a_secret_rotation_is_retried_then_delivered() {
    // The receiver rotates its secret: for a moment it refuses gomail's
    // signature (401, 403), then takes it again. Nothing is dead-lettered.
    let rx = receiver(Mode::Script(VecDeque::from([
        (401, None),
        (401, None),
        (403, None),
    ])));
    let g = Gomail::start(&rx.config("webhook_retry_delay: 100ms\nwebhook_retries: 5\n"));
    let id = send_one(&g, "rotation");
    rx.wait_delivered(std::slice::from_ref(&id));
    let log = rx.log();
    assert_eq!(
        log.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [401, 401, 403, 200]
    );
    assert!(log.iter().all(|r| r.id == id));
    assert!(!g.data_dir.join("dead").exists(), "no dead letter");
}

#[test]
fn in_sync_mode_401_403_and_404_are_temporary_for_the_client() {
    let rx = receiver(Mode::Script(VecDeque::from([
        (401, None),
        (403, None),
        (404, None),
    ])));
    let g = Gomail::start(&rx.config("webhook_mode: sync\nshards: 1\n"));
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO sync.example");
    for status in [401, 403, 404] {
        let r = c.mail(
            "s@sender.example",
            &["r@example.test"],
            &format!("Subject: {status}\r\n\r\nx"),
        );
        assert_eq!(
            r,
            format!(
                "451 4.3.0 Receiving application unavailable (HTTP {status}), try again later\r\n"
            )
        );
    }
    // The sending MTA's retry, once the receiver takes requests again.
    let r = c.mail(
        "s@sender.example",
        &["r@example.test"],
        "Subject: again\r\n\r\nx",
    );
    assert!(queue_id(&r).is_some(), "{r}");
}

#[test]
fn an_untrusted_receiver_certificate_is_dead_lettered_at_once_naming_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let (rx, _ca) = https_receiver(Mode::Fixed(200), &["127.0.0.1"], tmp.path());
    // Retried like a timeout, this message would wait 10 s and more.
    let g = Gomail::start(&format!(
        "api_endpoint: \"https://{}/hook\"\nwebhook_secret: \"{SECRET}\"\nwebhook_retries: 100\nwebhook_retry_delay: 10s\nstore_mode: never\n",
        rx.addr
    ));
    let id = send_one(&g, "untrusted");
    let v = wait_dead_letter(&g.data_dir);
    assert_eq!(v["metadata"]["queue_id"], id.as_str());
    let reason = v["dead_letter"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("TLS failure, not retried"), "{reason}");
    assert!(reason.contains("invalid peer certificate"), "{reason}");
    let attempts = v["dead_letter"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0]["failure"], "tls");
    assert_eq!(attempts[0]["status"], serde_json::Value::Null);
    assert!(rx.log().is_empty(), "nothing reached the receiver");
}

#[test]
fn a_certificate_for_another_name_is_a_tls_failure_too() {
    // The CA is trusted, but the certificate names "localhost" while
    // api_endpoint says 127.0.0.1.
    let tmp = tempfile::tempdir().unwrap();
    let (rx, ca) = https_receiver(Mode::Fixed(200), &["localhost"], tmp.path());
    let g = Gomail::start(&format!(
        "api_endpoint: \"https://{}/hook\"\nwebhook_secret: \"{SECRET}\"\nwebhook_ca_file: \"{}\"\nwebhook_retries: 100\nwebhook_retry_delay: 10s\nstore_mode: never\n",
        rx.addr,
        ca.display()
    ));
    send_one(&g, "misnamed");
    let v = wait_dead_letter(&g.data_dir);
    let reason = v["dead_letter"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("TLS failure, not retried"), "{reason}");
    assert!(reason.contains("not valid for name"), "{reason}");
}

#[test]
fn in_sync_mode_a_tls_failure_is_temporary_for_the_client_and_no_dead_letter() {
    // The client keeps the message and tries again; a dead letter as well
    // would be a second copy at each of its retries.
    let tmp = tempfile::tempdir().unwrap();
    let (rx, _ca) = https_receiver(Mode::Fixed(200), &["127.0.0.1"], tmp.path());
    let g = Gomail::start(&format!(
        "api_endpoint: \"https://{}/hook\"\nwebhook_secret: \"{SECRET}\"\nwebhook_mode: sync\nshards: 1\n",
        rx.addr
    ));
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO sync.example");
    let r = c.mail(
        "s@sender.example",
        &["r@example.test"],
        "Subject: tls\r\n\r\nx",
    );
    assert!(
        r.starts_with("451 4.3.0 Receiving application unavailable (TLS handshake with "),
        "{r}"
    );
    assert!(r.contains("invalid peer certificate"), "{r}");
    assert!(!g.data_dir.join("dead").exists(), "no dead letter");
}

#[test]
fn a_retry_after_http_date_is_honoured() {
    // The backoff alone would retry after about 100 ms; the receiver asks,
    // with a date, for 2 to 3 seconds.
    let rx = receiver(Mode::DatedScript(VecDeque::from([(503, Some(3))])));
    let g = Gomail::start(&rx.config("webhook_retry_delay: 100ms\nwebhook_retries: 5\n"));
    let id = send_one(&g, "dated");
    rx.wait_delivered(std::slice::from_ref(&id));
    let log = rx.log();
    assert_eq!(
        log.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [503, 200]
    );
    let named = log[0].retry_at.expect("a dated Retry-After");
    // A margin for the two processes noting the time a little apart.
    assert!(
        log[1].at + Duration::from_millis(200) >= named,
        "retried {:?} before the date",
        named - log[1].at
    );
}
