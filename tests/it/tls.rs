//! STARTTLS and implicit TLS with real TLS clients (rustls, openssl, swaks).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rustls::version::{TLS12, TLS13};

use super::harness::{queue_id, require_tool, tls_client, wait_stored, Client, Gomail};

/// A certificate and key for `names`, written as PEM files in `dir`.
fn make_cert(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let made =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let crt = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&crt, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (crt, key)
}

fn self_signed_ca(g: &Gomail) -> PathBuf {
    g.data_dir.join("tls/self-signed.crt")
}

#[test]
fn starttls_negotiates_tls13_and_tls12_and_is_recorded() {
    let g = Gomail::start("");
    for (version, name) in [(&TLS13, "TLSv1.3"), (&TLS12, "TLSv1.2")] {
        let mut c = Client::connect(g.addr);
        let ehlo = c.cmd("EHLO tls.example");
        assert!(
            ehlo.contains("250-STARTTLS\r\n") || ehlo.ends_with("250 STARTTLS\r\n"),
            "{ehlo}"
        );
        c.starttls(
            tls_client(&self_signed_ca(&g), &[version]),
            "mx.example.test",
        )
        .unwrap();
        let seen = c.tls.as_ref().unwrap();
        assert_eq!(
            format!("{:?}", seen.version),
            name.replace("TLSv1.", "TLSv1_")
        );
        assert_eq!(
            format!("{:?}", seen.cipher).starts_with("TLS13_"),
            version == &TLS13
        );
        let ehlo = c.cmd("EHLO tls.example");
        assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
        assert!(ehlo.ends_with("250 REQUIRETLS\r\n"), "{ehlo}");
        let r = c.cmd("MAIL FROM:<s@sender.example> REQUIRETLS");
        assert_eq!(r, "250 2.1.0 Sender OK\r\n");
        c.cmd("RCPT TO:<r@example.test>");
        c.cmd("DATA");
        c.send(format!("Subject: over {name}\r\n\r\nsecret\r\n.\r\n").as_bytes());
        assert!(queue_id(&c.reply()).is_some());
    }
    let files = wait_stored(&g.data_dir, 2);
    for (_, v) in &files {
        let tls = &v["metadata"]["tls"];
        let version = tls["version"].as_str().unwrap();
        assert_eq!(v["subject"], format!("over {version}"));
        assert_eq!(tls["requiretls"], true);
        assert_eq!(tls["sni"], "mx.example.test");
        let raw = v["raw"].as_str().unwrap();
        assert!(
            raw.contains(&format!("(using {version} with cipher ")),
            "{raw}"
        );
        assert!(raw.contains("with ESMTPS id "), "{raw}");
    }
}

/// Runs `openssl s_client -starttls smtp` with extra arguments; returns
/// whether a session was established and the output.
fn openssl(g: &Gomail, args: &[&str]) -> (bool, String) {
    let openssl = require_tool("openssl");
    let out = Command::new(openssl)
        .args([
            "s_client",
            "-connect",
            &g.addr.to_string(),
            "-starttls",
            "smtp",
            "-servername",
            "mx.example.test",
        ])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let established = text.contains("New, TLSv1.") && !text.contains("Cipher is (NONE)");
    (established, text)
}

#[test]
fn openssl_clients_get_only_modern_tls() {
    let g = Gomail::start("");
    let (ok, text) = openssl(&g, &["-tls1_3"]);
    assert!(ok && text.contains("TLSv1.3"), "{text}");
    let (ok, text) = openssl(&g, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"]);
    assert!(
        ok && text.contains("ECDHE-ECDSA-AES128-GCM-SHA256"),
        "{text}"
    );
    // TLS 1.1, with the client's own security level lowered so that it
    // really offers it: the server must refuse.
    let (ok, text) = openssl(&g, &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]);
    assert!(!ok, "TLS 1.1 was accepted:\n{text}");
    // A suite without forward secrecy or AEAD: refused.
    let (ok, text) = openssl(
        &g,
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-SHA:AES128-SHA:@SECLEVEL=0",
        ],
    );
    assert!(!ok, "a CBC suite was accepted:\n{text}");
    // The server still serves after the refusals.
    let (ok, _) = openssl(&g, &["-tls1_3"]);
    assert!(ok);
}

#[test]
fn configured_suites_and_minimum_version_are_enforced() {
    let g = Gomail::start("tls_min_version: \"1.3\"\n");
    assert!(!openssl(&g, &["-tls1_2"]).0);
    assert!(openssl(&g, &["-tls1_3"]).0);
    let g = Gomail::start("tls_cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n");
    assert!(!openssl(&g, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"]).0);
    assert!(openssl(&g, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"]).0);
}

#[test]
fn swaks_delivers_over_starttls() {
    let swaks = require_tool("swaks");
    let g = Gomail::start("");
    let out = Command::new(swaks)
        .args([
            "--server",
            &g.addr.to_string(),
            "--tls",
            "--from",
            "s@sender.example",
            "--to",
            "r@example.test",
        ])
        .args(["--h-Subject", "swaks tls"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "swaks --tls needs libnet-ssleay-perl (scripts/test.sh installs it):\n{text}"
    );
    assert!(text.contains("TLS started with cipher"), "{text}");
    assert!(text.contains("<~  250 2.0.0 Ok: queued as "), "{text}");
    let files = wait_stored(&g.data_dir, 1);
    assert!(files[0].1["metadata"]["tls"]["version"]
        .as_str()
        .unwrap()
        .starts_with("TLSv1."));
}

#[test]
fn commands_pipelined_after_starttls_are_discarded() {
    let g = Gomail::start("");
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO attacker.example");
    c.cmd("MAIL FROM:<a@attacker.example>");
    // One write: STARTTLS plus injected commands (CVE-2011-0411 class).
    c.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<injected@attacker.example>\r\n");
    assert_eq!(c.reply(), "220 2.0.0 Ready to start TLS\r\n");
    let cfg = tls_client(&self_signed_ca(&g), &[&TLS13]);
    let tcp = super::harness::Client::raw_tcp(&c);
    let (mut tls, _) = super::harness::tls_handshake(tcp, cfg, "mx.example.test").unwrap();
    use std::io::{Read, Write};
    tls.write_all(b"NOOP\r\nQUIT\r\n").unwrap();
    let mut got = Vec::new();
    let _ = tls.read_to_end(&mut got);
    // Exactly the answers to NOOP and QUIT: nothing for RSET or the
    // injected MAIL, and the transaction from before TLS is gone.
    assert_eq!(
        String::from_utf8_lossy(&got),
        "250 2.0.0 OK\r\n221 2.0.0 Bye\r\n"
    );
}

#[test]
fn certificates_swap_without_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (crt, key) = make_cert(tmp.path(), "live", &["mx.example.test"]);
    let first = std::fs::read(&crt).unwrap();
    let mut g = Gomail::start(&format!(
        "tls_cert_file: \"{}\"\ntls_key_file: \"{}\"\n",
        crt.display(),
        key.display()
    ));
    let cfg1 = tls_client(&crt, &[&TLS13]);
    let mut open = Client::connect(g.addr);
    open.cmd("EHLO old.example");
    open.starttls(cfg1.clone(), "mx.example.test").unwrap();
    let cert1 = open.tls.as_ref().unwrap().cert.clone();

    // Replace the files, then SIGHUP.
    let staging = tmp.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    let (crt2, key2) = make_cert(&staging, "new", &["mx.example.test"]);
    std::fs::copy(&crt2, &crt).unwrap();
    std::fs::copy(&key2, &key).unwrap();
    assert_ne!(std::fs::read(&crt).unwrap(), first);
    unsafe { libc::kill(g.child.id() as i32, libc::SIGHUP) };
    let cfg2 = tls_client(&crt2, &[&TLS13]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let cert2 = loop {
        let mut c = Client::connect(g.addr);
        c.cmd("EHLO new.example");
        if c.starttls(cfg2.clone(), "mx.example.test").is_ok() {
            break c.tls.unwrap().cert;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new certificate never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(cert1, cert2);
    // The session opened before the swap goes on with its old certificate.
    assert_eq!(open.cmd("NOOP"), "250 2.0.0 OK\r\n");
    assert!(open.cmd("EHLO old.example").ends_with("250 REQUIRETLS\r\n"));

    // Changed files are noticed without a signal too.
    let (crt3, key3) = make_cert(&staging, "third", &["mx.example.test"]);
    std::fs::copy(&crt3, &crt).unwrap();
    std::fs::copy(&key3, &key).unwrap();
    let cfg3 = tls_client(&crt3, &[&TLS13]);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut c = Client::connect(g.addr);
        c.cmd("EHLO third.example");
        if c.starttls(cfg3.clone(), "mx.example.test").is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "changed files never picked up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(g.terminate().success());
}

#[test]
fn stalled_and_garbage_handshakes_cost_one_connection_each() {
    let g = Gomail::start("");
    let mut stalled = Client::connect(g.addr);
    stalled.cmd("EHLO stall.example");
    assert_eq!(stalled.cmd("STARTTLS"), "220 2.0.0 Ready to start TLS\r\n");
    let mut garbage = Client::connect(g.addr);
    garbage.cmd("EHLO junk.example");
    assert_eq!(garbage.cmd("STARTTLS"), "220 2.0.0 Ready to start TLS\r\n");
    garbage.send(b"this is not a ClientHello\r\n\r\n\r\n\r\n");
    assert!(
        garbage.closed(),
        "garbage instead of a ClientHello must close the connection"
    );
    // Meanwhile everyone else is served, over TLS too.
    let mut ok = Client::connect(g.addr);
    ok.cmd("EHLO fine.example");
    ok.starttls(
        tls_client(&self_signed_ca(&g), &[&TLS13]),
        "mx.example.test",
    )
    .unwrap();
    ok.cmd("EHLO fine.example");
    let r = ok.mail(
        "s@sender.example",
        &["r@example.test"],
        "Subject: fine\r\n\r\nok",
    );
    assert!(queue_id(&r).is_some(), "{r}");
    drop(stalled);
}

#[test]
fn implicit_tls_listener_and_sni_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let sni = tmp.path().join("sni");
    std::fs::create_dir(&sni).unwrap();
    let (other_crt, _) = make_cert(&sni, "other", &["mail.other.test"]);
    let (wild_crt, _) = make_cert(&sni, "wild", &["*.wild.test"]);
    let g = Gomail::start(&format!(
        "smtps_listen: [\"127.0.0.1:0\"]\ntls_cert_dir: \"{}\"\n",
        sni.display()
    ));
    let smtps = g.tls_addr.expect("an implicit-TLS address");
    let mut c = Client::connect_tls(
        smtps,
        tls_client(&self_signed_ca(&g), &[&TLS13]),
        "mx.example.test",
    );
    let ehlo = c.cmd("EHLO implicit.example");
    assert!(
        !ehlo.contains("STARTTLS") && ehlo.ends_with("250 REQUIRETLS\r\n"),
        "{ehlo}"
    );
    let r = c.mail(
        "s@sender.example",
        &["r@example.test"],
        "Subject: implicit\r\n\r\nok",
    );
    assert!(queue_id(&r).is_some(), "{r}");
    // SNI picks the certificate for the name asked for.
    let c = Client::connect_tls(smtps, tls_client(&other_crt, &[&TLS13]), "mail.other.test");
    assert_eq!(c.tls.as_ref().unwrap().cert, pem_der(&other_crt));
    // A wildcard certificate serves the names one label below it, and in
    // any case; a name no certificate covers gets the default one.
    let c = Client::connect_tls(smtps, tls_client(&wild_crt, &[&TLS13]), "MX.Wild.Test");
    assert_eq!(c.tls.as_ref().unwrap().cert, pem_der(&wild_crt));
    let c = Client::connect_tls(
        smtps,
        tls_client(&self_signed_ca(&g), &[&TLS13]),
        "mx.example.test",
    );
    assert_ne!(c.tls.as_ref().unwrap().cert, pem_der(&wild_crt));
    assert_ne!(c.tls.as_ref().unwrap().cert, pem_der(&other_crt));
    let files = wait_stored(&g.data_dir, 1);
    assert_eq!(files[0].1["metadata"]["tls"]["version"], "TLSv1.3");
}

fn pem_der(p: &Path) -> Vec<u8> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::from_pem_file(p).unwrap().to_vec()
}

#[test]
fn self_signed_fallback_key_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let g = Gomail::start("");
    let key = g.data_dir.join("tls/self-signed.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", key.display());
    assert!(std::fs::read_to_string(self_signed_ca(&g))
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
fn a_broken_certificate_on_reload_keeps_the_one_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("gomail.log");
    let (crt, key) = make_cert(tmp.path(), "live", &["mx.example.test"]);
    let g = Gomail::start(&format!(
        "tls_cert_file: \"{}\"\ntls_key_file: \"{}\"\nport: {}\nadmin_token: adm-tls-reload\n\
         log_level: info\nlog_format: json\nlog_file: \"{}\"\n",
        crt.display(),
        key.display(),
        super::harness::api_port(),
        log.display()
    ));
    let trusted = tls_client(&crt, &[&TLS13]);
    let served = || {
        let mut c = Client::connect(g.addr);
        c.cmd("EHLO check.example");
        c.starttls(trusted.clone(), "mx.example.test").is_ok()
    };
    assert!(served());
    // A path that does not exist: refused, and said so.
    let missing = tmp.path().join("missing.crt");
    let (ok, out, err) = super::harness::gomail_cli(
        &g,
        &[
            "config",
            "set",
            "tls_cert_file",
            missing.to_str().unwrap(),
            "--reload",
        ],
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("missing.crt") && err.contains("the certificates in use stay"),
        "{err}"
    );
    assert!(served(), "the certificate in use was replaced");
    // A renewal that leaves the file empty for a moment: the watcher's
    // reload fails and the certificate in use stays.
    std::fs::write(&crt, "").unwrap();
    super::harness::wait_until(Duration::from_secs(10), "the watcher's reload", || {
        super::harness::log_events(&log, "config_reload_failed")
            .iter()
            .any(|e| e["source"] == "certificate files changed")
    });
    assert!(served(), "the certificate in use was replaced");
}
