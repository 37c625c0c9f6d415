//! The spool's writer task: group commit into preallocated segments.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::BufferedFile;

use super::{
    collect_garbage, segment_path, Inner, Location, Segment, Write, BATCH_MAX, DONE_RETRY,
    DONE_RETRY_MAX, SEGMENT_MAX,
};

/// The next segment, prepared ahead of need.
pub(super) enum Spare {
    /// Being zero-filled on the blocking pool.
    Preparing,
    /// Zero-filled, synced and open.
    Ready(PathBuf, BufferedFile),
    /// Preparation failed (full disk?); retry after this instant.
    Failed(std::time::Instant),
}

/// Zero-fills a new segment file of `SEGMENT_MAX` octets and makes it and
/// its directory entry durable. Blocking.
fn prefill(dir: &Path, path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    let result = (|| {
        for _ in 0..SEGMENT_MAX / (1 << 20) {
            f.write_all(&zeros)?;
        }
        f.sync_all()?;
        crate::fsutil::sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn prepare_spare(dir: PathBuf, file_no: u64, slot: Rc<RefCell<Spare>>) {
    *slot.borrow_mut() = Spare::Preparing;
    glommio::spawn_local(async move {
        let path = segment_path(&dir, file_no);
        let (d, p) = (dir.clone(), path.clone());
        let made = glommio::executor()
            .spawn_blocking(move || prefill(&d, &p))
            .await;
        let opened = match made {
            Ok(()) => glommio::io::OpenOptions::new()
                .read(true)
                .write(true)
                .buffered_open(&path)
                .await
                .map_err(std::io::Error::from),
            Err(e) => Err(e),
        };
        *slot.borrow_mut() = match opened {
            Ok(f) => Spare::Ready(path, f),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot preallocate the next spool segment; appending instead (slower fdatasync)");
                Spare::Failed(std::time::Instant::now() + std::time::Duration::from_secs(10))
            }
        };
    })
    .detach();
}

/// The writer task: takes everything queued, writes it with one write and
/// one fdatasync, answers every committer in the batch, repeats.
///
/// Segments are zero-filled ahead of time (see [`prefill`]): a write into
/// blocks that already exist changes no file metadata, so its fdatasync
/// flushes data only and never waits for a filesystem journal commit. The
/// first segment after start-up, and any segment written while no spare is
/// ready, is appended to instead, which is correct, only slower.
pub(super) async fn writer(
    inner: Rc<RefCell<Inner>>,
    rx: async_channel::Receiver<Write>,
    mut file_no: u64,
    slot: Rc<RefCell<Spare>>,
) {
    let dir = inner.borrow().dir.clone();
    prepare_spare(dir.clone(), file_no, slot.clone());
    file_no += 1;
    let mut prefilled = false;
    // Failed writes in a row that left done records to write again.
    let mut failures = 0u32;
    loop {
        let first = if inner.borrow().done_pending.is_empty() {
            rx.recv().await
        } else {
            let wait = DONE_RETRY
                .saturating_mul(1 << failures.saturating_sub(1).min(16))
                .min(DONE_RETRY_MAX);
            futures_lite::future::or(rx.recv(), async move {
                glommio::timer::sleep(wait).await;
                Ok(Write::Done)
            })
            .await
        };
        let Ok(first) = first else {
            break;
        };
        let mut buf = Vec::new();
        let mut waiters = Vec::new();
        let mut flushers = Vec::new();
        let mut next = Some(first);
        while let Some(w) = next.take() {
            match w {
                Write::Message(rec, tx) => {
                    let (start, len) = (buf.len() as u64, rec.len() as u32);
                    // The first record becomes the batch buffer: a message
                    // written alone is not copied again.
                    if buf.is_empty() {
                        buf = rec;
                    } else {
                        buf.extend_from_slice(&rec);
                    }
                    waiters.push((tx, start, len));
                }
                Write::Flush(tx) => flushers.push(tx),
                Write::Done => {}
            }
            if buf.len() < BATCH_MAX {
                next = rx.try_recv().ok();
            }
        }
        let len = buf.len() as u64;
        let full = inner.borrow().pos + len > SEGMENT_MAX;
        if !prefilled || full {
            let spare = std::mem::replace(&mut *slot.borrow_mut(), Spare::Preparing);
            match spare {
                Spare::Ready(path, file) => {
                    let mut i = inner.borrow_mut();
                    let seq = i.next_seq;
                    i.next_seq += 1;
                    i.file = Rc::new(file);
                    i.pos = 0;
                    i.segments.push_back(Segment {
                        seq,
                        path: path.into(),
                        outstanding: 0,
                        bytes: SEGMENT_MAX,
                    });
                    prefilled = true;
                    drop(i);
                    prepare_spare(dir.clone(), file_no, slot.clone());
                    file_no += 1;
                }
                Spare::Failed(retry) if std::time::Instant::now() >= retry => {
                    prepare_spare(dir.clone(), file_no, slot.clone());
                    file_no += 1;
                }
                other => *slot.borrow_mut() = other,
            }
        }
        let (file, pos, seq, seg_path, done) = {
            let mut i = inner.borrow_mut();
            let done = std::mem::take(&mut i.done_pending);
            buf.extend_from_slice(&done);
            let (seq, seg_path) = i
                .segments
                .back()
                .map(|s| (s.seq, s.path.clone()))
                .expect("the active segment is listed");
            (i.file.clone(), i.pos, seq, seg_path, done)
        };
        if buf.is_empty() {
            for f in flushers {
                let _ = f.try_send(true);
            }
            continue;
        }
        let len = buf.len() as u64;
        #[cfg(feature = "fault-injection")]
        let result =
            if waiters.is_empty() && flushers.is_empty() && FAIL_DONE.with(std::cell::Cell::get) {
                Err(std::io::Error::other("fault injection: XFAULT DONE-FAIL"))
            } else {
                write_and_sync(&file, buf, pos).await
            };
        #[cfg(not(feature = "fault-injection"))]
        let result = write_and_sync(&file, buf, pos).await;
        {
            let mut i = inner.borrow_mut();
            match &result {
                Ok(()) => {
                    i.pos += len;
                    let end = i.pos;
                    if let Some(s) = i.segments.back_mut() {
                        s.outstanding += waiters.len();
                        s.bytes = s.bytes.max(end);
                    }
                    failures = 0;
                }
                Err(e) => {
                    tracing::error!(dir = %i.dir.display(), error = %e, done_records_kept = !done.is_empty(),
                        "spool write failed; clients get 451 4.3.0");
                    if !done.is_empty() {
                        // Those messages are in the store already. Without
                        // their done records a restart would deliver them
                        // again: the records go out with the next write.
                        let newer = std::mem::replace(&mut i.done_pending, done);
                        i.done_pending.extend_from_slice(&newer);
                        failures += 1;
                    }
                }
            }
        }
        for (w, start, len) in waiters {
            let _ = w.try_send(
                result
                    .as_ref()
                    .map(|_| Location {
                        segment: seq,
                        file: seg_path.clone(),
                        offset: pos + start,
                        len,
                    })
                    .map_err(|e| e.to_string()),
            );
        }
        for f in flushers {
            let _ = f.try_send(result.is_ok());
        }
        collect_garbage(&mut inner.borrow_mut());
    }
}

#[cfg(feature = "fault-injection")]
thread_local! {
    /// `XFAULT DONE-FAIL`: on this shard, writes of done records alone fail.
    static FAIL_DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Test-only fault (`XFAULT DONE-FAIL`, fault-injection builds): from now
/// on this shard's writes that carry done records and no message fail, as
/// on a full disk, but for the final one at shutdown
/// ([`super::Spool::flush_done`]).
#[cfg(feature = "fault-injection")]
pub fn fail_done_writes() {
    FAIL_DONE.with(|f| f.set(true));
}

#[cfg(test)]
thread_local! {
    /// Writes that fail (as on a full disk) before writes work again.
    pub(super) static FAIL_WRITES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

async fn write_and_sync(file: &BufferedFile, buf: Vec<u8>, pos: u64) -> std::io::Result<()> {
    #[cfg(test)]
    if FAIL_WRITES.with(|n| n.replace(n.get().saturating_sub(1))) > 0 {
        return Err(std::io::Error::other("injected write failure"));
    }
    let len = buf.len();
    let n = file
        .write_at(buf, pos)
        .await
        .map_err(std::io::Error::from)?;
    if n != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("short write: {n} of {len} octets (disk full?)"),
        ));
    }
    file.fdatasync().await.map_err(std::io::Error::from)
}
