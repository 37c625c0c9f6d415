//! DNS blocklists at connect: weights, allow-lists, and deadlines when a
//! zone goes quiet.

use super::*;

/// Connects from `src` and returns the server's first line.
fn first_line(addr: std::net::SocketAddr, src: &str) -> String {
    crate::it::harness::greet_from(addr, src.parse().unwrap()).1
}

#[test]
fn dns_blocklists_refuse_listed_clients_at_connect() {
    let w = world();
    let g = w.gomail(
        // Loopback is trusted by default, and trusted clients skip the
        // blocklists (as Postfix's postscreen permits mynetworks).
        "trusted_networks: []\nban_threshold: 0\ndnsbl: [\"bl.test*2\", \"allow.test*-5\"]\ndnsbl_threshold: 2\n",
    );
    assert_eq!(
        first_line(g.addr, "127.0.0.2"),
        "554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test\r\n"
    );
    assert!(
        first_line(g.addr, "127.0.0.1").starts_with("220 "),
        "unlisted"
    );
    assert!(
        first_line(g.addr, "127.0.0.3").starts_with("220 "),
        "allow-listed"
    );
    use crate::it::harness::metric_where;
    assert_eq!(
        metric_where(&g, "gomail_connections_refused_total", "reason=\"dnsbl\""),
        1.0
    );
    assert_eq!(
        metric_where(&g, "gomail_violations_total", "kind=\"dnsbl\""),
        1.0
    );
}

#[test]
fn a_blocklist_that_never_answers_costs_at_most_the_deadline() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let g = Gomail::start(&format!(
        "trusted_networks: []\ndns_servers: [\"{}\"]\ndns_timeout: 20s\ndnsbl: [\"bl.test\"]\ndnsbl_timeout: 1s\nspf_enabled: false\ndkim_enabled: false\ndmarc_enabled: false\n",
        silent.local_addr().unwrap()
    ));
    let t0 = std::time::Instant::now();
    assert!(first_line(g.addr, "127.0.0.2").starts_with("220 "));
    // Bounded by dnsbl_timeout (1 s), not by the 20 s DNS timeout; the
    // margin is wide on purpose: this is a bound, not a benchmark.
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn a_quiet_blocklist_does_not_hide_the_answer_of_another() {
    let w = world();
    // silent.test never answers; bl.test lists 127.0.0.2. The quiet zone
    // comes first: asked in turn, it would use up the whole deadline.
    let relay = relay(w.dns.addr, "silent.test", Fault::Silent);
    let g = Gomail::start(&format!(
        "trusted_networks: []\ndns_servers: [\"{}\"]\ndns_timeout: 20s\ndnsbl: [\"silent.test*2\", \"bl.test*2\"]\ndnsbl_threshold: 2\ndnsbl_timeout: 8s\nspf_enabled: false\ndkim_enabled: false\ndmarc_enabled: false\n",
        relay.addr
    ));
    let t0 = std::time::Instant::now();
    assert_eq!(
        first_line(g.addr, "127.0.0.2"),
        "554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test\r\n"
    );
    // Refused as soon as bl.test answered: the quiet zone could only add
    // to the score (a bound with a wide margin against the 8 s deadline).
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(4),
        "{:?}",
        t0.elapsed()
    );
    let t0 = std::time::Instant::now();
    // An unlisted client waits for the quiet zone, but no longer than the
    // deadline (a bound with a wide margin, not a benchmark).
    assert!(first_line(g.addr, "127.0.0.1").starts_with("220 "));
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(16),
        "{:?}",
        t0.elapsed()
    );
}
