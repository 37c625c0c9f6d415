//! Report tests: merging, status, the JSON keys and the summary line.

use super::*;

#[test]
fn merge_and_status() {
    let mut a = Stats::new();
    let mut b = Stats::new();
    for us in 1..=1000u64 {
        a.record_ok(Duration::from_micros(us));
    }
    b.record_ok(Duration::from_secs(120)); // saturates at one minute
    b.errors = 1;
    a.merge(&b);
    let mut r = Report {
        server: "127.0.0.1:1".into(),
        mode: "reuse",
        sessions: 2,
        messages_requested: 1001,
        warmup: 0,
        warmup_errors: 0,
        size_bytes: 4096,
        sources: 1,
        pipelining: false,
        stats: a,
        error_samples: vec!["RCPT: 550 no".into()],
        elapsed: Duration::from_secs(2),
        timed_out: false,
        tls: None,
        handshake_only: false,
    };
    assert_eq!(r.stats.ok, 1001);
    assert_eq!(r.status(), Status::Errors);
    let text = r.json();
    assert!(text.starts_with("{\n  \"server\": \"127.0.0.1:1\",\n  \"mode\": \"reuse\","));
    let j: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(j["latency_us"]["p50"].as_u64().unwrap() / 10, 50);
    assert!(j["latency_us"]["max"].as_u64().unwrap() >= MAX_US);
    assert_eq!(j["msgs_per_s"], 500.5);
    assert_eq!(j["status"], "errors");
    assert_eq!(j["tls"], serde_json::json!({"mode": "none"}));
    assert_eq!(j["handshakes_per_s"], 0.0);
    r.stats.errors = 0;
    assert_eq!(r.status(), Status::Ok);
    r.timed_out = true;
    assert_eq!(r.status(), Status::Timeout);
    assert!(r.summary().starts_with("timeout: 1001/1001 msgs in 2.000s"));
    assert!(!r.summary().contains("TLS"));
}

fn tls_report(handshake_only: bool) -> Report {
    let mut stats = Stats::new();
    for ms in 1..=4u64 {
        stats.record_handshake(Duration::from_millis(ms));
    }
    Report {
        server: "127.0.0.1:1".into(),
        mode: "perconn",
        sessions: 1,
        messages_requested: 4,
        warmup: 0,
        warmup_errors: 0,
        size_bytes: 4096,
        sources: 1,
        pipelining: false,
        stats,
        error_samples: Vec::new(),
        elapsed: Duration::from_secs(2),
        timed_out: false,
        tls: Some(TlsReport {
            mode: "starttls",
            negotiated: Some(Negotiated {
                version: "TLSv1_3".into(),
                cipher: "TLS13_AES_256_GCM_SHA384".into(),
                kx_group: "X25519".into(),
            }),
            resumption: false,
        }),
        handshake_only,
    }
}

#[test]
fn tls_fields() {
    let r = tls_report(false);
    // Four handshakes but no message: a message run that failed.
    assert_eq!(r.status(), Status::Errors);
    let j: Value = serde_json::from_str(&r.json()).unwrap();
    assert_eq!(j["tls"]["mode"], "starttls");
    assert_eq!(j["tls"]["version"], "TLSv1_3");
    assert_eq!(j["tls"]["cipher"], "TLS13_AES_256_GCM_SHA384");
    assert_eq!(j["tls_handshake_us"]["p50"].as_u64().unwrap() / 100, 20);
    assert_eq!(j["tls_handshake_us"]["max"].as_u64().unwrap() / 100, 40);
    assert_eq!(j["handshakes_ok"], 4);
    assert_eq!(j["handshakes_per_s"], 2.0);
    assert_eq!(j["handshake_only"], false);
    let line = r.summary();
    assert!(line.starts_with("errors: 0/4 msgs in 2.000s"), "{line}");
    assert!(line.contains("| 4 handshakes = 2.0/s |"), "{line}");
    assert!(line.ends_with("tls=starttls TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519"));

    let r = tls_report(true);
    assert_eq!(r.status(), Status::Ok);
    let line = r.summary();
    assert!(
        line.starts_with("ok: 4/4 handshakes in 2.000s = 2.0 handshakes/s"),
        "{line}"
    );
    assert!(
        line.contains("TLS handshake ms p50 2.000 p99 4.001"),
        "{line}"
    );
    let j: Value = serde_json::from_str(&r.json()).unwrap();
    assert_eq!(j["handshake_only"], true);
    assert_eq!(j["status"], "ok");
}
