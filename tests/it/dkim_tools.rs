//! Issue 13: `gomail dkim keygen|show-record` and `gomail dns check`. A key
//! made by gomail signs with an independent signer (Python's dkimpy), the
//! record `show-record` prints is served by a real DNS server on loopback,
//! and gomail's own DKIM check passes the message through that DNS.

use super::cli::gomail;
use super::dns::serve;
use super::harness::{queued, wait_stored, Client, Gomail};

/// The TXT strings of a `show-record` line (`"…" "…"`).
fn txt_part(line: &str) -> String {
    line.split_once(" IN TXT ")
        .unwrap_or_else(|| panic!("not a record line: {line}"))
        .1
        .to_string()
}

#[test]
fn a_key_from_dkim_keygen_signs_with_dkimpy_and_verifies_through_dns() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("keys.yaml");
    std::fs::write(
        &config,
        format!(
            "primary_domain: sender.test\nmail_hostname: mx.example.test\ndata_dir: \"{}\"\n",
            data.display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let (ok, line, err) = gomail(&["dkim", "keygen", "--selector", "s1", "--config", cfg]);
    assert!(ok, "{err}");
    let line = line.trim().to_string();
    assert!(
        line.starts_with("s1._domainkey.sender.test. IN TXT \"v=DKIM1; k=rsa; p=MII"),
        "{line}"
    );
    // RSA-2048's record is longer than one string: split at 255 octets.
    let strings = txt_part(&line);
    assert!(strings.contains("\" \""), "{strings}");
    assert!(strings
        .split("\" \"")
        .all(|s| s.trim_matches('"').len() <= 255));
    let key = data.join("dkim/sender.test/s1.pem");
    let (ok, again, _) = gomail(&["dkim", "show-record", "--config", cfg]);
    assert!(ok);
    assert_eq!(again.trim(), line);
    let (ok, _, err) = gomail(&["dkim", "keygen", "--selector", "s1", "--config", cfg]);
    assert!(!ok && err.contains("exists"), "{err}");
    let (ok, ed, err) = gomail(&[
        "dkim",
        "keygen",
        "--algorithm",
        "ed25519",
        "--selector",
        "ed1",
        "--domain",
        "other.test",
        "--config",
        cfg,
    ]);
    assert!(ok, "{err}");
    assert!(
        ed.starts_with("ed1._domainkey.other.test. IN TXT \"v=DKIM1; k=ed25519; p="),
        "{ed}"
    );

    let dns = serve(&[
        (
            "sender.test.",
            format!(
                "@ IN MX 10 mx.example.test.\n@ IN TXT \"v=spf1 ip4:127.0.0.1 -all\"\n\
                 _dmarc IN TXT \"v=DMARC1; p=reject\"\ns1._domainkey IN TXT {strings}\n"
            ),
        ),
        ("example.test.", "mx IN A 127.0.0.1\n".to_string()),
    ]);
    let check_cfg = tmp.path().join("check.yaml");
    std::fs::write(
        &check_cfg,
        format!(
            "primary_domain: sender.test\nmail_hostname: mx.example.test\ndata_dir: \"{}\"\ndns_servers: [\"{}\"]\n",
            data.display(),
            dns.addr
        ),
    )
    .unwrap();
    let (ok, report, err) = gomail(&["dns", "check", "--config", check_cfg.to_str().unwrap()]);
    assert!(ok, "{report}{err}");
    for want in [
        "ok    MX sender.test",
        "ok    A/AAAA mx.example.test",
        "ok    SPF sender.test",
        "ok    DMARC _dmarc.sender.test",
        "ok    DKIM s1._domainkey.sender.test",
    ] {
        assert!(report.contains(want), "{want:?} not in\n{report}");
    }
    // other.test publishes nothing: its check fails and says why.
    let (ok, report, _) = gomail(&[
        "dns",
        "check",
        "--domain",
        "other.test",
        "--config",
        check_cfg.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        report.contains("FAIL  DKIM ed1._domainkey.other.test")
            && report.contains("no DKIM record"),
        "{report}"
    );

    let g = Gomail::start(&format!(
        "dns_servers: [\"{}\"]\ndns_timeout: 2s\nspf_enabled: false\ndmarc_enabled: false\n",
        dns.addr
    ));
    let raw = "From: <a@sender.test>\r\nTo: <r@example.test>\r\nSubject: keygen\r\nMessage-ID: <k1@sender.test>\r\n\r\nsigned by dkimpy\r\n";
    let signed = super::auth::dkim_dmarc::dkimpy_sign_as(&key, "s1", "sender.test", raw);
    assert!(signed.starts_with("DKIM-Signature:"), "{signed}");
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO client.sender.test");
    queued(&c.mail("a@sender.test", &["r@example.test"], signed.trim_end()));
    let stored = wait_stored(&g.data_dir, 1);
    let v = &stored[0].1;
    assert_eq!(v["authentication"]["dkim"]["result"], "pass", "{v}");
}
