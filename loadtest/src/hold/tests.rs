//! Hold tests: the limit checks and parsers, the spread and tally math, the
//! report, and whole runs against an in-process SMTP server on loopback.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::limits::*;
use super::report::Spread;
use super::*;
use crate::report::Status;

#[test]
fn port_range() {
    assert_eq!(parse_port_range("32768\t60999\n"), Some(DEFAULT_PORTS));
    assert_eq!(DEFAULT_PORTS, 28_232);
    assert_eq!(parse_port_range("1024 1024"), Some(1));
    for bad in ["", "32768", "60999 32768", "a b", "1 2 3"] {
        assert_eq!(parse_port_range(bad), None, "{bad:?}");
    }
}

#[test]
fn port_budget() {
    assert!(check_ports(28_232, 1, 28_232).is_ok());
    assert!(
        check_ports(28_232, 0, 28_232).is_ok(),
        "`any` is one address"
    );
    assert!(check_ports(200_000, 8, 28_232).is_ok());
    let e = check_ports(200_000, 7, 28_232).unwrap_err();
    assert!(
        e.starts_with("200000 connections need at least 8 source addresses"),
        "{e}"
    );
    assert!(e.ends_with("--sources gives 7"), "{e}");
    let e = check_ports(28_233, 0, 28_232).unwrap_err();
    assert!(e.contains("need at least 2 source addresses"), "{e}");
}

#[test]
fn fd_budget() {
    assert!(check_fds(1000, 1000 + FD_RESERVE).is_ok());
    let e = check_fds(1000, 1000).unwrap_err();
    assert!(
        e.starts_with("1000 connections need about 1064 file descriptors"),
        "{e}"
    );
    assert!(e.contains("RLIMIT_NOFILE allows 1000"), "{e}");
    // Raising is idempotent and never lowers the limit.
    let first = raise_nofile().unwrap();
    assert_eq!(raise_nofile().unwrap(), first);
    assert!(first >= 64);
}

#[test]
fn vm_rss() {
    let status = "Name:\tgomail\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
    assert_eq!(parse_vm_rss(status), Some(12_345));
    assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
    assert!(vm_rss_kb(std::process::id()).unwrap() > 0);
    let e = vm_rss_kb(u32::MAX).unwrap_err();
    assert!(e.starts_with("reading /proc/4294967295/status"), "{e}");
    assert_eq!(per_conn_bytes(1000, 1010, 10), Some(1024.0));
    assert_eq!(per_conn_bytes(1010, 1000, 20), Some(-512.0));
    assert_eq!(per_conn_bytes(1000, 2000, 0), None);
}

#[test]
fn spread() {
    let ms = Duration::from_millis;
    assert_eq!(Spread::of(&[]), None);
    let one = Spread::of(&[ms(7)]).unwrap();
    assert_eq!((one.min, one.p50, one.max), (ms(7), ms(7), ms(7)));
    let three = Spread::of(&[ms(9), ms(1), ms(5)]).unwrap();
    assert_eq!((three.min, three.p50, three.max), (ms(1), ms(5), ms(9)));
    // Nearest rank: the lower middle of an even count.
    assert_eq!(
        Spread::of(&[ms(4), ms(1), ms(3), ms(2)]).unwrap().p50,
        ms(2)
    );
    let twenty: Vec<_> = (1..=20).rev().map(ms).collect();
    let s = Spread::of(&twenty).unwrap();
    assert_eq!((s.min, s.p50, s.max), (ms(1), ms(10), ms(20)));
}

fn refused(code: u16, text: &str) -> Failure {
    Failure {
        class: Class::Refused,
        code: Some(code),
        text: text.to_string(),
    }
}

#[test]
fn tally() {
    let mut a = Tally::default();
    for i in 0..7 {
        a.record(refused(421, &format!("greeting: 421 busy {i}")));
    }
    a.record(Failure::io(
        "connect",
        &io::Error::from(io::ErrorKind::ConnectionRefused),
    ));
    let mut b = Tally::default();
    b.record(Failure::io(
        "EHLO",
        &io::Error::from(io::ErrorKind::UnexpectedEof),
    ));
    b.record(refused(554, "greeting: 554 no"));
    a.merge(b);
    assert_eq!(a.total(), 10);
    assert_eq!(
        (
            a.count(Class::Refused),
            a.count(Class::Connect),
            a.count(Class::Closed)
        ),
        (8, 1, 1)
    );
    assert_eq!(a.refused_codes, BTreeMap::from([(421, 7), (554, 1)]));
    assert_eq!(a.samples.len(), MAX_SAMPLES, "distinct texts, capped");
    assert_eq!(a.samples[0], "greeting: 421 busy 0");
}

fn plan(server: SocketAddr, count: usize, probes: usize) -> Plan {
    Plan {
        server,
        sources: crate::sources::parse("127.0.1.1-127.0.1.4").unwrap(),
        count,
        sessions: 8,
        ehlo: b"EHLO loadgen.test\r\n".to_vec(),
        io_timeout: Duration::from_secs(2),
        limit: Duration::from_secs(10),
        settle: Duration::ZERO,
        probes,
        probe_source: "127.0.0.250".parse().unwrap(),
        server_pid: None,
        hold: Duration::ZERO,
        progress: false,
    }
}

#[test]
fn report_figures() {
    let mut r = HoldReport::new(&plan("127.0.0.1:25".parse().unwrap(), 10, 3));
    r.held = 8;
    r.failures.record(refused(421, "greeting: 421 4.3.2 busy"));
    r.failures.record(Failure {
        class: Class::Timeout,
        code: None,
        text: "greeting: no answer within 2s".into(),
    });
    r.open_after_settle = Some(8);
    r.open_at_end = Some(8);
    r.probe_times = vec![Duration::from_micros(1500), Duration::from_micros(500)];
    r.probe_failures
        .record(refused(421, "greeting: 421 4.3.2 busy"));
    r.server_pid = Some(42);
    r.rss_before_kb = Some(1000);
    r.rss_held_kb = Some(1004);
    r.rss_settled_kb = Some(1002);
    r.stage = Stage::Done;
    r.elapsed = Duration::from_secs(1);
    assert_eq!(r.status(), Status::Errors);
    assert_eq!(
        r.rss_per_conn(),
        Some(256.0),
        "settled reading, 2 kB over 8"
    );
    let line = r.summary();
    assert!(
        line.starts_with("errors: held 8/10 idle connections, opened in 0.000s | failed 2: refused 1 (421 x1), timeout 1 |"),
        "{line}"
    );
    assert!(
        line.contains("probe time-to-220 from 127.0.0.250: 2/3 ok, ms min 0.500 p50 0.500 max 1.500 | failed: refused 1 (421 x1)"),
        "{line}"
    );
    assert!(
        line.contains("server 42 RSS 1000 kB -> 1002 kB = 256 bytes per held connection"),
        "{line}"
    );
    let text = r.json();
    assert!(text.starts_with("{\n  \"server\": \"127.0.0.1:25\",\n  \"mode\": \"hold\","));
    let j: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(j["status"], "errors");
    assert_eq!(j["stage"], "done");
    assert_eq!(
        (j["requested"].as_u64(), j["held"].as_u64()),
        (Some(10), Some(8))
    );
    assert_eq!(j["failures"]["refused"], 1);
    assert_eq!(j["failures"]["timeout"], 1);
    assert_eq!(j["failures"]["connect"], 0);
    assert_eq!(
        j["failures"]["refused_codes"],
        serde_json::json!({"421": 1})
    );
    assert_eq!(
        j["probe_ms"],
        serde_json::json!({"min": 0.5, "p50": 0.5, "max": 1.5})
    );
    assert_eq!(j["probes_ok"], 2);
    assert_eq!(
        j["rss_kb"],
        serde_json::json!({"before": 1000, "held": 1004, "settled": 1002})
    );
    assert_eq!(j["rss_per_conn_bytes"], 256.0);

    let mut clean = HoldReport::new(&plan("127.0.0.1:25".parse().unwrap(), 2, 0));
    clean.held = 2;
    clean.open_at_end = Some(2);
    assert_eq!(clean.status(), Status::Ok);
    clean.open_at_end = Some(1);
    assert_eq!(clean.status(), Status::Errors, "the server dropped one");
    clean.open_at_end = Some(2);
    clean.timed_out = true;
    assert_eq!(clean.status(), Status::Timeout);
    let j: Value = serde_json::from_str(&clean.json()).unwrap();
    assert_eq!(j["probe_ms"], Value::Null);
    assert_eq!(j["rss_per_conn_bytes"], Value::Null);
    assert!(!clean.summary().contains("RSS"));
}

/// What the test server saw.
#[derive(Debug, Default)]
struct Seen {
    /// Connections accepted, by client address.
    accepted: HashMap<IpAddr, usize>,
    ehlo: usize,
    quit: usize,
}

/// An SMTP server just big enough: 220, a multi-line 250 to EHLO, 221 to
/// QUIT. Clients from `refuse` get `421` and are closed; clients from
/// `silent` get nothing.
async fn server(refuse: Option<IpAddr>, silent: Option<IpAddr>) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                return;
            };
            *shared
                .lock()
                .unwrap()
                .accepted
                .entry(peer.ip())
                .or_default() += 1;
            let seen = shared.clone();
            tokio::spawn(async move {
                let mut io = BufReader::new(tcp);
                if Some(peer.ip()) == refuse {
                    return io.write_all(b"421 4.7.0 too many from you\r\n").await;
                }
                if Some(peer.ip()) != silent {
                    io.write_all(b"220 mx.test ESMTP\r\n").await?;
                }
                let mut line = String::new();
                loop {
                    line.clear();
                    if io.read_line(&mut line).await? == 0 {
                        return Ok::<_, io::Error>(());
                    }
                    match line.get(..4).unwrap_or("") {
                        "EHLO" => {
                            seen.lock().unwrap().ehlo += 1;
                            io.write_all(b"250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                                .await?;
                        }
                        "QUIT" => {
                            seen.lock().unwrap().quit += 1;
                            io.write_all(b"221 2.0.0 bye\r\n").await?;
                            return Ok(());
                        }
                        _ => io.write_all(b"502 5.5.2 no\r\n").await?,
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_and_probes() {
    let (addr, seen) = server(None, None).await;
    let mut p = plan(addr, 50, 3);
    p.server_pid = Some(std::process::id());
    let r = run(Arc::new(p)).await;
    assert_eq!(r.status(), Status::Ok, "{}", r.summary());
    assert_eq!((r.held, r.failures.total()), (50, 0));
    assert_eq!((r.open_after_settle, r.open_at_end), (Some(50), Some(50)));
    assert_eq!(r.probe_times.len(), 3);
    assert_eq!(r.stage, Stage::Done);
    assert!(r.rss_before_kb.is_some() && r.rss_settled_kb.is_some());
    assert!(r.rss_per_conn().is_some());
    let seen = seen.lock().unwrap();
    assert_eq!(
        (seen.ehlo, seen.quit),
        (50, 3),
        "EHLO by the held, QUIT by the probes"
    );
    // Round-robin over four sources; the probes from their own address.
    for n in 1..=4 {
        let want = if n <= 2 { 13 } else { 12 };
        assert_eq!(seen.accepted[&ip(&format!("127.0.1.{n}"))], want);
    }
    assert_eq!(seen.accepted[&ip("127.0.0.250")], 3);
    let j: Value = serde_json::from_str(&r.json()).unwrap();
    assert_eq!(
        (j["held"].as_u64(), j["probes_ok"].as_u64()),
        (Some(50), Some(3))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_refusals_and_timeouts() {
    let (addr, _) = server(Some(ip("127.0.1.2")), Some(ip("127.0.1.3"))).await;
    let mut p = plan(addr, 8, 1);
    p.io_timeout = Duration::from_millis(300);
    let r = run(Arc::new(p)).await;
    assert_eq!(r.status(), Status::Errors);
    assert_eq!(r.held, 4, "{}", r.summary());
    assert_eq!(r.failures.count(Class::Refused), 2);
    assert_eq!(r.failures.count(Class::Timeout), 2);
    assert_eq!(r.failures.refused_codes, BTreeMap::from([(421, 2)]));
    assert!(r
        .failures
        .samples
        .contains(&"greeting: 421 4.7.0 too many from you".to_string()));
    assert!(r
        .failures
        .samples
        .contains(&"greeting: no answer within 0.3s".to_string()));
    assert_eq!(r.probe_times.len(), 1);
}

#[tokio::test]
async fn deadline_stops_the_run() {
    let (addr, _) = server(None, None).await;
    let mut p = plan(addr, 4, 1);
    p.limit = Duration::from_millis(300);
    p.hold = Duration::from_secs(60);
    let r = run(Arc::new(p)).await;
    assert_eq!(r.status(), Status::Timeout);
    assert_eq!(
        (r.stage, r.held, r.probe_times.len()),
        (Stage::Holding, 4, 1)
    );
    assert_eq!(r.open_at_end, Some(4));
    assert!(r.elapsed < Duration::from_secs(2));
}

#[tokio::test]
async fn server_that_closes_idle_connections() {
    // A listener that accepts, greets, answers EHLO, then closes after a
    // moment: the sweep finds none open at the end.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut io = BufReader::new(tcp);
                io.write_all(b"220 mx.test\r\n").await?;
                let mut line = String::new();
                io.read_line(&mut line).await?;
                io.write_all(b"250 mx.test\r\n").await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
                io.write_all(b"421 4.4.2 idle too long\r\n").await
            });
        }
    });
    let mut p = plan(addr, 3, 0);
    p.hold = Duration::from_millis(400);
    let r = run(Arc::new(p)).await;
    assert_eq!((r.held, r.open_after_settle), (3, Some(3)));
    assert_eq!(r.open_at_end, Some(0));
    assert_eq!(r.status(), Status::Errors);
}
