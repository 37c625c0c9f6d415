//! The writer task, on a real executor and a real file (issue 12: a failed
//! write must not drop the done records it carried).

use std::time::{Duration, Instant};

use super::record::test_envelope;
use super::*;

/// What recovery would find in shard 0's spool under `data_dir` now.
fn pending_ids(data_dir: &Path) -> Vec<String> {
    let root = data_dir.join("spool");
    let found = recover::recover(&root, &[root.join("shard-0")]).unwrap();
    found.pending.into_iter().map(|p| p.id).collect()
}

fn fail_next_writes(n: usize) {
    FAIL_WRITES.with(|f| f.set(n));
}

#[test]
fn a_failed_write_keeps_the_done_records_it_carried_issue_12() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().to_path_buf();
    let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
    ex.run(async move {
        let (spool, recovered) = Spool::open(&data_dir, 0, 1).await.unwrap();
        assert!(recovered.messages.is_empty());
        let (a, b, c) = ("000000000000000a", "000000000000000b", "000000000000000c");
        let seg_a = spool
            .commit(&test_envelope(a), b"", b"a\r\n")
            .await
            .unwrap()
            .segment;
        // "a" is in the store: its done record and message "b" share the
        // next batch, and that write fails.
        fail_next_writes(1);
        spool.mark_done([(seg_a, a)]);
        assert!(spool
            .commit(&test_envelope(b), b"", b"b\r\n")
            .await
            .is_err());
        // The next write carries the done record again.
        let seg_c = spool
            .commit(&test_envelope(c), b"", b"c\r\n")
            .await
            .unwrap()
            .segment;
        assert_eq!(
            pending_ids(&data_dir),
            [c],
            "a restart would deliver a again"
        );

        // A done record whose write fails with nothing written after it
        // is retried on its own.
        fail_next_writes(1);
        spool.mark_done([(seg_c, c)]);
        let t0 = Instant::now();
        while !pending_ids(&data_dir).is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(10), "never retried");
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        // The spare segment's zero-fill runs on the blocking pool, which
        // must finish before the executor goes.
        while spool.preparing() {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    });
}

#[test]
fn messages_read_back_by_location_and_progress_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().to_path_buf();
    let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
    ex.run(async move {
        let (spool, _) = Spool::open(&data_dir, 0, 1).await.unwrap();
        // Committed together: one batch, each with its own location.
        let ids = ["00000000000000a1", "00000000000000a2", "00000000000000a3"];
        let commits = ids.map(|id| {
            let spool = spool.clone();
            async move {
                let body = format!("Subject: {id}\r\n\r\nbody of {id}\r\n");
                let at = spool
                    .commit(&test_envelope(id), b"Received: x\r\n", body.as_bytes())
                    .await
                    .unwrap();
                (id, body, at)
            }
        });
        let mut done = Vec::new();
        for c in commits {
            done.push(c.await);
        }
        for (id, body, at) in &done {
            let c = at.read().unwrap();
            assert_eq!(c.envelope.id, *id);
            assert_eq!(
                c.message,
                [b"Received: x\r\n".as_slice(), body.as_bytes()].concat()
            );
        }
        let wait = |attempts| Progress {
            id: format!("{}.1", ids[0]),
            attempts,
            state: ProgressState::Waiting,
            due_ms: 1_800_000_000_000,
            denied_since_ms: None,
        };
        spool.note_progress(&wait(1));
        spool.note_progress(&wait(2));
        // Progress of a message that is done afterwards is moot.
        spool.note_progress(&Progress {
            id: ids[1].into(),
            ..wait(1)
        });
        spool.mark_done([(done[1].2.segment, ids[1])]);
        let root = data_dir.join("spool");
        let t0 = Instant::now();
        let found = loop {
            let found = recover::recover(&root, &[root.join("shard-0")]).unwrap();
            if found.pending.len() == 2 && found.progress.len() == 1 {
                break found;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "never written");
            glommio::timer::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(
            found.progress[&format!("{}.1", ids[0])],
            wait(2),
            "the latest wins"
        );
        // A recovered location reads back the same message.
        let (spool2, recovered) = {
            while spool.preparing() {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            drop(spool);
            Spool::open(&data_dir, 0, 1).await.unwrap()
        };
        let back: Vec<String> = recovered
            .messages
            .iter()
            .map(|m| {
                assert!(m.contents.is_none(), "recovery holds no bodies");
                m.read().unwrap().envelope.id.clone()
            })
            .collect();
        assert_eq!(back, [ids[0], ids[2]]);
        while spool2.preparing() {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    });
}

#[test]
fn flush_gives_waiting_done_records_one_write_now() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().to_path_buf();
    let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
    ex.run(async move {
        let (spool, _) = Spool::open(&data_dir, 0, 1).await.unwrap();
        let a = "000000000000000a";
        let at = spool
            .commit(&test_envelope(a), b"", b"a\r\n")
            .await
            .unwrap();
        // Every write fails: the flush says the record is still unwritten.
        fail_next_writes(usize::MAX);
        spool.mark_done([(at.segment, a)]);
        assert!(!spool.flush_done().await);
        assert_eq!(pending_ids(&data_dir), [a]);
        // Writes work again, the retry is not due yet: the flush writes it.
        fail_next_writes(0);
        assert!(spool.flush_done().await);
        assert!(pending_ids(&data_dir).is_empty());
        assert!(spool.flush_done().await, "nothing left is a success");
        while spool.preparing() {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    });
}
