//! The resolver behind the checks: DNS failures are temporary errors, and
//! the per-shard cache keeps answers and absences for their TTL.

use super::*;

#[test]
fn a_dns_server_that_does_not_answer_gives_451() {
    // A UDP socket that never answers, and no TCP listener.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let g = Gomail::start(&format!(
        "dns_servers: [\"{}\"]\ndns_timeout: 1s\nspf_enforcement: strict\n",
        silent.local_addr().unwrap()
    ));
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO client.pass.test");
    let r = c.cmd("MAIL FROM:<a@pass.test>");
    assert!(r.starts_with("451 4.7.24 "), "{r}");
    // Everyone else is still served.
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 OK\r\n");
}

#[test]
fn answers_and_absences_are_cached_and_lookups_timed() {
    let w = world();
    // One shard: the cache is per shard.
    let g = w.gomail("shards: 1\n");
    let send_one = || {
        let m = w.message("a@pass.test", Some("pass.test"), "cached");
        let reply = send(&g, "127.0.0.1", "a@pass.test", &m);
        assert!(reply.starts_with("250"), "{reply}");
    };
    // The first message fills the cache: SPF, the DKIM key,
    // _dmarc.pass.test, and the absence of _dmarc.test (DMARC's walk up
    // the tree). One connection per message.
    send_one();
    send_one();
    let misses = metric(&g, "gomail_dns_cache_misses_total");
    let hits = metric(&g, "gomail_dns_cache_hits_total");
    let timed = metric(&g, "gomail_dns_lookup_seconds_count");
    assert!(timed >= 4.0, "lookups timed: {timed}");
    for _ in 0..10 {
        send_one();
    }
    // Every answer, absences included, now comes from the cache.
    assert_eq!(
        metric(&g, "gomail_dns_cache_misses_total"),
        misses,
        "a warm cache still missed"
    );
    assert!(metric(&g, "gomail_dns_cache_hits_total") >= hits + 10.0 * 4.0);
    assert_eq!(metric(&g, "gomail_dns_lookup_seconds_count"), timed);
}

#[test]
fn servfail_is_a_temporary_error_never_a_pass() {
    let w = world();
    // SPF: the sender domain's server fails.
    let spf = relay(w.dns.addr, "inc.test", Fault::ServFail);
    let g = Gomail::start(&format!(
        "dns_servers: [\"{}\"]\ndns_timeout: 2s\nspf_enforcement: strict\n",
        spf.addr
    ));
    let m = w.message("a@inc.test", None, "servfail");
    let reply = send(&g, "127.0.0.1", "a@inc.test", &m);
    assert!(reply.starts_with("451 4.7.24 "), "{reply}");
    drop(g);

    // DMARC: only the policy record's server fails, while SPF and DKIM
    // pass; the policy is unknown, so the message is deferred.
    let dmarc = relay(w.dns.addr, "_dmarc.pass.test", Fault::ServFail);
    let g = Gomail::start(&format!(
        "dns_servers: [\"{}\"]\ndns_timeout: 2s\ndmarc_enforcement: relaxed\n",
        dmarc.addr
    ));
    let m = w.message("a@pass.test", Some("pass.test"), "servfail");
    let reply = send(&g, "127.0.0.1", "a@pass.test", &m);
    assert!(reply.starts_with("451 4.7.5 "), "{reply}");
    // Monitoring only: accepted, and the JSON says temperror.
    let g = Gomail::start(&format!(
        "dns_servers: [\"{}\"]\ndns_timeout: 2s\ndmarc_enforcement: none\n",
        dmarc.addr
    ));
    let reply = send(&g, "127.0.0.1", "a@pass.test", &m);
    let id = queued(&reply);
    let v = stored_auth(&g, &id);
    assert_eq!(v["authentication"]["dmarc"]["result"], "temperror", "{v}");
}

#[test]
fn cached_answers_expire_with_their_ttl() {
    let w = world();
    let g = w.gomail("shards: 1\ndkim_enabled: false\ndmarc_enabled: false\n");
    let send_one = || {
        let m = w.message("a@ttl.test", None, "ttl");
        let reply = send(&g, "127.0.0.1", "a@ttl.test", &m);
        assert!(reply.starts_with("250"), "{reply}");
    };
    send_one();
    let misses = metric(&g, "gomail_dns_cache_misses_total");
    send_one();
    assert_eq!(
        metric(&g, "gomail_dns_cache_misses_total"),
        misses,
        "cached"
    );
    // Past the record's 2 s TTL the SPF record is asked again.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    send_one();
    assert_eq!(
        metric(&g, "gomail_dns_cache_misses_total"),
        misses + 1.0,
        "expired"
    );
}
