//! The writer task, on a real executor and a real file (issue 12: a failed
//! write must not drop the done records it carried).

use std::time::{Duration, Instant};

use super::record::test_envelope;
use super::*;

/// What recovery would find in shard 0's spool under `data_dir` now.
fn pending_ids(data_dir: &Path) -> Vec<String> {
    let root = data_dir.join("spool");
    let found = recover::recover(&root, &[root.join("shard-0")]).unwrap();
    found.pending.into_iter().map(|(_, e, _)| e.id).collect()
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
            .unwrap();
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
            .unwrap();
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
fn flush_gives_waiting_done_records_one_write_now() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().to_path_buf();
    let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
    ex.run(async move {
        let (spool, _) = Spool::open(&data_dir, 0, 1).await.unwrap();
        let a = "000000000000000a";
        let seg = spool
            .commit(&test_envelope(a), b"", b"a\r\n")
            .await
            .unwrap();
        // Every write fails: the flush says the record is still unwritten.
        fail_next_writes(usize::MAX);
        spool.mark_done([(seg, a)]);
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
