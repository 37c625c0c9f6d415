//! The control plane as an operator and Prometheus see it.

use std::net::SocketAddr;
use std::time::Duration;

use super::harness::{http, metric, queue_id, sum, tls_client, wait_until, Client, Gomail};

#[test]
fn metrics_count_what_clients_did_per_shard() {
    let g = Gomail::start("shards: 2\n");
    for _ in 0..3 {
        let mut c = Client::connect(g.addr);
        c.cmd("EHLO metrics.example");
        assert!(queue_id(&c.mail(
            "s@sender.example",
            &["r@example.test"],
            "Subject: m\r\n\r\nx"
        ))
        .is_some());
    }
    let mut t = Client::connect(g.addr);
    t.cmd("EHLO tls.example");
    t.starttls(
        tls_client(
            &g.data_dir.join("tls/self-signed.crt"),
            &[&rustls::version::TLS13],
        ),
        "mx.example.test",
    )
    .unwrap();
    // A round trip inside TLS: the server has finished (and counted) the
    // handshake, not only the client.
    assert!(t.cmd("NOOP").starts_with("250"));
    let mut bad = Client::connect(g.addr);
    bad.cmd("EHLO junk.example");
    bad.cmd("STARTTLS");
    bad.send(b"not a ClientHello at all\r\n\r\n\r\n");
    assert!(bad.closed());
    drop(bad);
    // Closed connections are counted down by the server after the client
    // sees them close.
    wait_until(Duration::from_secs(10), "only the TLS session open", || {
        metric(&g, "gomail_connections_active") == 1.0
    });

    let (status, ctype, text) = http(g.api, "GET", "/metrics");
    assert_eq!(status, 200);
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    assert!(
        text.contains("# TYPE gomail_messages_accepted_total counter\n"),
        "{text}"
    );
    assert!(text.contains("gomail_messages_accepted_total{shard=\"0\"} "));
    assert!(text.contains("gomail_messages_accepted_total{shard=\"1\"} "));
    assert_eq!(sum(&text, "gomail_messages_accepted_total{"), 3.0);
    assert_eq!(sum(&text, "gomail_spool_commit_seconds_count{"), 3.0);
    assert_eq!(sum(&text, "gomail_tls_handshakes_total{"), 1.0);
    assert!(
        text.contains("version=\"TLSv1.3\",cipher=\"TLS13_"),
        "{text}"
    );
    assert_eq!(sum(&text, "gomail_tls_handshake_failures_total{"), 1.0);
    assert_eq!(
        sum(&text, "gomail_connections_active{"),
        1.0,
        "the TLS session is still open"
    );
    assert!(text.contains("gomail_shards 2\n"));

    let (status, ctype, body) = http(g.api, "GET", "/health");
    assert_eq!((status, ctype.as_str()), (200, "application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["shards"], 2);

    let (status, _, body) = http(g.api, "GET", "/nope");
    assert_eq!(status, 404);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"],
        "not_found"
    );
    let (status, _, body) = http(g.api, "POST", "/metrics");
    assert_eq!(status, 405);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"],
        "method_not_allowed"
    );
}

#[test]
fn metrics_can_be_served_on_their_own_port_and_switched_off() {
    let port = 21026; // below the ephemeral range: no parallel test takes it
    let g = Gomail::start(&format!("metrics_port: {port}\n"));
    let apart: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, _, text) = http(apart, "GET", "/metrics");
    assert_eq!(status, 200);
    assert!(text.contains("gomail_build_info{version="));
    assert_eq!(
        http(apart, "GET", "/health").0,
        404,
        "the metrics port serves only metrics"
    );
    let g2 = Gomail::start("metrics_enabled: false\n");
    assert_eq!(http(g2.api, "GET", "/metrics").0, 404);
    assert_eq!(http(g2.api, "GET", "/health").0, 200);
    drop(g);
}
