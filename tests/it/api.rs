//! The control plane's API security, from outside: tokens, the admin
//! credential apart from the webhook's, per-client rate limits with their
//! headers, security headers, request ids and the body read timeout.

use std::io::{Read, Write};
use std::time::Duration;

use super::harness::{
    http_with, metric, metric_where, queued, require_tool, wait_until, Client, Gomail,
};

const ADMIN: &str = "admin-secret-7f3a";

/// Every management endpoint, as (method, path, body).
const MANAGEMENT: [(&str, &str, &str); 4] = [
    ("GET", "/api/v1/bans", ""),
    ("POST", "/api/v1/bans", r#"{"ip":"192.0.2.1"}"#),
    ("DELETE", "/api/v1/bans/192.0.2.1", ""),
    ("POST", "/queue/retry", r#"{"all":true}"#),
];

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn management_endpoints_take_only_the_admin_token() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("gomail.log");
    let g = Gomail::start(&format!(
        "admin_token: {ADMIN}\nbearer_token: webhook-cred-9\nrate_limit_per_minute: 0\n\
         log_level: info\nlog_format: json\nlog_file: \"{}\"\n",
        log.display()
    ));
    for (method, path, body) in MANAGEMENT {
        let refused = [
            (vec![], "missing_token"),
            (
                vec![("Authorization", "Bearer wrong".to_string())],
                "invalid_token",
            ),
            // The webhook receiver's credential manages nothing.
            (
                vec![("Authorization", "Bearer webhook-cred-9".to_string())],
                "invalid_token",
            ),
            (vec![("Authorization", ADMIN.to_string())], "missing_token"),
        ];
        for (headers, reason) in refused {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (status, resp, text) = http_with(g.api, method, path, &h, body);
            assert_eq!(status, 401, "{method} {path} {headers:?}: {text}");
            let v = json(&text);
            assert_eq!(v["error"], "unauthorized");
            assert_eq!(v["details"]["reason"], reason);
            assert_eq!(v["request_id"], resp["x-request-id"].as_str());
        }
        // The scheme is case-insensitive (RFC 7235).
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let auth = format!("{scheme} {ADMIN}");
            let (status, _, text) =
                http_with(g.api, method, path, &[("Authorization", &auth)], body);
            assert!(
                (200..300).contains(&status) || status == 404,
                "{method} {path} with {scheme}: {status} {text}"
            );
        }
    }
    wait_until(Duration::from_secs(5), "audit events in the log", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("authentication_succeeded")
    });
    let text = std::fs::read_to_string(&log).unwrap();
    // GoMail's audit shape: level, time, event, ip, request_id at the top,
    // the rest under details.
    let line: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "authentication_failed")
        .expect("an authentication_failed line");
    assert_eq!(line["level"], "warn");
    assert!(line["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(line["ip"], "127.0.0.1");
    assert_eq!(line["request_id"].as_str().unwrap().len(), 36);
    assert!(line["details"]["endpoint"].is_string());
    let failed = super::harness::log_events(&log, "authentication_failed");
    assert_eq!(failed.len(), 16, "four refusals on each of four endpoints");
    assert!(failed
        .iter()
        .any(|v| v["reason"] == "missing_token" && v["endpoint"] == "/queue/retry"));
    assert!(failed.iter().all(|v| v["ip"] == "127.0.0.1"));
    assert!(!text.contains(ADMIN), "the admin token is never logged");
    assert!(
        !text.contains("webhook-cred-9"),
        "the webhook token is never logged"
    );
}

#[test]
fn without_an_admin_token_the_management_api_is_closed() {
    let g = Gomail::start("bearer_token: webhook-cred-9\n");
    for (method, path, body) in MANAGEMENT {
        let (status, _, text) = http_with(
            g.api,
            method,
            path,
            &[("Authorization", "Bearer webhook-cred-9")],
            body,
        );
        assert_eq!(status, 403, "{method} {path}: {text}");
        assert_eq!(json(&text)["error"], "forbidden");
    }
    // The same token for both is refused at start-up.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("g.yaml");
    std::fs::write(&cfg, "bearer_token: same\nadmin_token: same\n").unwrap();
    let (ok, _, err) =
        super::cli::gomail(&["config", "validate", "--config", cfg.to_str().unwrap()]);
    assert!(
        !ok && err.contains("admin_token") && err.contains("must differ"),
        "{err}"
    );
    assert!(!err.contains("same"), "the value is not shown: {err}");
}

#[test]
fn a_burst_gets_429_with_the_headers_and_the_bucket_refills() {
    let g = Gomail::start(&format!(
        "admin_token: {ADMIN}\nrate_limit_per_minute: 60\nrate_limit_burst: 3\n"
    ));
    let auth = format!("Bearer {ADMIN}");
    let get = |extra: &[(&str, &str)]| {
        let mut h = vec![("Authorization", auth.as_str())];
        h.extend_from_slice(extra);
        http_with(g.api, "GET", "/api/v1/bans", &h, "")
    };
    for left in [2, 1, 0] {
        let (status, h, _) = get(&[]);
        assert_eq!(status, 200);
        assert_eq!(h["x-ratelimit-limit"], "60");
        assert_eq!(h["x-ratelimit-remaining"], left.to_string());
        let reset: i64 = h["x-ratelimit-reset"].parse().unwrap();
        assert!(reset >= chrono::Utc::now().timestamp());
    }
    // A spoofed X-Forwarded-For from a peer that is not a trusted proxy
    // does not give another bucket.
    let (status, h, text) = get(&[("X-Forwarded-For", "198.51.100.7")]);
    assert_eq!(status, 429, "{text}");
    let v = json(&text);
    assert_eq!(v["error"], "rate_limited");
    assert_eq!(v["details"]["retry_after"], 1);
    assert_eq!(h["retry-after"], "1");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert_eq!(
        h["x-content-type-options"], "nosniff",
        "security headers on a 429"
    );
    // Health checks and scrapes take nothing and are never refused.
    assert_eq!(http_with(g.api, "GET", "/health", &[], "").0, 200);
    // One token a second comes back.
    wait_until(Duration::from_secs(5), "the bucket to refill", || {
        get(&[]).0 == 200
    });
}

#[test]
fn a_405_says_which_methods_are_allowed() {
    let g = Gomail::start(&format!("admin_token: {ADMIN}\n"));
    let auth = format!("Bearer {ADMIN}");
    let (status, h, _) = http_with(
        g.api,
        "GET",
        "/mail/inbound",
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!((status, h["allow"].as_str()), (405, "POST"));
    let (status, h, _) = http_with(
        g.api,
        "PATCH",
        "/api/v1/bans",
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!((status, h["allow"].as_str()), (405, "GET, POST"));
}

#[test]
fn forwarded_for_is_believed_from_trusted_proxies_only() {
    let g = Gomail::start(&format!(
        "admin_token: {ADMIN}\nrate_limit_per_minute: 60\nrate_limit_burst: 1\ntrusted_proxies: [\"127.0.0.1\"]\n"
    ));
    let auth = format!("Bearer {ADMIN}");
    // Behind the trusted proxy each client has its own bucket.
    for client in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        let h = [
            ("Authorization", auth.as_str()),
            ("X-Forwarded-For", client),
        ];
        assert_eq!(
            http_with(g.api, "GET", "/api/v1/bans", &h, "").0,
            200,
            "{client}"
        );
    }
    let h = [
        ("Authorization", auth.as_str()),
        ("X-Forwarded-For", "198.51.100.1"),
    ];
    assert_eq!(http_with(g.api, "GET", "/api/v1/bans", &h, "").0, 429);
}

#[test]
fn every_answer_has_the_security_headers_and_a_request_id() {
    let g = Gomail::start(&format!(
        "admin_token: {ADMIN}\nrate_limit_per_minute: 60\nrate_limit_burst: 2\n"
    ));
    let answers = [
        http_with(g.api, "GET", "/health", &[], ""),
        http_with(
            g.api,
            "GET",
            "/api/v1/bans",
            &[("X-Request-ID", "trace-abc.123")],
            "",
        ),
        http_with(g.api, "GET", "/nope", &[], ""),
        http_with(
            g.api,
            "GET",
            "/api/v1/bans",
            &[("X-Request-ID", "bad id with spaces")],
            "",
        ),
    ];
    let codes: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(codes, [200, 401, 404, 429]);
    for (status, h, body) in &answers {
        assert_eq!(h["x-content-type-options"], "nosniff", "{status}");
        assert_eq!(h["x-frame-options"], "DENY", "{status}");
        assert_eq!(h["x-xss-protection"], "1; mode=block", "{status}");
        assert_eq!(
            h["strict-transport-security"], "max-age=31536000; includeSubDomains",
            "{status}"
        );
        assert_eq!(
            h["content-security-policy"], "default-src 'none'",
            "{status}"
        );
        if *status >= 400 {
            assert_eq!(
                json(body)["request_id"],
                h["x-request-id"].as_str(),
                "{status}"
            );
        }
    }
    assert_eq!(
        answers[1].1["x-request-id"], "trace-abc.123",
        "a sane id is echoed"
    );
    let made = &answers[3].1["x-request-id"];
    assert_eq!(made.len(), 36, "an insane id is replaced by a UUID: {made}");
}

#[test]
fn a_slow_body_is_cut_at_the_read_timeout() {
    let g = Gomail::start(&format!(
        "admin_token: {ADMIN}\nhttp_timeouts:\n  read: 1s\n"
    ));
    let mut s = std::net::TcpStream::connect(g.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let t0 = std::time::Instant::now();
    write!(
        s,
        "POST /api/v1/bans HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: 40\r\n\r\n{{\"ip\":"
    )
    .unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw}");
    assert!(raw.contains("\"error\":\"timeout\""), "{raw}");
    assert!(t0.elapsed() >= Duration::from_millis(900));
}

#[test]
fn the_scrape_has_gomail_names_and_passes_promtool() {
    let promtool = require_tool("promtool");
    let g = Gomail::start(&format!("admin_token: {ADMIN}\n"));
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO c");
    queued(&c.mail("a@example.org", &["r@example.test"], "Subject: m\r\n\r\nhi"));
    assert_eq!(http_with(g.api, "GET", "/api/v1/bans", &[], "").0, 401);
    assert_eq!(
        http_with(g.api, "DELETE", "/api/v1/bans/192.0.2.9", &[], "").0,
        401
    );
    assert_eq!(http_with(g.api, "GET", "/nope", &[], "").0, 404);
    wait_until(Duration::from_secs(5), "the message counted", || {
        metric(&g, "gomail_emails_received_total") == 1.0
    });
    assert_eq!(metric_where(&g, "gomail_auth_failures_total", ""), 2.0);
    assert_eq!(
        metric_where(
            &g,
            "gomail_http_requests_total",
            "method=\"GET\",endpoint=\"/api/v1/bans\",status=\"401\""
        ),
        1.0
    );
    // The ban's address is not a label: one series for the route.
    assert_eq!(
        metric_where(
            &g,
            "gomail_http_requests_total",
            "endpoint=\"/api/v1/bans/{ip}\""
        ),
        1.0
    );
    let (_, _, scrape) = http_with(g.api, "GET", "/metrics", &[], "");
    assert!(scrape.contains("gomail_http_request_duration_seconds_bucket{le=\"21600\"}"));
    for name in [
        "gomail_spf_pass_total",
        "gomail_dkim_none_total",
        "gomail_dmarc_fail_total",
    ] {
        assert!(scrape.contains(&format!("# TYPE {name} counter")), "{name}");
    }
    // The self-signed fallback's expiry and the ACME counters (issue 13).
    assert!(scrape.contains("# TYPE gomail_tls_certificate_expiry_seconds gauge"));
    assert!(scrape.contains("gomail_acme_renewals_total{result=\"failure\"} 0"));
    let mut check = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `POST /mail/inbound` with a token; (status, JSON answer).
fn inject(g: &Gomail, token: &str, body: &str) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {token}");
    let (status, _, text) = http_with(
        g.api,
        "POST",
        "/mail/inbound",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body,
    );
    (status, json(&text))
}

#[test]
fn mail_injected_through_the_api_is_spooled_stored_and_delivered() {
    use super::webhook_receiver::{receiver, Mode};
    let rx = receiver(Mode::Fixed(200));
    let g = Gomail::start(&rx.config(&format!(
        "admin_token: {ADMIN}\nmax_message_size: 4096\nstore_mode: always\n"
    )));
    let body = serde_json::json!({
        "sender": "alice@example.org",
        "recipient": "bob@example.test",
        "raw": "From: alice@example.org\nTo: bob@example.test\nSubject: injected\n\nhello from the API\n",
    });
    // GoMail's API token is the webhook's bearer_token; it may inject.
    let auth = "Bearer tok-123".to_string();
    let (status, _, text) = http_with(
        g.api,
        "POST",
        "/mail/inbound",
        &[
            ("Authorization", &auth),
            ("X-Request-ID", "inbound-trace-1"),
        ],
        &body.to_string(),
    );
    let v = json(&text);
    assert_eq!(v["request_id"], "inbound-trace-1");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "success");
    assert!(v["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    let id = v["queue_id"].as_str().unwrap().to_string();
    rx.wait_delivered(std::slice::from_ref(&id));
    let posted = rx.log().into_iter().find(|r| r.id == id).unwrap();
    assert_eq!(posted.body["subject"], "injected");
    assert_eq!(posted.body["sender"], "alice@example.org");
    // The request id reaches the receiver, for tracing a message end to end.
    assert_eq!(posted.body["metadata"]["request_id"], v["request_id"]);
    let stored = super::harness::wait_stored(&g.data_dir, 1);
    assert_eq!(stored[0].0, id);
    assert_eq!(stored[0].1["recipient"], "bob@example.test");
    assert!(stored[0].1["raw"]
        .as_str()
        .unwrap()
        .contains("hello from the API\r\n"));

    // A foreign recipient, a message over max_message_size, bad JSON.
    let mut foreign = body.clone();
    foreign["recipient"] = "x@elsewhere.example".into();
    let (status, v) = inject(&g, ADMIN, &foreign.to_string());
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("validation_error")),
        "{v}"
    );
    assert_eq!(v["details"]["field"], "recipient");
    let mut big = body.clone();
    big["raw"] = format!("Subject: big\n\n{}\n", "x".repeat(5000)).into();
    let (status, v) = inject(&g, ADMIN, &big.to_string());
    assert_eq!(
        (status, v["error"].as_str()),
        (413, Some("payload_too_large")),
        "{v}"
    );
    let (status, v) = inject(&g, ADMIN, "{\"sender\": \"a@b\",\n \"raw\": }");
    assert_eq!(status, 400);
    assert!(v["message"].as_str().unwrap().contains("line 2"), "{v}");
    // A sender with a line break or a space is refused, not stored.
    for bad in ["a@exa\r\nmple.org", "a b@c d"] {
        let mut b = body.clone();
        b["sender"] = bad.into();
        let (status, v) = inject(&g, ADMIN, &b.to_string());
        assert_eq!(
            (status, v["details"]["field"].as_str()),
            (400, Some("sender")),
            "{bad:?}: {v}"
        );
    }
    // A declared body over the limit is refused at once, not read.
    let mut s = std::net::TcpStream::connect(g.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "POST /mail/inbound HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: 99999999999\r\n\r\n{{").unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    // Without a token: 401.
    let (status, _, _) = http_with(g.api, "POST", "/mail/inbound", &[], &body.to_string());
    assert_eq!(status, 401);
}

#[test]
fn the_certificate_api_refuses_fields_of_the_wrong_type() {
    // "force": "yes" must not start a renewal that happens only if due.
    let g = Gomail::start(&format!("admin_token: {ADMIN}\n"));
    let auth = format!("Bearer {ADMIN}");
    let headers = [("Authorization", auth.as_str())];
    let (status, _, body) = http_with(g.api, "GET", "/api/v1/ssl?wait=abc", &headers, "");
    assert_eq!(status, 400, "{body}");
    let v = json(&body);
    assert_eq!(v["error"], "validation_error");
    assert_eq!(v["details"]["field"], "wait");
    for (field, body) in [
        ("force", r#"{"force":"yes"}"#),
        ("agree_tos", r#"{"email":"a@example.test","agree_tos":1}"#),
        ("email", r#"{"email":7}"#),
    ] {
        let (status, _, answer) = http_with(g.api, "POST", "/api/v1/ssl/renew", &headers, body);
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(json(&answer)["details"]["field"], field, "{answer}");
    }
}
