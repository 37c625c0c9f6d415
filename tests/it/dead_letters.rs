//! Dead letters: what a refused message becomes, and `gomail queue
//! list|show|retry|purge` on them while the server runs.

use std::time::{Duration, Instant};

use super::harness::{gomail_cli, metric, queued, stored, wait_stored, wait_until, Client, Gomail};
use super::webhook::send;
use super::webhook_receiver::{receiver, Mode};

#[test]
fn permanent_refusals_go_to_the_dead_letter_folder() {
    let rx = receiver(Mode::Fixed(422));
    let g = Gomail::start(&rx.config("store_mode: on_failure\n"));
    let ids = send(&g, 1, "refused");
    let dead = g.data_dir.join("dead");
    let t0 = Instant::now();
    let file = loop {
        if let Some(e) = std::fs::read_dir(&dead).ok().and_then(|mut d| d.next()) {
            break e.unwrap().path();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no dead letter");
        std::thread::sleep(Duration::from_millis(20));
    };
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(v["metadata"]["queue_id"], ids[0].as_str());
    assert_eq!(
        v["dead_letter"]["reason"],
        "receiver refused the message with HTTP 422"
    );
    assert_eq!(v["dead_letter"]["attempts"][0]["status"], 422);
    assert_eq!(v["dead_letter"]["attempts"][0]["detail"], "answer 422");
    assert_eq!(rx.log().len(), 1, "a permanent refusal is not retried");
    // store_mode on_failure: the failed message is in the store...
    assert_eq!(wait_stored(&g.data_dir, 1).len(), 1);
    // ...and a delivered one is not.
    *rx.mode.lock().unwrap() = Mode::Fixed(200);
    let ids = send(&g, 1, "fine");
    rx.wait_delivered(&ids);
    // Done in the spool: past the store's writer, which would have
    // written its file first.
    wait_until(
        Duration::from_secs(10),
        "the delivered message done",
        || metric(&g, "gomail_store_backlog") == 0.0,
    );
    assert_eq!(stored(&g.data_dir).len(), 1);
}

#[test]
fn dead_letters_are_listed_retried_and_purged_while_the_server_runs() {
    let rx = receiver(Mode::Fixed(422));
    let g = Gomail::start(&rx.config("port: 21027\nstore_mode: never\nadmin_token: admin-456\n"));
    let ids = send(&g, 2, "dead");
    wait_until(
        Duration::from_secs(10),
        "dead letters never appeared",
        || gomail_cli(&g, &["queue", "list"]).1.lines().count() >= 2,
    );
    let (_, list, _) = gomail_cli(&g, &["queue", "list"]);
    assert!(ids.iter().all(|id| list.contains(id.as_str())), "{list}");
    assert!(
        list.contains("receiver refused the message with HTTP 422"),
        "{list}"
    );
    let (ok, show, _) = gomail_cli(&g, &["queue", "show", &ids[0]]);
    assert!(ok && show.contains("\"dead_letter\""), "{show}");
    let (ok, _, err) = gomail_cli(&g, &["queue", "retry"]);
    assert!(
        !ok && err.contains("name queue ids, give --since/--until, or say --all"),
        "{err}"
    );

    // Re-driven while the receiver still refuses: the attempt log grows.
    let (ok, _, err) = gomail_cli(&g, &["queue", "retry", &ids[1]]);
    assert!(ok, "{err}");
    let t0 = Instant::now();
    loop {
        let (_, show, _) = gomail_cli(&g, &["queue", "show", &ids[1]]);
        let v: serde_json::Value = serde_json::from_str(&show).unwrap_or_default();
        if v["dead_letter"]["attempts"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{show}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The receiver is fixed; re-drive the first one only.
    *rx.mode.lock().unwrap() = Mode::Fixed(200);
    let (ok, out, err) = gomail_cli(&g, &["queue", "retry", &ids[0]]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), r#"{"matched":1,"queued":1}"#);
    rx.wait_delivered(&ids[..1]);
    wait_until(
        Duration::from_secs(10),
        "the delivered dead letter was not removed",
        || gomail_cli(&g, &["queue", "list"]).1.lines().count() == 1,
    );
    let (ok, out, _) = gomail_cli(&g, &["queue", "purge", "--all"]);
    assert!(ok && out.contains("purged 1"), "{out}");
    assert_eq!(gomail_cli(&g, &["queue", "list"]).1, "");

    // The API refuses a wrong token, and the webhook's own credential
    // (bearer_token, which the receiver holds).
    use std::io::{Read, Write};
    for token in ["wrong", "tok-123"] {
        let mut s = std::net::TcpStream::connect(g.api).unwrap();
        write!(s, "POST /queue/retry HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {token}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}").unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
        assert!(raw.contains("\"error\":\"unauthorized\""), "{raw}");
    }
}

#[test]
fn dead_letters_of_a_message_for_two_recipients_go_by_webhook_id_or_queue_id() {
    let rx = receiver(Mode::Fixed(422));
    let g = Gomail::start(&rx.config("store_mode: never\nadmin_token: admin-456\n"));
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO hooks.example");
    let q = queued(&c.mail(
        "s@sender.example",
        &["ann@example.test", "bob@example.test"],
        "Subject: two\r\n\r\nx",
    ));
    wait_until(Duration::from_secs(10), "two dead letters", || {
        gomail_cli(&g, &["queue", "list"]).1.lines().count() >= 2
    });
    let (_, list, _) = gomail_cli(&g, &["queue", "list"]);
    let listed: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(listed, [format!("{q}.0"), format!("{q}.1")], "{list}");
    // Each by the id list printed, both by the queue id.
    let (ok, one, err) = gomail_cli(&g, &["queue", "show", listed[1]]);
    assert!(ok, "{err}");
    assert!(one.contains("bob@example.test") && !one.contains("\"recipient\": \"ann"));
    let (ok, both, _) = gomail_cli(&g, &["queue", "show", &q]);
    assert!(ok && both.matches("\"dead_letter\"").count() == 2, "{both}");
    let (ok, out, err) = gomail_cli(&g, &["queue", "retry", &q]);
    assert!(ok && out.contains("\"matched\":2"), "{out} {err}");
    // A retry that matches nothing says so and fails.
    let (ok, _, err) = gomail_cli(&g, &["queue", "retry", "0000000000000000"]);
    assert!(!ok && err.contains("no dead letter matched"), "{err}");
}
