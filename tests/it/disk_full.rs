//! A full disk gives `451 4.3.0` (spool) or `452 4.3.1` (store), never a
//! `250` that is then lost, and the server goes on.

use std::process::Command;
use std::time::Duration;

use super::harness::{queue_id, Client, Gomail};

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`2m`) on `dir`, unmounted when dropped.
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount runs");
        assert!(
            st.success(),
            "this test mounts a {size} tmpfs and needs root (CI runs as root)"
        );
        Tmpfs(dir.to_path_buf())
    }
}

#[test]
fn full_disk_gives_451_and_the_server_keeps_serving() {
    // Only the spool is small: with the whole data_dir on one small disk,
    // the store's larger JSON files may fill it first, and the answer is
    // then the store's 452 (the next test), not the spool's 451.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let spool = data.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let _m = Tmpfs::mount(&spool, "2m");
    let g = Gomail::start_on(&data, "max_message_size: 1MB\n");
    let body = format!(
        "Subject: big\r\n\r\n{}",
        ("z".repeat(998) + "\r\n").repeat(300)
    );
    let mut refused = None;
    for _ in 0..20 {
        let mut c = Client::connect(g.addr);
        c.cmd("EHLO filler.example");
        let r = c.mail("s@sender.example", &["r@example.test"], &body);
        if queue_id(&r).is_none() {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("the 2 MiB disk never filled");
    assert_eq!(
        r,
        "451 4.3.0 Error: could not store the message, try again later\r\n"
    );
    let mut c = Client::connect(g.addr);
    assert!(c.cmd("EHLO still.example").starts_with("250-"));
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 OK\r\n");
}

#[test]
fn a_full_store_defers_new_mail_until_it_can_be_written_and_loses_nothing() {
    // The store fills first: a small tmpfs under data_dir/inbox (nearly
    // filled), while the spool has the whole disk. Every 250 must end up
    // stored once the filler goes (8 MiB hold the at most 60 messages).
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let inbox = data.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let _m = Tmpfs::mount(&inbox, "8m");
    let filler = inbox.join("filler");
    let st = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k", "count=120"])
        .arg(format!("of={}", filler.display()))
        .status()
        .unwrap();
    assert!(st.success());
    let g = Gomail::start_on(&data, "shards: 1\n");
    let body = format!(
        "Subject: big\r\n\r\n{}",
        ("y".repeat(998) + "\r\n").repeat(100)
    );
    let mut accepted = Vec::new();
    let mut deferred = None;
    for _ in 0..60 {
        let mut c = Client::connect(g.addr);
        c.cmd("EHLO filler.example");
        let r = c.mail("s@sender.example", &["r@example.test"], &body);
        match queue_id(&r) {
            Some(id) => accepted.push(id),
            None => {
                deferred = Some(r);
                break;
            }
        }
    }
    let r = match deferred {
        Some(r) => r,
        None => {
            // The store had not tried to write yet when the last 250 went
            // out (its writes are batched and paced): once it has failed,
            // the next message is deferred.
            super::harness::wait_until(Duration::from_secs(20), "the store to fail", || {
                super::harness::metric(&g, "gomail_store_failing") == 1.0
            });
            let mut c = Client::connect(g.addr);
            c.cmd("EHLO filler.example");
            c.mail("s@sender.example", &["r@example.test"], &body)
        }
    };
    assert_eq!(
        r,
        "452 4.3.1 Insufficient system storage: the message store cannot be written, try again later\r\n"
    );
    let (status, _, health) = super::harness::http(g.api, "GET", "/health");
    assert_eq!(status, 503, "{health}");
    assert!(
        health.contains("the JSON store cannot be written"),
        "{health}"
    );
    assert_eq!(super::harness::metric(&g, "gomail_store_failing"), 1.0);
    // A long outage: the store has tried and failed 9 times. Had its
    // retries kept doubling (0.1 s, 0.2 s, ...), the next one would be
    // 25.6 s away; while the disk is full they are at most 1 s apart.
    super::harness::wait_until(Duration::from_secs(60), "9 failed store writes", || {
        super::harness::metric(&g, "gomail_store_failures_total") >= 9.0
    });
    // Space again: the store catches up at its next retry, every accepted
    // message is there, and mail is accepted again, as fast as the
    // harness's other waits expect (not a retry 25 s away).
    std::fs::remove_file(&filler).unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let (status, _, health) = super::harness::http(g.api, "GET", "/health");
        if status == 200 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "still unhealthy after the space came back: {health}; inbox: {:?}",
            Command::new("df")
                .arg(&inbox)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stored: std::collections::HashSet<String> =
        super::harness::wait_stored(&data, accepted.len())
            .into_iter()
            .map(|(id, _)| id)
            .collect();
    for id in &accepted {
        assert!(
            stored.contains(id),
            "{id} was answered 250 and never stored"
        );
    }
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO again.example");
    assert!(queue_id(&c.mail(
        "s@sender.example",
        &["r@example.test"],
        "Subject: ok\r\n\r\nok"
    ))
    .is_some());
}
