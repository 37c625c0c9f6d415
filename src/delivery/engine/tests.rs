//! The engine with a manual clock: no sockets, no sleeps.

use super::*;
use crate::delivery::breaker::{PROBE_FIRST, THRESHOLD};
use crate::delivery::webhook::Failure;

fn engine(retries: u32) -> Engine {
    Engine::new(Config {
        retries,
        retry_delay: Duration::from_secs(5),
        max_in_flight: 64,
    })
}

fn answer(status: u16) -> Attempt {
    Attempt {
        at_ms: 0,
        status: Some(status),
        failure: None,
        retry_after: None,
        latency: Duration::ZERO,
        detail: String::new(),
    }
}

fn refused() -> Attempt {
    Attempt {
        status: None,
        failure: Some(Failure::Connect),
        detail: "connection refused".into(),
        ..answer(0)
    }
}

fn none(_: &str) -> Option<Restored> {
    None
}

fn events(e: &mut Engine) -> Vec<Event> {
    std::iter::from_fn(|| e.poll_event()).collect()
}

fn finished(e: &mut Engine) -> Vec<(MessageKey, bool)> {
    events(e)
        .into_iter()
        .filter_map(|ev| match ev {
            Event::Finished { message, dead } => Some((message, dead)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_delivered_message_is_finished_once() {
    let t0 = Instant::now();
    let mut e = engine(3);
    let m = e.handle_accepted("Q1", 1, none, t0);
    let o = e.poll_attempt(t0).expect("due at once");
    assert_eq!(o.webhook_id, "Q1");
    assert!(!o.probe);
    assert_eq!(e.poll_attempt(t0), None, "one delivery per recipient");
    assert!(!e.is_idle(t0), "one in flight");
    assert_eq!(
        e.handle_answer(o.key, answer(200), t0, 0.5),
        Outcome::Delivered { attempts: 1 }
    );
    assert_eq!(finished(&mut e), vec![(m, false)]);
    assert!(e.is_empty() && e.is_idle(t0));
    assert_eq!(e.poll_timeout(), None);
    assert_eq!(
        e.handle_answer(o.key, answer(200), t0, 0.5),
        Outcome::Unknown
    );
}

#[test]
fn failures_back_off_then_dead_letter_and_retry_after_wins_when_longer() {
    let mut now = Instant::now();
    let mut e = engine(3);
    let m = e.handle_accepted("Q1", 1, none, now);
    let mut waits = Vec::new();
    for attempt in 1..=3 {
        let o = e.poll_attempt(now).expect("due");
        let a = if attempt == 2 {
            Attempt {
                retry_after: Some(Duration::from_secs(120)),
                ..answer(503)
            }
        } else {
            answer(503)
        };
        let Outcome::Retry { wait, attempt: n } = e.handle_answer(o.key, a, now, 0.5) else {
            panic!("retried");
        };
        assert_eq!(n, attempt);
        waits.push(wait);
        // Not before it is due, then exactly when.
        assert_eq!(e.poll_timeout(), Some(now + wait));
        assert_eq!(e.poll_attempt(now + wait - Duration::from_millis(1)), None);
        now += wait;
    }
    assert_eq!(
        waits,
        [
            Duration::from_secs(5),
            Duration::from_secs(120),
            Duration::from_secs(20)
        ]
    );
    let o = e.poll_attempt(now).expect("the last retry");
    let Outcome::DeadLetter { why, log, attempts } = e.handle_answer(o.key, answer(500), now, 0.5)
    else {
        panic!("dead-lettered");
    };
    assert_eq!((why, attempts, log.len()), (GaveUp::RetriesUsedUp, 4, 4));
    assert!(!e.is_idle(now), "its dead letter is being written");
    assert_eq!(finished(&mut e), vec![]);
    e.handle_dead_letter(o.key, true, now);
    assert_eq!(finished(&mut e), vec![(m, true)]);
    assert!(e.is_empty());
}

#[test]
fn every_retry_is_progress_to_persist() {
    let t0 = Instant::now();
    let mut e = engine(3);
    e.handle_accepted("Q1", 1, none, t0);
    let o = e.poll_attempt(t0).unwrap();
    let Outcome::Retry { wait, .. } = e.handle_answer(o.key, answer(429), t0, 0.5) else {
        panic!()
    };
    assert_eq!(
        events(&mut e),
        vec![Event::Progress {
            key: o.key,
            message: Some(MessageKey(1)),
            webhook_id: "Q1".into(),
            attempts: 1,
            state: Restored::Waiting {
                attempts: 1,
                due: t0 + wait,
                denied_since: None
            },
        }]
    );
}

#[test]
fn a_dead_letter_that_cannot_be_written_is_tried_again_later() {
    let t0 = Instant::now();
    let mut e = engine(3);
    e.handle_accepted("Q1", 1, none, t0);
    let o = e.poll_attempt(t0).unwrap();
    assert!(matches!(
        e.handle_answer(o.key, answer(422), t0, 0.5),
        Outcome::DeadLetter {
            why: GaveUp::Refused,
            ..
        }
    ));
    e.handle_dead_letter(o.key, false, t0);
    assert_eq!(e.poll_timeout(), Some(t0 + DEAD_LETTER_RETRY));
    assert!(e.poll_attempt(t0 + DEAD_LETTER_RETRY).is_some());
}

/// `THRESHOLD` deliveries sent and failed: the breaker opens.
fn open_with_in_flight(e: &mut Engine, now: Instant, in_flight: usize) -> Vec<Key> {
    for i in 0..in_flight {
        e.handle_accepted(&format!("Q{i}"), 1, none, now);
    }
    let orders: Vec<Order> = std::iter::from_fn(|| e.poll_attempt(now)).collect();
    assert_eq!(orders.len(), in_flight.min(64));
    orders.into_iter().map(|o| o.key).collect()
}

#[test]
fn a_burst_of_failures_in_flight_opens_the_breaker_for_one_probe_step_only() {
    // The receiver refuses connections for a moment with 64 deliveries in
    // flight: all 64 fail, and the first probe still goes after
    // PROBE_FIRST, not after a wait doubled by every late answer.
    let t0 = Instant::now();
    let mut e = engine(100);
    let keys = open_with_in_flight(&mut e, t0, 100);
    for k in &keys {
        assert!(matches!(
            e.handle_answer(*k, refused(), t0, 0.5),
            Outcome::Retry { .. }
        ));
    }
    let opened: Vec<Event> = events(&mut e)
        .into_iter()
        .filter(|ev| !matches!(ev, Event::Progress { .. }))
        .collect();
    assert_eq!(
        opened,
        vec![Event::BreakerOpened {
            failures: THRESHOLD
        }]
    );
    assert_eq!(e.health(), (true, false));
    // 36 messages never sent are ready: the probe is due at PROBE_FIRST.
    assert_eq!(e.poll_timeout(), Some(t0 + PROBE_FIRST));
    assert_eq!(e.poll_attempt(t0), None);
    let t1 = t0 + PROBE_FIRST;
    let probe = e.poll_attempt(t1).expect("the probe");
    assert!(probe.probe);
    assert_eq!(e.poll_attempt(t1), None, "one probe at a time");
    assert_eq!(e.poll_timeout(), None, "the probe's answer decides");
    // The receiver is back: the probe closes it, and everything flows.
    assert!(matches!(
        e.handle_answer(probe.key, answer(200), t1, 0.5),
        Outcome::Delivered { .. }
    ));
    assert!(events(&mut e).contains(&Event::BreakerClosed));
    let flowing = std::iter::from_fn(|| e.poll_attempt(t1)).count();
    assert_eq!(flowing, 35, "the rest of the never-sent ones, at once");
}

#[test]
fn failed_probes_widen_the_wait_and_late_answers_do_not() {
    let t0 = Instant::now();
    let mut e = engine(100);
    let keys = open_with_in_flight(&mut e, t0, 20);
    for k in &keys[..THRESHOLD as usize] {
        e.handle_answer(*k, answer(503), t0, 0.5);
    }
    // A new message is ready; the ten retries are not due yet.
    e.handle_accepted("new", 1, none, t0);
    let t1 = t0 + PROBE_FIRST;
    let probe = e.poll_attempt(t1).expect("the probe");
    assert_eq!(probe.webhook_id, "new");
    // Late answers of the other ten while the probe is out.
    for k in &keys[THRESHOLD as usize..] {
        e.handle_answer(*k, answer(503), t1, 0.5);
    }
    assert_eq!(e.poll_attempt(t1), None);
    events(&mut e);
    e.handle_answer(probe.key, answer(503), t1, 0.5);
    assert_eq!(
        events(&mut e)
            .into_iter()
            .find(|ev| matches!(ev, Event::BreakerWidened { .. })),
        Some(Event::BreakerWidened {
            wait: PROBE_FIRST * 2,
            status: Some(503)
        })
    );
}

#[test]
fn gone_disables_delivery_keeps_every_message_and_stops_inline_waits() {
    let t0 = Instant::now();
    let mut e = engine(3);
    let m = e.handle_accepted("Q1", 1, none, t0);
    e.handle_accepted("Q2", 1, none, t0);
    let a = e.poll_attempt(t0).unwrap();
    let b = e.poll_attempt(t0).unwrap();
    assert!(e.inline_allowed());
    assert_eq!(e.handle_answer(a.key, answer(410), t0, 0.5), Outcome::Gone);
    assert_eq!(events(&mut e), vec![Event::Disabled]);
    assert_eq!(e.handle_answer(b.key, answer(410), t0, 0.5), Outcome::Gone);
    assert_eq!(events(&mut e), vec![], "said once");
    assert_eq!(e.poll_attempt(t0 + Duration::from_secs(3600)), None);
    assert_eq!(e.poll_timeout(), None);
    assert!(!e.inline_allowed());
    assert_eq!(e.health(), (false, true));
    assert!(e.is_idle(t0));
    assert_eq!(e.len(), 2, "both kept");
    assert_eq!(
        e.handle_inline_answer(&answer(410), t0),
        Inline::Gone,
        "an inline 410 is the same"
    );
    let _ = m;
}

#[test]
fn inline_answers_feed_the_same_breaker() {
    let t0 = Instant::now();
    let mut e = engine(3);
    for _ in 0..THRESHOLD {
        assert!(e.inline_allowed());
        assert_eq!(
            e.handle_inline_answer(&answer(503), t0),
            Inline::Answered(Verdict::Retry)
        );
    }
    assert!(!e.inline_allowed(), "open: clients no longer wait");
    assert_eq!(e.health(), (true, false));
    // A queued message then goes as the probe.
    e.handle_accepted("Q1", 1, none, t0);
    assert_eq!(e.poll_attempt(t0), None);
    let probe = e.poll_attempt(t0 + PROBE_FIRST).unwrap();
    assert!(probe.probe);
    e.handle_answer(probe.key, answer(204), t0 + PROBE_FIRST, 0.5);
    assert!(e.inline_allowed());
    assert_eq!(
        e.handle_inline_answer(&answer(422), t0),
        Inline::Answered(Verdict::Permanent)
    );
}

#[test]
fn fan_out_finishes_a_message_when_every_recipient_is_over() {
    let t0 = Instant::now();
    let mut e = engine(3);
    let m = e.handle_accepted("Q", 3, none, t0);
    let orders: Vec<Order> = std::iter::from_fn(|| e.poll_attempt(t0)).collect();
    let ids: Vec<&str> = orders.iter().map(|o| o.webhook_id.as_str()).collect();
    assert_eq!(ids, ["Q.0", "Q.1", "Q.2"]);
    assert_eq!(
        orders[2].subject,
        Subject::Recipient {
            message: m,
            index: 2
        }
    );
    e.handle_answer(orders[0].key, answer(200), t0, 0.5);
    assert!(matches!(
        e.handle_answer(orders[1].key, answer(400), t0, 0.5),
        Outcome::DeadLetter { .. }
    ));
    e.handle_dead_letter(orders[1].key, true, t0);
    let Outcome::Retry { wait, .. } = e.handle_answer(orders[2].key, answer(500), t0, 0.5) else {
        panic!()
    };
    // Each delivery's end is progress (a restart must not post Q.0 again).
    let states: Vec<(String, Restored)> = events(&mut e)
        .into_iter()
        .filter_map(|ev| match ev {
            Event::Progress {
                webhook_id, state, ..
            } => Some((webhook_id, state)),
            Event::Finished { .. } => panic!("not yet"),
            _ => None,
        })
        .collect();
    assert_eq!(states[0], ("Q.0".into(), Restored::Delivered));
    assert_eq!(states[1], ("Q.1".into(), Restored::Dead));
    assert_eq!(states[2].0, "Q.2");
    let o = e.poll_attempt(t0 + wait).unwrap();
    e.handle_answer(o.key, answer(200), t0 + wait, 0.5);
    assert_eq!(finished(&mut e), vec![(m, true)]);
}

#[test]
fn restored_progress_resumes_where_the_last_run_stopped() {
    let t0 = Instant::now();
    let mut e = engine(3);
    let due = t0 + Duration::from_secs(40);
    let restored = |id: &str| match id {
        "Q.0" => Some(Restored::Delivered),
        "Q.1" => Some(Restored::Waiting {
            attempts: 2,
            due,
            denied_since: None,
        }),
        _ => None,
    };
    let m = e.handle_accepted("Q", 3, restored, t0);
    let first = e.poll_attempt(t0).expect("Q.2 is due now");
    assert_eq!(first.webhook_id, "Q.2");
    assert_eq!(e.poll_attempt(t0), None, "Q.0 is not posted again");
    e.handle_answer(first.key, answer(200), t0, 0.5);
    assert_eq!(e.poll_timeout(), Some(due));
    let o = e.poll_attempt(due).expect("Q.1 when due");
    assert_eq!(o.webhook_id, "Q.1");
    // Its count went on: attempt 3, so one retry left of 3.
    let Outcome::Retry { attempt, .. } = e.handle_answer(o.key, answer(503), due, 0.5) else {
        panic!()
    };
    assert_eq!(attempt, 3);
    // A message all of whose deliveries ended before the restart.
    let done = |_: &str| Some(Restored::Dead);
    let m2 = e.handle_accepted("R", 2, done, t0);
    assert_eq!(finished(&mut e), vec![(m2, true)]);
    let _ = m;
}

#[test]
fn a_redriven_dead_letter_is_delivered_without_a_message() {
    let t0 = Instant::now();
    let mut e = engine(3);
    let key = e.handle_redrive("Q9".into());
    let o = e.poll_attempt(t0).unwrap();
    assert_eq!((o.key, o.subject), (key, Subject::Redrive));
    assert_eq!(
        e.handle_answer(key, answer(200), t0, 0.5),
        Outcome::Delivered { attempts: 1 }
    );
    assert_eq!(events(&mut e), vec![]);
}

#[test]
fn a_local_failure_retries_without_touching_the_breaker() {
    let t0 = Instant::now();
    let mut e = engine(1);
    e.handle_accepted("Q1", 1, none, t0);
    let o = e.poll_attempt(t0).unwrap();
    assert!(matches!(
        e.handle_local_failure(o.key, "unreadable".into(), t0),
        Outcome::Retry { attempt: 1, .. }
    ));
    assert_eq!(e.health(), (false, false));
    let o = e.poll_attempt(t0 + Duration::from_secs(10)).unwrap();
    assert!(matches!(
        e.handle_local_failure(o.key, "unreadable".into(), t0),
        Outcome::DeadLetter { attempts: 2, .. }
    ));
}

#[test]
fn in_flight_is_bounded() {
    let t0 = Instant::now();
    let mut e = engine(3);
    for i in 0..100 {
        e.handle_accepted(&format!("Q{i}"), 1, none, t0);
    }
    let first: Vec<Order> = std::iter::from_fn(|| e.poll_attempt(t0)).collect();
    assert_eq!(first.len(), 64);
    assert_eq!(e.poll_timeout(), None, "full: only an answer wakes");
    e.handle_answer(first[0].key, answer(200), t0, 0.5);
    assert!(e.poll_attempt(t0).is_some());
    assert!(e.poll_attempt(t0).is_none());
}

#[test]
fn an_open_breaker_with_every_slot_taken_waits_for_an_answer_not_the_clock() {
    // Ten fail and open the breaker while 54 are still out, and ten new
    // ones take their slots: past the probe time, nothing may start until
    // an answer comes, so the driver must not be woken before.
    let t0 = Instant::now();
    let mut e = engine(100);
    let keys = open_with_in_flight(&mut e, t0, 64);
    for k in &keys[..10] {
        e.handle_answer(*k, answer(503), t0, 0.5);
    }
    for i in 0..20 {
        e.handle_accepted(&format!("N{i}"), 1, none, t0);
    }
    let t1 = t0 + PROBE_FIRST;
    let probe = e.poll_attempt(t1).expect("the probe takes a free slot");
    assert!(probe.probe);
    assert_eq!(e.poll_timeout(), None);
}

#[test]
fn a_shared_message_served_at_the_first_try_records_no_progress() {
    // Its done record follows at once; per-recipient records would only
    // cost spool writes.
    let t0 = Instant::now();
    let mut e = engine(3);
    let m = e.handle_accepted("Q", 10, none, t0);
    let orders: Vec<Order> = std::iter::from_fn(|| e.poll_attempt(t0)).collect();
    for o in &orders {
        e.handle_answer(o.key, answer(200), t0, 0.5);
    }
    assert_eq!(
        events(&mut e),
        vec![Event::Finished {
            message: m,
            dead: false
        }]
    );
}
