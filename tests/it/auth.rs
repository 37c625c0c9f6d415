//! SPF, DKIM and DMARC against a real DNS server on loopback, with mail
//! signed by mail-auth's signer and sent from different loopback addresses
//! (127.0.0.1 is permitted by the test domains' SPF records, 127.0.0.2 is not).

use std::net::IpAddr;

use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;

use super::dns::{serve, txt, TestDns};
use super::dns_relay::{relay, Fault};
use super::harness::{metric, queue_id, queued, stored, Client, Gomail};

/// The test world: DNS zones with SPF, DKIM (Ed25519 `sel`, RSA-2048
/// `rsa`) and DMARC records.
struct World {
    dns: TestDns,
    pkcs8: Vec<u8>,
    /// RSA-2048 private key (PEM) for the independent signer.
    rsa_key: &'static std::path::Path,
}

/// One RSA-2048 key for the whole test run (`openssl genrsa` is slow on
/// two cores, and only its use differs between tests): the PEM path and
/// the base64 public key for the DKIM record.
fn shared_rsa_key() -> &'static (tempfile::TempDir, std::path::PathBuf, String) {
    static KEY: std::sync::OnceLock<(tempfile::TempDir, std::path::PathBuf, String)> =
        std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (path, public) = rsa_key(dir.path());
        (dir, path, public)
    })
}

/// Makes an RSA-2048 key with openssl; returns its PEM path and the
/// base64 SubjectPublicKeyInfo for the DKIM record.
fn rsa_key(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let openssl = super::harness::require_tool("openssl");
    let key = dir.join("rsa.pem");
    let ok = std::process::Command::new(&openssl)
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .unwrap();
    assert!(ok.status.success(), "openssl genrsa failed");
    let der = std::process::Command::new(&openssl)
        .args(["rsa", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(der.status.success());
    (key, super::harness::b64encode(&der.stdout))
}

fn world() -> World {
    let (_, rsa_path, rsa_public) = shared_rsa_key();
    let rsa_dkim = txt(&format!("v=DKIM1; k=rsa; p={rsa_public}"));
    let pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
    let public = Ed25519Key::from_pkcs8_der(&pkcs8).unwrap().public_key();
    let dkim = txt(&format!(
        "v=DKIM1; k=ed25519; p={}",
        super::harness::b64encode(&public)
    ));
    let spf = txt("v=spf1 ip4:127.0.0.1 -all");
    let mut lookups = String::from("v=spf1");
    for i in 0..11 {
        lookups.push_str(&format!(" include:i{i}.lookups.test"));
    }
    lookups.push_str(" -all");
    let mut lookup_zone = format!("@ IN TXT {}\n", txt(&lookups));
    for i in 0..11 {
        lookup_zone.push_str(&format!("i{i} IN TXT \"v=spf1 ?all\"\n"));
    }
    let dns = serve(&[
        ("pass.test.", format!("@ IN TXT {spf}\nsel._domainkey IN TXT {dkim}\nrsa._domainkey IN TXT {rsa_dkim}\n_dmarc IN TXT \"v=DMARC1; p=reject\"\nmail IN TXT {spf}\n")),
        ("quar.test.", format!("@ IN TXT {spf}\nsel._domainkey IN TXT {dkim}\n_dmarc IN TXT \"v=DMARC1; p=quarantine\"\n")),
        ("none.test.", "@ IN TXT \"v=spf1 ip4:127.0.0.1 ~all\"\n_dmarc IN TXT \"v=DMARC1; p=none\"\n".to_string()),
        ("lookups.test.", lookup_zone),
        ("neutral.test.", "@ IN TXT \"v=spf1 ?all\"\n".to_string()),
        // Publishes strict alignment itself.
        ("strictalign.test.", format!("@ IN TXT {spf}\nsel._domainkey IN TXT {dkim}\n_dmarc IN TXT \"v=DMARC1; p=reject; adkim=s; aspf=s\"\n")),
        // Three includes of names that do not exist: over RFC 7208's limit of two void lookups.
        ("void.test.", "@ IN TXT \"v=spf1 include:n1.void.test include:n2.void.test include:n3.void.test -all\"\n".to_string()),
        ("inc.test.", "@ IN TXT \"v=spf1 include:pass.test -all\"\n".to_string()),
        ("redir.test.", "@ IN TXT \"v=spf1 redirect=pass.test\"\n".to_string()),
        // An SPF record that may be cached for 2 seconds only.
        ("ttl.test.", "@ 2 IN TXT \"v=spf1 ip4:127.0.0.1 -all\"\n".to_string()),
        ("nospf.test.", "www IN A 127.0.0.9\n".to_string()),
        // 127.0.0.2 and 127.0.0.3 are on the blocklist; 127.0.0.3 is also
        // on the allow-list.
        ("bl.test.", "2.0.0.127 IN A 127.0.0.2\n3.0.0.127 IN A 127.0.0.2\n".to_string()),
        ("allow.test.", "3.0.0.127 IN A 127.0.0.5\n".to_string()),
    ]);
    World {
        dns,
        pkcs8,
        rsa_key: rsa_path,
    }
}

impl World {
    fn gomail(&self, extra: &str) -> Gomail {
        Gomail::start(&format!(
            "dns_servers: [\"{}\"]\ndns_timeout: 2s\n{extra}",
            self.dns.addr
        ))
    }

    /// A message From `from`, DKIM-signed for `d=domain` when given.
    fn message(&self, from: &str, sign_as: Option<&str>, body: &str) -> String {
        let raw = format!("From: <{from}>\r\nTo: <r@example.test>\r\nSubject: auth test\r\nMessage-ID: <{}@t>\r\n\r\n{body}\r\n", fastrand::u64(..));
        match sign_as {
            None => raw,
            Some(d) => {
                let key = Ed25519Key::from_pkcs8_der(&self.pkcs8).unwrap();
                let sig = DkimSigner::from_key(key)
                    .domain(d)
                    .selector("sel")
                    .headers(["From", "To", "Subject", "Message-ID"])
                    .sign(raw.as_bytes())
                    .unwrap();
                format!("{}{}", sig.to_header(), raw)
            }
        }
    }
}

/// Sends a message from `src`; returns the reply to MAIL FROM (if refused)
/// or to the end of data.
fn send(g: &Gomail, src: &str, mail_from: &str, message: &str) -> String {
    let ip: IpAddr = src.parse().unwrap();
    let mut c = Client::connect_from(g.addr, Some(ip));
    c.cmd("EHLO client.pass.test");
    let r = c.cmd(&format!("MAIL FROM:<{mail_from}>"));
    if !r.starts_with("250") {
        return r;
    }
    assert!(c.cmd("RCPT TO:<r@example.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(message.as_bytes());
    c.send(b".\r\n");
    c.reply()
}

fn stored_auth(g: &Gomail, id: &str) -> serde_json::Value {
    let t0 = std::time::Instant::now();
    loop {
        if let Some((_, v)) = stored(&g.data_dir).into_iter().find(|(i, _)| i == id) {
            return v;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "{id} never stored"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub(crate) mod dkim_dmarc;
mod dnsbl;
mod resolver;
mod spf;
