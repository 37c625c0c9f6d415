//! Crash safety: `kill -9` mid-stream, restart, nothing acknowledged is lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::harness::{queue_id, wait_stored, Client, Gomail};

#[test]
fn kill_9_mid_stream_loses_no_acknowledged_message() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let mut g = Gomail::start_on(&data_dir, "shards: 2\n");
    let addr = g.addr;
    let acked = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for t in 0..4 {
        let (acked, stop) = (acked.clone(), stop.clone());
        senders.push(std::thread::spawn(move || {
            let mut n = 0;
            'outer: while !stop.load(Ordering::Relaxed) {
                let Ok(mut c) = std::panic::catch_unwind(|| Client::connect(addr)) else {
                    break;
                };
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    c.cmd("EHLO crash.example")
                }))
                .is_err()
                {
                    break;
                }
                for _ in 0..5 {
                    let marker = format!("t{t}-m{n}");
                    n += 1;
                    let body = format!(
                        "Subject: {marker}\r\n\r\n{}",
                        "payload payload payload payload\r\n".repeat(50)
                    );
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        c.mail("s@sender.example", &["r@example.test"], &body)
                    }));
                    match r.ok().as_deref().and_then(queue_id) {
                        Some(id) => acked.lock().unwrap().push((id, marker)),
                        None => break 'outer,
                    }
                }
            }
        }));
    }
    let t0 = Instant::now();
    while acked.lock().unwrap().len() < 200 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    g.kill9();
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        let _ = s.join();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 200,
        "only {} messages acknowledged before the kill",
        acked.len()
    );

    let _g = Gomail::start_on(&data_dir, "shards: 2\n");
    let files = wait_stored(&data_dir, acked.len());
    for (id, marker) in &acked {
        let copies: Vec<_> = files.iter().filter(|(i, _)| i == id).collect();
        assert_eq!(
            copies.len(),
            1,
            "acknowledged message {id} ({marker}) is in the store {} times",
            copies.len()
        );
        assert_eq!(copies[0].1["subject"], marker.as_str());
    }
    let mut ids: Vec<&String> = files.iter().map(|(i, _)| i).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), files.len(), "a message is in the store twice");
    // At most the messages in flight at the kill (one per sender) may be
    // stored without their 250 having reached the client.
    assert!(
        files.len() <= acked.len() + 4,
        "{} stored, {} acknowledged",
        files.len(),
        acked.len()
    );
}

/// A message in the store whose done record waits for a retry when
/// SIGTERM comes: shutdown gives it a final write, so the clean restart
/// does not deliver the message again. (The fault makes every write of
/// done records alone fail, as on a full disk, except that final one.)
#[cfg(feature = "fault-injection")]
#[test]
fn sigterm_writes_done_records_waiting_for_a_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut g = Gomail::start_on(&data, "shards: 1\n");
    let segments = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(data.join("spool/shard-0"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        v.sort();
        v
    };
    let first = segments()[0].clone();
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO crash.example");
    // A delivered segment is deleted, which is as good as its done
    // records: first let the spool move on from the segment it started
    // with (to its zero-filled spare), so that the message below stays in
    // the segment being written.
    let mut sent = 0;
    while first.exists() {
        assert!(sent < 200, "the spool never moved on from {first:?}");
        sent += 1;
        let r = c.mail(
            "s@sender.example",
            &["r@example.test"],
            "Subject: warm\r\n\r\nup\r\n",
        );
        queue_id(&r).expect("accepted");
        wait_stored(&data, sent);
    }
    assert_eq!(
        c.cmd("XFAULT DONE-FAIL"),
        "250 2.0.0 done records now fail\r\n"
    );
    let id = queue_id(&c.mail(
        "s@sender.example",
        &["r@example.test"],
        "Subject: once\r\n\r\nonly once\r\n",
    ))
    .expect("accepted");
    assert!(wait_stored(&data, sent + 1).iter().any(|(s, _)| *s == id));
    c.cmd("QUIT");
    assert!(g.terminate().success());

    let g = Gomail::start_on(&data, "shards: 1\n");
    assert_eq!(
        super::harness::metric(&g, "gomail_messages_recovered_total"),
        0.0,
        "the restart took a stored message for undelivered"
    );
    assert_eq!(wait_stored(&data, sent + 1).len(), sent + 1);
}

#[cfg(not(feature = "fault-injection"))]
#[test]
fn sigterm_writes_done_records_waiting_for_a_retry() {
    panic!(
        "this test needs the binary's test-only fault injection: run scripts/test.sh \
         (cargo test --workspace --features fault-injection)"
    );
}
