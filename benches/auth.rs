//! Cost of the inline authentication checks on a shard with a warm DNS
//! cache: what every message pays once its sender's records are cached.
//!
//! An in-process authoritative DNS server (hickory-server, 127.0.0.1) serves
//! `bench.test`: SPF `v=spf1 ip4:127.0.0.0/8 -all`, an Ed25519 DKIM key
//! (selector `ed`), an RSA-2048 one (`rsa`, from `openssl genrsa`) and DMARC
//! `p=reject`. A 4 KiB message from `sender@bench.test` is signed once with
//! each key by mail-auth's `DkimSigner` (relaxed/relaxed). Measured, each
//! after one unmeasured call that fills the shard's cache (`ShardDns`):
//! - `dkim_verify_4k/{rsa2048_sha256,ed25519_sha256}`: parse the message and
//!   verify the signature (`MessageAuthenticator::verify_dkim`, as
//!   `ShardAuth::verify_message` calls it);
//! - `spf/check_sender`: `ShardAuth::check_sender` for 127.0.0.1;
//! - `verify_message_4k/ed25519_dkim_dmarc`: all of `ShardAuth::verify_message`
//!   (DKIM, ARC, DMARC, Authentication-Results, JSON; iprev is asked once per
//!   connection, before the measured calls). DMARC's tree walk also asks
//!   for `_dmarc.test.` (NXDOMAIN): the first call puts that absence in the
//!   answer cache (`ShardDns::learn_dmarc_absences`), so measured calls all hit;
//! - `verify_message_4k/ed25519_dkim_dmarc_nxdomain_cached`: DKIM and DMARC
//!   alone (no ARC, header or JSON), with that NXDOMAIN put in a cache of
//!   their own by hand.
//!
//! Futures are polled by `futures_lite::future::block_on` inside the gomail
//! DNS runtime's context, as a shard polls them inside glommio (these calls
//! use no glommio API). The bench checks that the other measured calls all
//! hit the cache. Run: `cargo bench --bench auth` (needs `openssl`).

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_lite::future::block_on;
use gomail::auth::dns::{DnsRuntime, ShardDns};
use gomail::auth::{AuthSettings, DmarcEnforcement, ShardAuth, SpfEnforcement};
use gomail::delivery::sign::base64_encode;
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::{AuthenticatedMessage, DkimResult, DmarcResult, ResolverCache, SpfOutput, Txt};

#[path = "../tests/it/dns.rs"]
mod dns;
#[path = "support/auth_fixtures.rs"]
mod fixtures;
use fixtures::{message_4k, rsa_key, sign, zone};

const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Times `iters` sequential calls of `f` in one `block_on`.
fn timed<F: std::future::Future>(iters: u64, mut f: impl FnMut() -> F) -> Duration {
    block_on(async {
        let t0 = Instant::now();
        for _ in 0..iters {
            black_box(f().await);
        }
        t0.elapsed()
    })
}

fn auth(c: &mut Criterion) {
    let ed_pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
    let ed_public = Ed25519Key::from_pkcs8_der(&ed_pkcs8).unwrap().public_key();
    let rsa = rsa_key();
    let rsa_public = rsa.public_key();
    let zone = zone(&base64_encode(&ed_public), &base64_encode(&rsa_public));
    // The tests' DNS server: the root zone (so that lookups outside
    // `bench.test` get NXDOMAIN) and `bench.test`, TTL 300.
    let server = dns::serve(&[("bench.test.", zone)]);
    let addr = server.addr;
    let raw = message_4k();
    let ed_signed = sign(Ed25519Key::from_pkcs8_der(&ed_pkcs8).unwrap(), "ed", &raw);
    let rsa_signed = sign(rsa, "rsa", &raw);

    let dns = DnsRuntime::start(&[addr], Duration::from_secs(2)).unwrap();
    let handle = dns.handle();
    let _context = handle.enter();
    let settings = |spf, dkim, dmarc| {
        Arc::new(AuthSettings {
            spf,
            spf_enforcement: SpfEnforcement::Strict,
            dkim,
            dmarc,
            dmarc_enforcement: DmarcEnforcement::Relaxed,
            hostname: "mx.example.test".into(),
            dnsbl: Vec::new(),
            dnsbl_threshold: 1,
            dnsbl_timeout: Duration::from_secs(2),
        })
    };

    // (a), (b): DKIM alone, as verify_message calls it.
    let resolver = dns.authenticator().unwrap();
    let cache = ShardDns::default();
    let dkim = |msg: &[u8]| {
        let parsed = AuthenticatedMessage::parse(msg).expect("parsable message");
        let out = block_on(resolver.verify_dkim(cache.params(&parsed)));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].result(), &DkimResult::Pass, "warm-up verification");
    };
    dkim(&rsa_signed);
    dkim(&ed_signed);
    let warm_misses = cache.counts().1;
    let mut g = c.benchmark_group("dkim_verify_4k");
    g.throughput(Throughput::Elements(1));
    for (name, msg) in [
        ("rsa2048_sha256", &rsa_signed),
        ("ed25519_sha256", &ed_signed),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                timed(iters, || async {
                    let parsed = AuthenticatedMessage::parse(msg).unwrap();
                    let out = resolver.verify_dkim(cache.params(&parsed)).await;
                    out[0].result() == &DkimResult::Pass
                })
            })
        });
    }
    g.finish();
    assert_eq!(cache.counts().1, warm_misses, "a measured DKIM call missed");

    // (c): SPF at MAIL FROM.
    let spf = ShardAuth::new(dns.authenticator().unwrap(), settings(true, false, false));
    let check = || spf.check_sender(CLIENT, "client.bench.test", "sender@bench.test");
    assert!(block_on(check()).refusal.is_none(), "SPF passes");
    let warm_misses = spf.cache_counts().1;
    c.bench_function("spf/check_sender", |b| {
        b.iter_custom(|iters| timed(iters, check))
    });
    assert_eq!(
        spf.cache_counts().1,
        warm_misses,
        "a measured SPF call missed"
    );

    // (d): the whole check after DATA.
    let full = ShardAuth::new(dns.authenticator().unwrap(), settings(true, true, true));
    let sender = block_on(full.check_sender(CLIENT, "client.bench.test", "sender@bench.test"));
    // iprev is asked once per connection, outside the measured call.
    let iprev = block_on(full.iprev(CLIENT));
    let verdict = block_on(full.verify_message(&ed_signed, &sender, &iprev));
    assert!(verdict.refusal.is_none());
    let json: serde_json::Value = serde_json::from_str(verdict.json.get()).unwrap();
    assert_eq!(json["dkim"]["result"], "pass", "{json}");
    assert_eq!(json["dmarc"]["result"], "pass", "{json}");
    let mut g = c.benchmark_group("verify_message_4k");
    g.throughput(Throughput::Elements(1));
    let (mut calls, before) = (0, full.cache_counts().1);
    g.bench_function("ed25519_dkim_dmarc", |b| {
        b.iter_custom(|iters| {
            calls += iters;
            timed(iters, || full.verify_message(&ed_signed, &sender, &iprev))
        })
    });
    // Absences are kept for the zone's negative TTL (60 s here), so a long
    // measurement may see one more miss a minute, no more.
    let missed = full.cache_counts().1 - before;
    assert!(
        missed * 10_000 <= calls,
        "{missed} answer-cache misses in {calls} calls"
    );

    // (e): DKIM + DMARC with that NXDOMAIN put in the answer cache too.
    let cache = ShardDns::default();
    let nx = mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(
        hickory_proto::op::ResponseCode::NXDomain,
    ));
    let until = Instant::now() + Duration::from_secs(3600);
    let txt_cache = cache.params(()).cache_txt.unwrap();
    txt_cache.insert("_dmarc.test.".into(), Txt::Error(nx), until);
    let spf_out = SpfOutput::new("bench.test".into());
    let dkim_dmarc = || async {
        let parsed = AuthenticatedMessage::parse(&ed_signed).unwrap();
        let dkim = resolver.verify_dkim(cache.params(&parsed)).await;
        let params = DmarcParameters::new(&parsed, &dkim, "bench.test", &spf_out);
        let dmarc = resolver.verify_dmarc(cache.params(params)).await;
        dmarc.dkim_result() == &DmarcResult::Pass
    };
    assert!(block_on(dkim_dmarc()), "DMARC passes by DKIM");
    let warm_misses = cache.counts().1;
    g.bench_function("ed25519_dkim_dmarc_nxdomain_cached", |b| {
        b.iter_custom(|iters| timed(iters, dkim_dmarc))
    });
    g.finish();
    assert_eq!(cache.counts().1, warm_misses, "a measured call missed");
}

criterion_group!(benches, auth);
criterion_main!(benches);
