//! The DNS side of the authentication load test (docs/benchmarks.md
//! section 5): writes a 4 KiB message signed with an Ed25519 and with an
//! RSA-2048 DKIM key to `DIR/{ed25519,rsa}.eml`, then serves `bench.test`
//! (SPF, both DKIM keys, DMARC `p=reject`) and the root zone on 127.0.0.1
//! until killed, printing the address to give gomail as `dns_servers`.
//!
//! `cargo run --release --example auth_dns -- /tmp/authbench`

#[path = "../tests/it/dns.rs"]
mod dns;
#[path = "../benches/support/auth_fixtures.rs"]
mod fixtures;

use gomail::delivery::sign::base64_encode;
use mail_auth::common::crypto::Ed25519Key;

fn main() {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: auth_dns DIR (where the signed messages go)"),
    );
    std::fs::create_dir_all(&dir).expect("DIR can be created");
    let pkcs8 = Ed25519Key::generate_pkcs8().expect("an Ed25519 key");
    let ed = Ed25519Key::from_pkcs8_der(&pkcs8).expect("an Ed25519 key");
    let ed_public = ed.public_key();
    let rsa = fixtures::rsa_key();
    let rsa_public = rsa.public_key();
    let message = fixtures::message_4k();
    std::fs::write(dir.join("ed25519.eml"), fixtures::sign(ed, "ed", &message)).unwrap();
    std::fs::write(dir.join("rsa.eml"), fixtures::sign(rsa, "rsa", &message)).unwrap();
    let zone = fixtures::zone(&base64_encode(&ed_public), &base64_encode(&rsa_public));
    let server = dns::serve(&[("bench.test.", zone)]);
    println!(
        "auth_dns: bench.test on {} (set dns_servers to it); messages in {}",
        server.addr,
        dir.display()
    );
    loop {
        std::thread::park();
    }
}
