//! A webhook backlog costs disk, not memory, and survives `kill -9` with
//! its progress: retry counts go on, served recipients are not posted
//! again, and a restart listens without loading the backlog.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::harness::{queued, wait_until, Client, Gomail};
use super::webhook_receiver::{receiver, Mode};

/// How many times `needle` occurs in the spool's segment files: the
/// progress records are JSON, so a test can wait until one is on disk
/// before it pulls the plug.
fn in_spool(data: &Path, needle: &str) -> usize {
    let mut n = 0;
    let Ok(shards) = std::fs::read_dir(data.join("spool")) else {
        return 0;
    };
    for shard in shards.flatten() {
        for seg in std::fs::read_dir(shard.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(bytes) = std::fs::read(seg.path()) {
                n += memchr::memmem::find_iter(&bytes, needle.as_bytes()).count();
            }
        }
    }
    n
}

/// `VmHWM` (peak resident memory) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/pid/status")
}

fn dead_letters(data: &Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(data.join("dead"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect()
}

#[test]
fn the_retry_count_goes_on_after_a_kill_9() {
    // Two attempts in all (webhook_retries: 1): one before the crash, one
    // after. Starting the count again would make it three.
    let rx = receiver(Mode::Fixed(503));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A retry due 8-12 s later: long enough that the crash comes first.
    let cfg = rx.config("webhook_retries: 1\nwebhook_retry_delay: 10s\nstore_mode: never\n");
    let mut g = Gomail::start_on(&data, &cfg);
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO hooks.example");
    let id = queued(&c.mail(
        "s@sender.example",
        &["r@example.test"],
        "Subject: once\r\n\r\nx",
    ));
    wait_until(Duration::from_secs(10), "its retry recorded", || {
        in_spool(&data, "\"state\":\"waiting\"") == 1
    });
    g.kill9();
    assert_eq!(rx.log().len(), 1);
    let _g = Gomail::start_on(&data, &cfg);
    wait_until(Duration::from_secs(30), "a dead letter", || {
        !dead_letters(&data).is_empty()
    });
    let ids: Vec<String> = rx.log().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, [id.clone(), id.clone()], "attempts over both runs");
    let dead = dead_letters(&data);
    assert_eq!(dead[0]["dead_letter"]["webhook_id"], id.as_str());
    let reason = dead[0]["dead_letter"]["reason"].as_str().unwrap();
    assert!(reason.contains("(2 attempts)"), "{reason}");
}

#[test]
fn recipients_served_before_a_kill_9_are_not_posted_again() {
    let rx = receiver(Mode::FailIds(".2".into()));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = rx.config("webhook_retries: 50\nwebhook_retry_delay: 200ms\nstore_mode: never\n");
    let mut g = Gomail::start_on(&data, &cfg);
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO hooks.example");
    let q = queued(&c.mail(
        "s@sender.example",
        &["a@example.test", "b@example.test", "c@example.test"],
        "Subject: three\r\n\r\nx",
    ));
    // Two delivered, the third failing; both deliveries recorded.
    wait_until(Duration::from_secs(10), "two deliveries recorded", || {
        in_spool(&data, "\"state\":\"delivered\"") == 2
    });
    g.kill9();
    *rx.mode.lock().unwrap() = Mode::Fixed(200);
    let _g = Gomail::start_on(&data, &cfg);
    let third = format!("{q}.2");
    rx.wait_delivered(std::slice::from_ref(&third));
    let mut delivered: HashMap<String, usize> = HashMap::new();
    for r in rx.log().into_iter().filter(|r| r.delivered()) {
        *delivered.entry(r.id).or_default() += 1;
    }
    assert_eq!(delivered[&format!("{q}.0")], 1);
    assert_eq!(delivered[&format!("{q}.1")], 1);
    assert_eq!(delivered[&third], 1);
}

#[test]
fn five_thousand_waiting_messages_cost_disk_not_memory_and_survive_a_kill_9() {
    // 5,000 messages of 100 KB (500 MB) while the receiver refuses them.
    const N: usize = 5000;
    const BOUND_KIB: u64 = 200 * 1024;
    let rx = receiver(Mode::Fixed(503));
    rx.keep_bodies.store(false, Ordering::Relaxed);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A generous webhook_timeout: on a busy 2-core machine a 100 KB POST
    // among 64 can take seconds, and a timeout means a (legitimate,
    // at-least-once) second delivery, which this test counts as a failure.
    let cfg = rx
        .config(
            "shards: 1\nwebhook_retries: 1000\nwebhook_retry_delay: 1s\nstore_mode: never\nmax_message_size: 1MB\n",
        )
        .replace("webhook_timeout: 2s", "webhook_timeout: 60s");
    let t0 = std::time::Instant::now();
    let mut g = Gomail::start_on(&data, &cfg);
    let line = "y".repeat(98) + "\r\n";
    let mut ids = Vec::with_capacity(N);
    std::thread::scope(|s| {
        let senders: Vec<_> = (0..4)
            .map(|t| {
                let (addr, line) = (g.addr, &line);
                s.spawn(move || {
                    let mut c = Client::connect(addr);
                    c.cmd("EHLO bulk.example");
                    (0..N / 4)
                        .map(|i| {
                            let body =
                                format!("Subject: backlog {t} {i}\r\n\r\n{}", line.repeat(1000));
                            queued(&c.mail("s@sender.example", &["r@example.test"], &body))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in senders {
            ids.extend(h.join().unwrap());
        }
    });
    let peak = peak_rss_kib(g.child.id());
    eprintln!("{N} sent in {:?}, peak RSS {peak} KiB", t0.elapsed());
    assert!(
        peak < BOUND_KIB,
        "peak RSS {peak} KiB with {N} waiting messages of 100 KB"
    );
    g.kill9();
    *rx.mode.lock().unwrap() = Mode::Fixed(200);
    let g = Gomail::start_on(&data, &cfg);
    let t0 = std::time::Instant::now();
    loop {
        let delivered = rx.log().iter().filter(|r| r.delivered()).count();
        if delivered >= N {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{delivered} of {N} delivered after the restart"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let peak = peak_rss_kib(g.child.id());
    eprintln!(
        "delivered after the restart in {:?}, peak RSS {peak} KiB",
        t0.elapsed()
    );
    assert!(
        peak < BOUND_KIB,
        "peak RSS {peak} KiB recovering and delivering {N} messages of 100 KB"
    );
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in rx.log().into_iter().filter(|r| r.delivered()) {
        *seen.entry(r.id).or_default() += 1;
    }
    assert_eq!(seen.len(), N);
    for id in &ids {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "{id} delivered once, same webhook-id"
        );
    }
}

#[test]
fn spool_max_bytes_defers_new_mail_until_the_backlog_drains() {
    // One shard, 64 MiB (the least allowed): the first preallocated
    // 32 MiB segment fills, and the next one would pass the bound.
    let rx = receiver(Mode::Fixed(503));
    rx.keep_bodies.store(false, Ordering::Relaxed);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = rx.config(
        "shards: 1\nspool_max_bytes: 64MiB\nwebhook_retries: 1000\nwebhook_retry_delay: 200ms\nstore_mode: never\n",
    );
    let g = Gomail::start_on(&data, &cfg);
    let body = format!(
        "Subject: big\r\n\r\n{}",
        ("z".repeat(998) + "\r\n").repeat(100)
    );
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO bulk.example");
    let mut accepted = Vec::new();
    let refused = loop {
        let r = c.mail("s@sender.example", &["r@example.test"], &body);
        match super::harness::queue_id(&r) {
            Some(id) => accepted.push(id),
            None => break r,
        }
        assert!(accepted.len() < 1000, "64 MiB never filled");
    };
    assert_eq!(
        refused,
        "452 4.3.1 Insufficient system storage: spool full, try again later\r\n"
    );
    assert!(accepted.len() > 100, "only {} accepted", accepted.len());
    let bytes = super::harness::metric(&g, "gomail_spool_bytes");
    assert!(bytes <= (64u64 << 20) as f64, "{bytes}");
    // The receiver is back: the backlog drains, its segments go, and mail
    // is taken again.
    *rx.mode.lock().unwrap() = Mode::Fixed(200);
    rx.wait_delivered(&accepted);
    wait_until(Duration::from_secs(30), "new mail taken again", || {
        super::harness::queue_id(&c.mail("s@sender.example", &["r@example.test"], &body)).is_some()
    });
}

#[test]
fn a_receiver_refusing_connections_for_two_seconds_holds_delivery_back_for_seconds_only() {
    // Nothing listens on the receiver's port: 64 deliveries in flight fail
    // to connect at once and the breaker opens. The receiver comes up on
    // that port two seconds later; only failed probes widen the wait, so
    // every message goes within seconds of it, not minutes.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = format!(
        "api_endpoint: \"http://127.0.0.1:{port}/hook\"\nwebhook_secret: \"{}\"\nwebhook_timeout: 2s\n\
         shards: 1\nwebhook_retry_delay: 1s\nwebhook_retries: 1000\nstore_mode: never\n",
        super::webhook_receiver::SECRET
    );
    let g = Gomail::start_on(&tmp.path().join("data"), &cfg);
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO burst.example");
    let ids: Vec<String> = (0..64)
        .map(|i| {
            queued(&c.mail(
                "s@sender.example",
                &["r@example.test"],
                &format!("Subject: refused {i}\r\n\r\nx"),
            ))
        })
        .collect();
    wait_until(Duration::from_secs(10), "the breaker open", || {
        super::harness::metric(&g, "gomail_webhook_circuit_open") == 1.0
    });
    std::thread::sleep(Duration::from_secs(2)); // the outage itself
    let rx =
        super::webhook_receiver::receiver_on(&format!("127.0.0.1:{port}"), Mode::Fixed(200), None);
    // A deadline for the test, not a measurement: a wait widened by every
    // failure in flight would hold delivery back for five minutes.
    let t0 = std::time::Instant::now();
    loop {
        let ok: std::collections::HashSet<String> = rx
            .log()
            .into_iter()
            .filter(|r| r.delivered())
            .map(|r| r.id)
            .collect();
        if ids.iter().all(|i| ok.contains(i)) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{} of 64 delivered {:?} after the receiver came back",
            ok.len(),
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
