//! What the auth bench and `examples/auth_dns.rs` share: the signing keys,
//! the 4 KiB message, its DKIM signature and the `bench.test` zone.

use mail_auth::common::crypto::{RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

/// An RSA-2048 key made by `openssl genrsa`.
pub(crate) fn rsa_key() -> RsaKey<Sha256> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rsa.pem");
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&path)
        .arg("2048")
        .output()
        .unwrap_or_else(|e| panic!("this bench needs `openssl` on the PATH (openssl genrsa): {e}"));
    assert!(
        out.status.success(),
        "openssl genrsa failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = std::fs::read(&path).unwrap();
    let der = PrivateKeyDer::from_pem_slice(&pem).expect("a PKCS#1 or PKCS#8 PEM key");
    RsaKey::<Sha256>::from_key_der(der).expect("an RSA-2048 key")
}

/// A 4096-octet message from `sender@bench.test`; every 20th line starts
/// with a dot, so that it needs dot-stuffing on the wire.
pub(crate) fn message_4k() -> Vec<u8> {
    let mut m = b"From: Sender <sender@bench.test>\r\nTo: <rcpt@example.test>\r\nSubject: auth benchmark\r\nDate: Tue, 14 Jul 2026 09:00:00 +0000\r\nMessage-ID: <auth-bench@bench.test>\r\n\r\n".to_vec();
    let mut n = 0;
    while m.len() < 4096 - 80 {
        n += 1;
        m.extend_from_slice(if n % 20 == 7 {
            b"...a line that needs dot-stuffing on the wire\r\n".as_slice()
        } else {
            b"The quarterly report is attached for your review; please confirm by friday.\r\n"
        });
    }
    m.resize(4096 - 2, b'x');
    m.extend_from_slice(b"\r\n");
    m
}

/// `message` with a DKIM-Signature by `key` for `d=bench.test; s=selector`.
pub(crate) fn sign(key: impl SigningKey, selector: &str, message: &[u8]) -> Vec<u8> {
    let sig = DkimSigner::from_key(key)
        .domain("bench.test")
        .selector(selector)
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
        .sign(message)
        .unwrap();
    [sig.to_header().as_bytes(), message].concat()
}

/// The `bench.test` zone body: SPF for 127.0.0.0/8, the `ed` and `rsa`
/// DKIM keys (base64 public keys) and DMARC `p=reject`.
pub(crate) fn zone(ed_public_b64: &str, rsa_public_b64: &str) -> String {
    format!(
        "@ IN TXT \"v=spf1 ip4:127.0.0.0/8 -all\"\n\
         ed._domainkey IN TXT {}\n\
         rsa._domainkey IN TXT {}\n\
         _dmarc IN TXT \"v=DMARC1; p=reject\"\n",
        super::dns::txt(&format!("v=DKIM1; k=ed25519; p={ed_public_b64}")),
        super::dns::txt(&format!("v=DKIM1; k=rsa; p={rsa_public_b64}")),
    )
}
