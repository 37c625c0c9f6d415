//! Abuse controls on the SMTP port, from outside: per-client and total
//! limits across shards, rates, automatic and manual bans, pregreet,
//! write and session timeouts, contained panics. Clients connect from
//! many loopback addresses (127.0.0.0/8), with `trusted_networks: []` so
//! that the limits apply to them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::harness::{
    api_port, gomail_cli, greet_from, metric, metric_where, queued, wait_until, Client, Gomail,
};

/// Limits on, nothing trusted, no automatic bans (tests that want them set
/// `ban_threshold`).
const UNTRUSTED: &str = "trusted_networks: []\nsmtp_connection_rate_limit: 0\nsmtp_message_rate_limit: 0\nsmtp_recipient_rate_limit: 0\nban_threshold: 0\n";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn v4(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

/// Sends a command line on a connection opened by [`greet_from`].
fn say(r: &mut BufReader<TcpStream>, line: &str) -> String {
    r.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .unwrap();
    let mut reply = String::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap() == 0 {
            return reply;
        }
        reply.push_str(&l);
        if l.as_bytes().get(3) != Some(&b'-') {
            return reply;
        }
    }
}

/// True once the server has closed the connection.
fn closed(r: &mut BufReader<TcpStream>) -> bool {
    let mut rest = Vec::new();
    match r.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn per_ip_limit_is_exact_across_four_shards() {
    let g = Gomail::start(&format!(
        "shards: 4\nmax_connections_per_ip: 10\n{UNTRUSTED}"
    ));
    let client = v4(0, 0, 2);
    for round in 0..3 {
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..30 {
            let (r, line) = greet_from(g.addr, client);
            if line.starts_with("220 ") {
                held.push(r);
            } else {
                assert_eq!(line, "421 4.7.0 Too many connections from 127.0.0.2\r\n");
                refused += 1;
            }
        }
        assert_eq!((held.len(), refused), (10, 20), "round {round}");
        // Another client is served meanwhile, and the 10 go on undisturbed.
        let mut other = Client::connect_from(g.addr, Some(v4(0, 0, 3)));
        assert!(other.cmd("EHLO other").starts_with("250"));
        for r in &mut held {
            assert!(say(r, "NOOP").starts_with("250 "));
        }
        for mut r in held {
            assert_eq!(say(&mut r, "QUIT"), "221 2.0.0 Bye\r\n");
        }
        drop(other);
        wait_until(Duration::from_secs(10), "connections closed", || {
            metric(&g, "gomail_connections_active") == 0.0
        });
    }
    assert_eq!(
        metric_where(&g, "gomail_connections_refused_total", "reason=\"per_ip\""),
        60.0
    );
}

#[test]
fn the_total_limit_holds_over_all_shards() {
    let g = Gomail::start(&format!(
        "shards: 4\nmax_total_connections: 5\nmax_connections_per_ip: 0\n{UNTRUSTED}"
    ));
    let mut served = Vec::new();
    let mut refused = 0;
    // Twelve clients: steered to all four shards.
    for i in 0..12 {
        let (r, line) = greet_from(g.addr, v4(0, 1, 10 + i));
        if line.starts_with("220 ") {
            served.push(r);
        } else {
            assert_eq!(
                line,
                "421 4.3.2 Error: too many connections, try again later\r\n"
            );
            refused += 1;
        }
    }
    assert_eq!((served.len(), refused), (5, 7));
    assert_eq!(
        metric_where(&g, "gomail_connections_refused_total", "reason=\"total\""),
        7.0
    );
    drop(served);
    wait_until(Duration::from_secs(10), "places released", || {
        metric(&g, "gomail_connections_active") == 0.0
    });
    assert!(greet_from(g.addr, v4(0, 1, 99)).1.starts_with("220 "));
}

#[test]
fn each_rate_limit_triggers_at_its_threshold_and_clears_after_the_window() {
    let g = Gomail::start(
        "trusted_networks: []\nban_threshold: 0\nsmtp_rate_window: 2s\n\
         smtp_connection_rate_limit: 3\nsmtp_message_rate_limit: 2\nsmtp_recipient_rate_limit: 3\n",
    );
    // Connections: 3 in the window, the 4th refused at connect.
    let client = v4(0, 2, 1);
    for _ in 0..3 {
        let (mut r, line) = greet_from(g.addr, client);
        assert!(line.starts_with("220 "), "{line}");
        say(&mut r, "QUIT");
    }
    let (_, line) = greet_from(g.addr, client);
    assert_eq!(
        line,
        "421 4.7.0 Error: too many connections from 127.0.2.1, try again later\r\n"
    );
    // Messages and recipients, from another client.
    let mut c = Client::connect_from(g.addr, Some(v4(0, 2, 2)));
    c.cmd("EHLO c");
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    for n in 1..=3 {
        let r = c.cmd(&format!("RCPT TO:<r{n}@example.test>"));
        assert!(r.starts_with("250"), "{r}");
    }
    assert_eq!(
        c.cmd("RCPT TO:<r4@example.test>"),
        "450 4.7.1 Error: too many recipients from 127.0.2.2, try again later\r\n"
    );
    c.cmd("RSET");
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    c.cmd("RSET");
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.org>"),
        "450 4.7.1 Error: too much mail from 127.0.2.2, try again later\r\n"
    );
    assert_eq!(
        metric_where(&g, "gomail_rate_limited_total", "limit=\"message\""),
        1.0
    );
    assert_eq!(
        metric_where(&g, "gomail_rate_limited_total", "limit=\"recipient\""),
        1.0
    );
    assert_eq!(
        metric_where(&g, "gomail_rate_limited_total", "limit=\"connection\""),
        1.0
    );
    // One whole window later, every allowance is back.
    std::thread::sleep(Duration::from_millis(2100));
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    for n in 1..=3 {
        assert!(c
            .cmd(&format!("RCPT TO:<s{n}@example.test>"))
            .starts_with("250"));
    }
    for _ in 0..3 {
        assert!(greet_from(g.addr, client).1.starts_with("220 "));
    }
}

#[test]
fn a_flood_of_relay_attempts_bans_the_client_on_every_listener() {
    let g = Gomail::start(
        "trusted_networks: []\nban_threshold: 5\nban_window: 10m\nban_duration: 1h\nshards: 4\n",
    );
    let client = v4(0, 3, 1);
    let mut c = Client::connect_from(g.addr, Some(client));
    c.cmd("EHLO spammer");
    c.cmd("MAIL FROM:<a@example.org>");
    for n in 0..5 {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<victim{n}@elsewhere.example>")),
            "550 5.7.1 Error: relay access denied\r\n"
        );
    }
    wait_until(Duration::from_secs(5), "the automatic ban", || {
        metric_where(&g, "gomail_bans_total", "source=\"auto\"") == 1.0
    });
    for _ in 0..4 {
        let (mut r, line) = greet_from(g.addr, client);
        assert_eq!(line, "554 5.7.1 127.0.3.1 is banned\r\n");
        // RFC 5321 section 3.1: 503 to anything but QUIT, no message read.
        assert_eq!(
            say(&mut r, "EHLO spammer"),
            "503 5.5.1 Error: this session is refused; send QUIT\r\n"
        );
        assert_eq!(
            say(&mut r, "MAIL FROM:<a@example.org>"),
            "503 5.5.1 Error: this session is refused; send QUIT\r\n"
        );
        assert_eq!(say(&mut r, "QUIT"), "221 2.0.0 Bye\r\n");
        assert!(closed(&mut r));
    }
    assert_eq!(metric_where(&g, "gomail_bans_active", ""), 1.0);
    assert_eq!(
        metric_where(&g, "gomail_violations_total", "kind=\"relay\""),
        5.0
    );
    assert_eq!(
        metric_where(&g, "gomail_connections_refused_total", "reason=\"banned\""),
        4.0
    );
    // Its neighbour is not banned.
    assert!(greet_from(g.addr, v4(0, 3, 2)).1.starts_with("220 "));
}

#[test]
fn manual_bans_apply_at_once_on_every_shard_expire_and_survive_a_restart() {
    let port = api_port();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let extra = format!("port: {port}\nadmin_token: test-admin-token\nshards: 4\n{UNTRUSTED}");
    let mut g = Gomail::start_on(&data, &extra);
    // Eight addresses of one /24, steered to all four shards.
    let block: Vec<IpAddr> = (1..=8).map(|i| v4(0, 4, i)).collect();
    let shards: std::collections::BTreeSet<usize> = block
        .iter()
        .map(|a| shards::steer::shard_for(*a, 4))
        .collect();
    assert_eq!(shards.len(), 4, "the block covers every shard");
    let (ok, out, err) = gomail_cli(
        &g,
        &[
            "security",
            "ban",
            "127.0.4.0/24",
            "--duration",
            "1h",
            "--reason",
            "spam run",
        ],
    );
    assert!(ok, "{out}{err}");
    let t0 = Instant::now();
    // The very first connection after the command returns is refused, on
    // every shard: the ban was published before the API answered.
    for a in &block {
        let (_, line) = greet_from(g.addr, *a);
        assert_eq!(line, format!("554 5.7.1 {a} is banned\r\n"));
    }
    eprintln!(
        "manual ban: 8 connections over 4 shards refused within {:?} of the CLI returning",
        t0.elapsed()
    );
    assert!(greet_from(g.addr, v4(0, 5, 1)).1.starts_with("220 "));
    let (ok, out, _) = gomail_cli(&g, &["security", "banned-ips"]);
    assert!(ok);
    assert!(
        out.contains("127.0.4.0/24") && out.contains("manual") && out.contains("spam run"),
        "{out}"
    );
    let (ok, out, _) = gomail_cli(&g, &["security", "banned-ips", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["bans"][0]["ip"], "127.0.4.0/24");
    assert_eq!(v["bans"][0]["source"], "manual");
    assert!(v["bans"][0]["expires"].as_str().unwrap().ends_with('Z'));

    // Bans are kept in data_dir: after a restart the block is still refused.
    assert!(g.terminate().success());
    let mut g = Gomail::start_on(&data, &extra);
    assert_eq!(
        greet_from(g.addr, block[0]).1,
        "554 5.7.1 127.0.4.1 is banned\r\n"
    );

    // Unban restores service.
    let (ok, out, err) = gomail_cli(&g, &["security", "unban", "127.0.4.0/24"]);
    assert!(ok, "{out}{err}");
    assert!(greet_from(g.addr, block[0]).1.starts_with("220 "));
    let (ok, _, err) = gomail_cli(&g, &["security", "unban", "127.0.4.0/24"]);
    assert!(!ok && err.contains("not banned"), "{err}");

    // A short ban expires by itself.
    let (ok, _, err) = gomail_cli(&g, &["security", "ban", "127.0.6.1", "--duration", "1s"]);
    assert!(ok, "{err}");
    assert!(greet_from(g.addr, v4(0, 6, 1)).1.starts_with("554 "));
    wait_until(Duration::from_secs(5), "the ban to expire", || {
        greet_from(g.addr, v4(0, 6, 1)).1.starts_with("220 ")
    });
    wait_until(
        Duration::from_secs(5),
        "the expiry to reach the ban list",
        || metric_where(&g, "gomail_bans_active", "") == 0.0,
    );
    assert_eq!(
        metric_where(&g, "gomail_bans_total", "source=\"manual\""),
        1.0
    );
    assert!(g.terminate().success());
}

#[test]
fn bad_ban_requests_get_clear_errors() {
    let port = api_port();
    let g = Gomail::start(&format!("port: {port}\nadmin_token: tok\n"));
    let (ok, _, err) = gomail_cli(&g, &["security", "ban", "not-an-ip"]);
    assert!(!ok && err.contains("not an IP address"), "{err}");
    let (ok, _, err) = gomail_cli(&g, &["security", "ban", "192.0.2.1", "--duration", "soon"]);
    assert!(!ok && err.contains("duration"), "{err}");
    // The default trusted_networks hold loopback: never banned.
    let (ok, _, err) = gomail_cli(&g, &["security", "ban", "127.0.0.1"]);
    assert!(!ok && err.contains("trusted_networks"), "{err}");
    // Without the token: 401, in GoMail's error shape.
    let mut s = TcpStream::connect(g.api).unwrap();
    write!(
        s,
        "GET /api/v1/bans HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    assert!(raw.contains("\"error\":\"unauthorized\""), "{raw}");
}

#[test]
fn trusted_clients_are_never_limited() {
    let g = Gomail::start(
        "trusted_networks: [\"127.0.7.0/24\"]\nmax_connections_per_ip: 2\nsmtp_connection_rate_limit: 2\n\
         smtp_message_rate_limit: 1\nban_threshold: 1\n",
    );
    let trusted = v4(0, 7, 1);
    let held: Vec<_> = (0..6)
        .map(|_| {
            let (r, line) = greet_from(g.addr, trusted);
            assert!(line.starts_with("220 "), "{line}");
            r
        })
        .collect();
    let mut c = Client::connect_from(g.addr, Some(trusted));
    c.cmd("EHLO relay");
    for _ in 0..3 {
        queued(&c.mail("a@example.org", &["r@example.test"], "Subject: t\r\n\r\nhi"));
    }
    // Relay attempts from a trusted client are refused, never counted.
    c.cmd("MAIL FROM:<a@example.org>");
    assert!(c.cmd("RCPT TO:<x@elsewhere.example>").starts_with("550"));
    drop(held);
    assert!(greet_from(g.addr, trusted).1.starts_with("220 "));
    assert_eq!(metric(&g, "gomail_violations_total"), 0.0);
    // The same limits apply to a client outside the block.
    let outsider = v4(0, 8, 1);
    let _a = greet_from(g.addr, outsider);
    let _b = greet_from(g.addr, outsider);
    assert!(greet_from(g.addr, outsider).1.starts_with("421 4.7.0"));
}

#[test]
fn a_pregreet_client_is_refused_and_a_patient_one_served() {
    let g = Gomail::start(&format!("pregreet_wait: 1s\n{UNTRUSTED}"));
    // Talks at once, as spam engines do.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(v4(0, 9, 1), 0).into()).unwrap();
    sock.connect(&g.addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"EHLO impatient\r\nMAIL FROM:<a@example.org>\r\n")
        .unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(
        got,
        "554 5.5.1 Error: 127.0.9.1 sent data before the greeting\r\n"
    );
    // Waits for the greeting, which comes after pregreet_wait.
    let t0 = Instant::now();
    let mut c = Client::connect_from(g.addr, Some(v4(0, 9, 2)));
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    c.cmd("EHLO patient");
    queued(&c.mail("a@example.org", &["r@example.test"], "Subject: t\r\n\r\nhi"));
    assert_eq!(
        metric_where(&g, "gomail_violations_total", "kind=\"pregreet\""),
        1.0
    );
    assert_eq!(
        metric_where(
            &g,
            "gomail_connections_refused_total",
            "reason=\"pregreet\""
        ),
        1.0
    );
}

#[test]
fn a_client_that_never_reads_is_closed_after_the_write_timeout() {
    let g = Gomail::start(&format!("smtp_write_timeout: 2s\n{UNTRUSTED}"));
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // A small receive window, so that the server's replies back up soon.
    sock.set_recv_buffer_size(4096).unwrap();
    sock.bind(&SocketAddr::new(v4(0, 10, 1), 0).into()).unwrap();
    sock.connect(&g.addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    // Pipeline NOOPs and never read, until our own writes stall: the
    // server has stopped reading because its replies are not taken.
    let noops = b"NOOP\r\n".repeat(1000);
    let t0 = Instant::now();
    let stalled = loop {
        match s.write(&noops) {
            Ok(_) => assert!(
                t0.elapsed() < Duration::from_secs(20),
                "writes never stalled"
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break Instant::now()
            }
            Err(e) => panic!("{e}"),
        }
    };
    // Meanwhile a fresh client is greeted at once.
    let t1 = Instant::now();
    let mut fresh = Client::connect_from(g.addr, Some(v4(0, 10, 2)));
    eprintln!("fresh client's 220 after {:?}", t1.elapsed());
    assert!(fresh.cmd("NOOP").starts_with("250"));
    wait_until(Duration::from_secs(20), "the write timeout", || {
        metric(&g, "gomail_smtp_write_timeouts_total") == 1.0
    });
    assert!(stalled.elapsed() >= Duration::from_secs(1));
    // The connection is gone: the server's side is closed.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    assert!(fresh.cmd("NOOP").starts_with("250"));
}

#[test]
fn a_session_that_keeps_sending_noop_ends_at_the_session_timeout() {
    let g = Gomail::start(&format!("smtp_session_timeout: 2s\n{UNTRUSTED}"));
    let t0 = Instant::now();
    let mut c = Client::connect_from(g.addr, Some(v4(0, 11, 1)));
    let last = loop {
        let r = c.cmd("NOOP");
        if !r.starts_with("250") {
            break r;
        }
        assert!(t0.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        last,
        "421 4.4.2 Error: session time limit exceeded, closing connection\r\n"
    );
    assert!(t0.elapsed() >= Duration::from_secs(2));
    assert!(c.closed());
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_panicking_connection_leaves_the_others_on_its_shard_served() {
    // One shard: the panicking connection and the others share it.
    let g = Gomail::start("shards: 1\n");
    let mut a = Client::connect(g.addr);
    a.cmd("EHLO a");
    assert!(a.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    let mut bad = Client::connect(g.addr);
    bad.send(b"XFAULT PANIC\r\n");
    assert!(bad.closed(), "the panicking connection is dropped");
    wait_until(Duration::from_secs(5), "the panic to be counted", || {
        metric(&g, "gomail_connection_panics_total") == 1.0
    });
    // The open session goes on, and new ones are served.
    assert!(a.cmd("RCPT TO:<r@example.test>").starts_with("250"));
    assert!(a.cmd("DATA").starts_with("354"));
    a.send(b"Subject: still here\r\n\r\nhi\r\n.\r\n");
    queued(&a.reply());
    let mut b = Client::connect(g.addr);
    b.cmd("EHLO b");
    queued(&b.mail(
        "b@example.org",
        &["r@example.test"],
        "Subject: after\r\n\r\nhi",
    ));
}

#[cfg(not(feature = "fault-injection"))]
#[test]
fn a_panicking_connection_leaves_the_others_on_its_shard_served() {
    panic!(
        "this test needs the binary's test-only fault injection: run scripts/test.sh \
         (cargo test --workspace --features fault-injection)"
    );
}

#[test]
fn ipv4_refusals_name_the_client() {
    // The key of an IPv4 client is the address itself: its neighbour in
    // the same /24 has its own count.
    let g = Gomail::start(&format!("max_connections_per_ip: 1\n{UNTRUSTED}"));
    let (_a, line) = greet_from(g.addr, ip("127.0.12.1"));
    assert!(line.starts_with("220 "));
    assert!(greet_from(g.addr, ip("127.0.12.2")).1.starts_with("220 "));
    assert_eq!(
        greet_from(g.addr, ip("127.0.12.1")).1,
        "421 4.7.0 Too many connections from 127.0.12.1\r\n"
    );
}

/// The log lines (JSON) whose `event` field is `event`, flattened.
fn events(log: &std::path::Path, event: &str) -> Vec<serde_json::Value> {
    super::harness::log_events(log, event)
}

#[test]
fn bans_unbans_expiries_and_limit_hits_are_logged_as_named_events() {
    let port = api_port();
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("gomail.log");
    let g = Gomail::start(&format!(
        "port: {port}\nadmin_token: secret-admin-token\nlog_level: info\nlog_format: json\n\
         log_file: \"{}\"\ntrusted_networks: []\nmax_connections_per_ip: 1\n\
         smtp_message_rate_limit: 1\nban_threshold: 3\n",
        log.display()
    ));
    // A limit hit: the second connection of one client.
    let _first = greet_from(g.addr, v4(0, 13, 1));
    assert!(greet_from(g.addr, v4(0, 13, 1)).1.starts_with("421 "));
    // A rate hit: the second MAIL.
    let mut c = Client::connect_from(g.addr, Some(v4(0, 13, 2)));
    c.cmd("EHLO c");
    c.cmd("MAIL FROM:<a@example.org>");
    c.cmd("RSET");
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("450 "));
    // Three relay attempts: an automatic ban.
    let mut c = Client::connect_from(g.addr, Some(v4(0, 13, 3)));
    c.cmd("EHLO c");
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    for _ in 0..3 {
        assert!(c.cmd("RCPT TO:<x@elsewhere.example>").starts_with("550"));
    }
    // A manual ban, lifted; another that expires.
    assert!(gomail_cli(&g, &["security", "ban", "127.0.13.9", "--reason", "probe"]).0);
    assert!(gomail_cli(&g, &["security", "unban", "127.0.13.9"]).0);
    assert!(gomail_cli(&g, &["security", "ban", "127.0.13.8", "--duration", "1s"]).0);
    wait_until(Duration::from_secs(10), "ban_expired in the log", || {
        !events(&log, "ban_expired").is_empty()
    });
    let limit = &events(&log, "connection_limit_exceeded")[0];
    assert_eq!(
        (&limit["ip"], &limit["reason"], &limit["count"]),
        (
            &serde_json::json!("127.0.13.1"),
            &serde_json::json!("per_ip"),
            &serde_json::json!(1)
        )
    );
    assert!(limit["shard"].is_u64());
    let rate = &events(&log, "rate_limit_exceeded")[0];
    assert_eq!(
        (&rate["ip"], &rate["reason"]),
        (
            &serde_json::json!("127.0.13.2"),
            &serde_json::json!("message")
        )
    );
    wait_until(
        Duration::from_secs(5),
        "the automatic ban in the log",
        || {
            events(&log, "ip_banned")
                .iter()
                .any(|v| v["source"] == "auto")
        },
    );
    let banned = events(&log, "ip_banned");
    let auto = banned
        .iter()
        .find(|f| f["source"] == "auto")
        .expect("the automatic ban is logged");
    assert_eq!(auto["ip"], "127.0.13.3");
    assert_eq!(auto["count"], 3);
    assert!(auto["shard"].is_u64() && auto["reason"].as_str().unwrap().contains("relay"));
    assert!(banned
        .iter()
        .any(|v| v["ip"] == "127.0.13.9" && v["reason"] == "probe"));
    assert_eq!(events(&log, "ip_unbanned")[0]["ip"], "127.0.13.9");
    assert_eq!(events(&log, "ban_expired")[0]["ip"], "127.0.13.8");
    // The admin token is in no log line.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("secret-admin-token"));
}

#[test]
fn a_banned_client_holds_no_more_places_than_its_limit() {
    let port = api_port();
    let g = Gomail::start(&format!(
        "port: {port}\nadmin_token: t\nmax_connections_per_ip: 3\n{UNTRUSTED}"
    ));
    assert!(gomail_cli(&g, &["security", "ban", "127.0.14.1"]).0);
    let mut held = Vec::new();
    let mut shut_at_once = 0;
    for _ in 0..8 {
        let (mut r, line) = greet_from(g.addr, v4(0, 14, 1));
        assert_eq!(line, "554 5.7.1 127.0.14.1 is banned\r\n");
        r.get_ref()
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut rest = Vec::new();
        match r.read_to_end(&mut rest) {
            Ok(_) => shut_at_once += 1,
            Err(_) => held.push(r),
        }
    }
    // Three refused sessions wait for QUIT; the other five were closed.
    assert_eq!((held.len(), shut_at_once), (3, 5));
    assert_eq!(metric(&g, "gomail_connections_active"), 3.0);
    for mut r in held {
        r.get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(say(&mut r, "QUIT"), "221 2.0.0 Bye\r\n");
    }
}

#[test]
fn an_unreadable_ban_file_is_set_aside_and_the_server_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Not even a file: a directory where the ban file belongs.
    std::fs::create_dir_all(data.join("bans.json")).unwrap();
    let g = Gomail::start_on(&data, UNTRUSTED);
    assert!(greet_from(g.addr, v4(0, 15, 1)).1.starts_with("220 "));
    let aside = std::fs::read_dir(&data).unwrap().flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .starts_with("bans.json.damaged-")
    });
    assert!(aside, "the unreadable file is kept aside for the operator");
}
