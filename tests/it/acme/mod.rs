//! Issue 13: ACME certificates end to end through the real `gomail`
//! binary, against Debian's `pebble` CA with real DNS-01 validation
//! (challtestsrv's DNS), DigitalOcean's API played by a loopback stand-in.

mod pebble;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pebble::{first_cert_der, txt_values, FakeDo, Pebble};

use super::cli::gomail;
use super::harness::{tls_client, wait_until, Client, Gomail};

const TOKEN: &str = "do-test-token-1b7c";
const DOMAINS: &str = "[mx.example.test, example.test, \"*.example.test\"]";

/// The ACME part of a config: `do_url` is the DigitalOcean stand-in.
fn acme_yaml(p: &Pebble, do_url: &str, token: &str, domains: &str, extra: &str) -> String {
    let base = format!(
        "admin_token: admin-test-token\nacme_email: ops@example.test\nacme_directory_url: \"{dir}\"\n\
         acme_ca_file: \"{ca}\"\nacme_domains: {domains}\ndo_api_token: {token}\n\
         digitalocean_api_url: \"{do_url}\"\ndns_servers: [\"{dns}\"]\nacme_dns_timeout: 20s\n\
         acme_timeout: 30s\nspf_enabled: false\ndkim_enabled: false\ndmarc_enabled: false\n{extra}",
        dir = p.directory,
        ca = p.ca_file.display(),
        dns = p.dns,
    );
    if extra.contains("acme_dns_timeout") {
        base.replace("acme_dns_timeout: 20s\n", "")
    } else {
        base
    }
}

/// A config file for `data_dir` as the harness writes it (so that the
/// command line and a server started later agree).
fn write_config(data_dir: &Path, yaml: &str) -> PathBuf {
    let path = data_dir.with_extension("yaml");
    std::fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
    std::fs::write(
        &path,
        format!(
            "smtp_listen: [\"127.0.0.1:0\"]\nprimary_domain: example.test\nadditional_domains: [other.test]\n\
             mail_hostname: mx.example.test\ndata_dir: \"{}\"\nlog_level: warn\nport: 0\n{yaml}",
            data_dir.display()
        ),
    )
    .unwrap();
    path
}

fn cli(config: &Path, args: &[&str]) -> (bool, String, String) {
    let mut a = args.to_vec();
    a.extend(["--config", config.to_str().unwrap()]);
    gomail(&a)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The certificate a new STARTTLS session is shown, verified against
/// pebble's root for mx.example.test.
fn served_cert(g: &Gomail, root: &Path) -> Vec<u8> {
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO client.test");
    c.starttls(
        tls_client(root, &[&rustls::version::TLS13]),
        "mx.example.test",
    )
    .unwrap();
    c.tls.unwrap().cert
}

fn assert_no_challenge_records(p: &Pebble, fake: &FakeDo) {
    let st = fake.state.lock().unwrap();
    assert!(st.records.is_empty(), "records left: {:?}", st.records);
    assert_eq!(st.created, st.deleted);
    drop(st);
    for name in [
        "_acme-challenge.example.test.",
        "_acme-challenge.mx.example.test.",
    ] {
        assert_eq!(txt_values(p.dns, name), Vec::<String>::new(), "{name}");
    }
}

#[test]
fn ssl_setup_through_a_running_server_is_served_without_restart_then_renew_and_force() {
    let p = Pebble::start(&[]);
    let fake = FakeDo::start(TOKEN, &["example.test"], p.challtest, true);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pebble-root.pem");
    std::fs::write(&root, p.root_pem()).unwrap();
    let g = Gomail::start(&acme_yaml(&p, &fake.url, TOKEN, DOMAINS, ""));
    let cert_file = g.data_dir.join("acme/cert.pem");
    assert!(!cert_file.exists());

    let (ok, out, err) = super::harness::gomail_cli(
        &g,
        &["ssl", "setup", "--email", "ops@example.test", "--agree-tos"],
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("the running server now serves it on every shard"),
        "{out}"
    );
    // Two authorizations share _acme-challenge.example.test (the name and
    // its wildcard): three records made, none left.
    assert_eq!(fake.state.lock().unwrap().created, 3);
    assert_no_challenge_records(&p, &fake);
    let first = first_cert_der(&cert_file);
    assert_eq!(served_cert(&g, &root), first);
    assert_eq!(mode(&g.data_dir.join("acme/key.pem")), 0o600);
    assert_eq!(mode(&g.data_dir.join("acme")), 0o700);
    let account = std::fs::read_dir(g.data_dir.join("acme"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("account-"))
        .expect("an account file")
        .path();
    assert_eq!(mode(&account), 0o600);

    let (ok, out, err) = super::harness::gomail_cli(&g, &["ssl", "status"]);
    assert!(ok, "{out}{err}");
    let names = out
        .lines()
        .find_map(|l| l.strip_prefix("  names:       "))
        .unwrap_or_else(|| panic!("no names in {out}"));
    let mut names: Vec<&str> = names.split(", ").collect();
    names.sort();
    assert_eq!(names, ["*.example.test", "example.test", "mx.example.test"]);
    for want in [
        "self-signed: no",
        "issuer:      CN=Pebble Intermediate",
        "last error:   none",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    assert!(!out.contains("next renewal: never"), "{out}");

    // Not due (pebble's certificates last 5 years): nothing asked of the CA.
    let (ok, out, err) = super::harness::gomail_cli(&g, &["ssl", "renew"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("not renewed"), "{out}");
    assert_eq!(first_cert_der(&cert_file), first);
    assert_eq!(fake.state.lock().unwrap().created, 3);

    // --force replaces it while a TLS session goes on; the session
    // finishes on the certificate it started with.
    let mut session = Client::connect(g.addr);
    session.cmd("EHLO client.test");
    session
        .starttls(
            tls_client(&root, &[&rustls::version::TLS13]),
            "mx.example.test",
        )
        .unwrap();
    assert_eq!(session.tls.as_ref().unwrap().cert, first);
    session.cmd("EHLO client.test");
    let (ok, out, err) = super::harness::gomail_cli(&g, &["ssl", "renew", "--force"]);
    assert!(ok, "{out}{err}");
    let second = first_cert_der(&cert_file);
    assert_ne!(second, first);
    assert_eq!(served_cert(&g, &root), second);
    let r = session.mail("a@other.test", &["b@example.test"], "Subject: t\r\n\r\nhi");
    assert!(r.starts_with("250 "), "{r}");
    assert_no_challenge_records(&p, &fake);

    let metrics = super::harness::http(g.api, "GET", "/metrics").2;
    assert!(
        metrics.contains("gomail_acme_renewals_total{result=\"success\"} 2"),
        "{metrics}"
    );
    let expiry = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gomail_tls_certificate_expiry_seconds "))
        .unwrap_or_else(|| panic!("no expiry gauge in {metrics}"));
    let expiry: i64 = expiry.parse().unwrap();
    assert!(expiry > chrono::Utc::now().timestamp() + 365 * 86_400);
}

#[test]
fn ssl_setup_without_agree_tos_refuses_and_names_the_terms() {
    let p = Pebble::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = write_config(
        &data,
        &acme_yaml(&p, "http://127.0.0.1:9", TOKEN, DOMAINS, ""),
    );
    let (ok, out, err) = cli(&config, &["ssl", "setup", "--email", "ops@example.test"]);
    assert!(!ok, "{out}");
    // pebble's directory names its terms as a data: URL.
    assert!(
        err.contains("terms of service are at data:text/plain"),
        "{err}"
    );
    assert!(err.contains("--agree-tos"), "{err}");
    assert!(!data.join("acme").exists());
}

#[test]
fn failed_issuance_keeps_the_certificate_and_cleans_up() {
    // Two labels: Debian's pebble 2.4 panics matching a block-list entry
    // longer than the name it checks (example.test here).
    let p = Pebble::start(&["blocked.test"]);
    let fake = FakeDo::start(TOKEN, &["example.test"], p.challtest, true);
    let silent = FakeDo::start(TOKEN, &["example.test"], p.challtest, false);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let good = acme_yaml(&p, &fake.url, TOKEN, DOMAINS, "");
    let config = write_config(&data, &good);
    let (ok, out, err) = cli(
        &config,
        &["ssl", "setup", "--email", "ops@example.test", "--agree-tos"],
    );
    assert!(ok, "{out}{err}");
    let cert_file = data.join("acme/cert.pem");
    let kept = std::fs::read(&cert_file).unwrap();
    let kept_key = std::fs::read(data.join("acme/key.pem")).unwrap();

    let cases = [
        (
            acme_yaml(&p, &fake.url, "wrong-token", DOMAINS, ""),
            "DigitalOcean refused do_api_token",
        ),
        (
            acme_yaml(&p, &fake.url, TOKEN, "[mx.example.test, blocked.test]", ""),
            "rejectedIdentifier",
        ),
        (
            acme_yaml(&p, &silent.url, TOKEN, DOMAINS, "acme_dns_timeout: 2s\n"),
            "did not show the challenge value within 2s (acme_dns_timeout)",
        ),
    ];
    for (i, (yaml, want)) in cases.iter().enumerate() {
        let config = write_config(&data, yaml);
        let (ok, out, err) = cli(&config, &["ssl", "renew", "--force"]);
        assert!(!ok, "case {i}: {out}");
        assert!(err.contains(want), "case {i}: {want:?} not in {err}");
        assert!(!err.contains(TOKEN), "case {i}: the token is in {err}");
        assert_eq!(std::fs::read(&cert_file).unwrap(), kept, "case {i}");
        assert_eq!(
            std::fs::read(data.join("acme/key.pem")).unwrap(),
            kept_key,
            "case {i}"
        );
        let (ok, status, _) = cli(&config, &["ssl", "status"]);
        assert!(ok);
        assert!(status.contains(want), "case {i}: {status}");
        assert!(status.contains("self-signed: no"), "case {i}: {status}");
    }
    let state = std::fs::read_to_string(data.join("acme/state.json")).unwrap();
    assert!(state.contains("\"failures\": 3"), "{state}");
    assert_no_challenge_records(&p, &fake);
    {
        let st = silent.state.lock().unwrap();
        assert!(
            st.created > 0 && st.created == st.deleted,
            "{}/{}",
            st.created,
            st.deleted
        );
    }
    assert!(fake.state.lock().unwrap().unauthorized > 0);

    // Through a running server: the certificate it serves stays too.
    let root = tmp.path().join("pebble-root.pem");
    std::fs::write(&root, p.root_pem()).unwrap();
    let g = Gomail::start_on(&data, &cases[0].0);
    let served = served_cert(&g, &root);
    assert_eq!(served, first_cert_der(&cert_file));
    let (ok, out, err) = super::harness::gomail_cli(&g, &["ssl", "renew", "--force"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("DigitalOcean refused do_api_token")
            && err.contains("the certificate in use stays"),
        "{err}"
    );
    assert_eq!(served_cert(&g, &root), served);
    assert_eq!(std::fs::read(&cert_file).unwrap(), kept);
}

#[test]
fn issuance_failing_with_no_certificate_serves_self_signed_and_warns() {
    let p = Pebble::start(&[]);
    let fake = FakeDo::start(TOKEN, &["example.test"], p.challtest, true);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("gomail.log");
    let yaml = acme_yaml(
        &p,
        &fake.url,
        "wrong-token",
        DOMAINS,
        &format!("log_format: json\nlog_file: \"{}\"\n", log.display()),
    );
    let config = write_config(&data, &yaml);
    // The account is made; the order fails at DigitalOcean.
    let (ok, _, err) = cli(
        &config,
        &["ssl", "setup", "--email", "ops@example.test", "--agree-tos"],
    );
    assert!(!ok);
    assert!(err.contains("DigitalOcean refused do_api_token"), "{err}");
    assert!(!data.join("acme/cert.pem").exists());
    // A server started now tries at once, fails, warns and serves the
    // self-signed fallback.
    let g = Gomail::start_on(&data, &yaml);
    wait_until(Duration::from_secs(20), "a failed renewal", || {
        super::harness::metric_where(&g, "gomail_acme_renewals_total", "result=\"failure\"") >= 1.0
    });
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO client.test");
    let self_signed = data.join("tls/self-signed.crt");
    c.starttls(
        tls_client(&self_signed, &[&rustls::version::TLS13]),
        "mx.example.test",
    )
    .unwrap();
    let warned = super::harness::log_events(&log, "acme_renewal_failed");
    assert!(
        warned.iter().any(|w| w["level"] == "warn"
            && w["message"]
                .as_str()
                .is_some_and(|m| m.contains("self-signed"))),
        "{warned:?}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("wrong-token"), "the token is in the log");
}

#[test]
fn the_renewal_loop_renews_a_due_certificate_on_its_own() {
    let p = Pebble::start(&[]);
    let fake = FakeDo::start(TOKEN, &["example.test"], p.challtest, true);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pebble-root.pem");
    std::fs::write(&root, p.root_pem()).unwrap();
    let data = tmp.path().join("data");
    let plain = acme_yaml(&p, &fake.url, TOKEN, "[mx.example.test]", "");
    let config = write_config(&data, &plain);
    let (ok, out, err) = cli(
        &config,
        &["ssl", "setup", "--email", "ops@example.test", "--agree-tos"],
    );
    assert!(ok, "{out}{err}");
    let cert_file = data.join("acme/cert.pem");
    let first = first_cert_der(&cert_file);
    // pebble's 5-year certificate is due once the window is 10 years.
    let due = acme_yaml(
        &p,
        &fake.url,
        TOKEN,
        "[mx.example.test]",
        "acme_renew_before: 3650d\n",
    );
    let g = Gomail::start_on(&data, &due);
    wait_until(Duration::from_secs(30), "the loop's renewal", || {
        super::harness::metric_where(&g, "gomail_acme_renewals_total", "result=\"success\"") >= 1.0
    });
    let second = first_cert_der(&cert_file);
    assert_ne!(second, first);
    assert_eq!(served_cert(&g, &root), second);
    assert_no_challenge_records(&p, &fake);
    // A valid certificate is never traded for the self-signed fallback:
    // with its key gone, a reload keeps serving it.
    std::fs::remove_file(data.join("acme/key.pem")).unwrap();
    let (ok, out, err) = super::harness::gomail_cli(&g, &["config", "reload"]);
    assert!(!ok, "{out}");
    assert!(err.contains("the certificates in use stay"), "{err}");
    assert_eq!(served_cert(&g, &root), second);
}

#[test]
fn the_certificate_alert_rules_pass_promtool() {
    let promtool = super::harness::require_tool("promtool");
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus-rules.yaml");
    let out = std::process::Command::new(promtool)
        .args(["check", "rules", rules])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(rules).unwrap();
    assert!(text.contains("gomail_tls_certificate_expiry_seconds - time() < 14 * 86400"));
}

#[test]
fn http_01_is_answered_on_acme_http_listen_only_while_the_order_runs() {
    let p = Pebble::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pebble-root.pem");
    std::fs::write(&root, p.root_pem()).unwrap();
    // challtestsrv answers A 127.0.0.1 for every name: pebble fetches the
    // token from 127.0.0.1:<its httpPort>, where gomail listens.
    let listen = format!("127.0.0.1:{}", p.http_port);
    let http01 = format!("acme_challenge: http-01\nacme_http_listen: \"{listen}\"\n");
    // A wildcard cannot be validated over HTTP: the config says so.
    let bad = write_config(
        &tmp.path().join("bad"),
        &acme_yaml(&p, "http://127.0.0.1:9", TOKEN, DOMAINS, &http01),
    );
    let (ok, _, err) = cli(&bad, &["config", "validate"]);
    assert!(!ok);
    assert!(
        err.contains("acme_challenge") && err.contains("wildcard `*.example.test`"),
        "{err}"
    );
    let g = Gomail::start(&acme_yaml(
        &p,
        "http://127.0.0.1:9",
        TOKEN,
        "[mx.example.test, example.test]",
        &http01,
    ));
    let (ok, out, err) = super::harness::gomail_cli(
        &g,
        &["ssl", "setup", "--email", "ops@example.test", "--agree-tos"],
    );
    assert!(ok, "{out}{err}");
    let cert = first_cert_der(&g.data_dir.join("acme/cert.pem"));
    assert_eq!(served_cert(&g, &root), cert);
    // Nothing listens on the challenge port between orders.
    let refused = std::net::TcpStream::connect(&listen).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    // setup again with another address: the same account, its contact changed.
    let (ok, out, err) = super::harness::gomail_cli(
        &g,
        &["ssl", "setup", "--email", "noc@example.test", "--agree-tos"],
    );
    assert!(ok, "{out}{err}");
    let accounts: Vec<_> = std::fs::read_dir(g.data_dir.join("acme"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("account-"))
        .collect();
    assert_eq!(accounts.len(), 1);
    let account = std::fs::read_to_string(accounts[0].path()).unwrap();
    assert!(
        account.contains("\"email\": \"noc@example.test\""),
        "email not updated"
    );
    assert_ne!(first_cert_der(&g.data_dir.join("acme/cert.pem")), cert);
}
