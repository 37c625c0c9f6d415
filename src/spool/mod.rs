//! The per-shard durable spool.
//!
//! Each shard appends accepted messages to its own segment log under
//! `data_dir/spool/shard-N/`. A message's record is written and fdatasync'd
//! before [`Spool::commit`] returns, and the session answers `250` only
//! after that. Commits that arrive while a write is in flight wait for the
//! next one and share its fdatasync (group commit): under load one fsync
//! covers many messages.
//!
//! When a message is in the store, a done record is appended (it rides on
//! the next fdatasync). A segment is deleted when every message in it and
//! in every older segment is done, so done records are never lost before
//! the messages they cover. At start-up [`Spool::open`] reads what is left
//! and returns every message without a done record for delivery again;
//! store writes are idempotent, so a message is in the store exactly once.
//! A damaged record costs that record only, and an unreadable segment
//! that segment only (see `recover`).
//!
//! The spool never: delivers, parses messages, or answers clients.

// Reachable crate-wide for the spool check in `crate::fuzzing`.
pub(crate) mod record;
pub(crate) mod recover;
pub mod store;
mod writer;

#[cfg(feature = "fault-injection")]
pub use writer::fail_done_writes;
#[cfg(test)]
use writer::FAIL_WRITES;
use writer::{writer, Spare};

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use glommio::io::BufferedFile;

pub use record::{Envelope, Progress, ProgressState, RawJson};

/// Segments are preallocated to, and roll over at, this size.
const SEGMENT_MAX: u64 = 32 << 20;
/// At most this much is written per group commit.
const BATCH_MAX: usize = 8 << 20;
/// Done records whose write failed go out again with the next batch, or on
/// their own after this long when nothing else comes; the wait doubles
/// with each failure in a row, up to [`DONE_RETRY_MAX`].
const DONE_RETRY: std::time::Duration = std::time::Duration::from_millis(100);
const DONE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Why the spool could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A filesystem operation failed (full disk, unwritable data_dir, ...).
    #[error("spool {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The spool's writer task has stopped.
    #[error("spool writer stopped")]
    Stopped,
}

impl SpoolError {
    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SpoolError + 'a {
        move |source| SpoolError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Where a message's record lies: enough to read it back
/// ([`Location::read`]) and to record it as done ([`Spool::mark_done`]).
#[derive(Debug, Clone)]
pub struct Location {
    /// The segment's number in this run, for [`Spool::mark_done`].
    pub segment: u64,
    file: Arc<Path>,
    offset: u64,
    len: u32,
}

impl Location {
    /// Reads the message back from its segment and checks it (blocking:
    /// call on the blocking pool). The segment stays until the message is
    /// done, so this works until then.
    pub fn read(&self) -> std::io::Result<Contents> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&self.file)?;
        let mut buf = vec![0; self.len as usize];
        f.read_exact_at(&mut buf, self.offset)?;
        match record::decode_exact(&buf) {
            Some(record::Record::Message(envelope, message)) => Ok(Contents {
                envelope: *envelope,
                message,
            }),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the spool record at {} offset {} no longer checks",
                    self.file.display(),
                    self.offset
                ),
            )),
        }
    }
}

/// A message's envelope and octets.
#[derive(Debug, Clone)]
pub struct Contents {
    /// Envelope and trace data.
    pub envelope: Envelope,
    /// The message octets, `Received:` header included.
    pub message: Vec<u8>,
}

/// A message in the spool, waiting for delivery: what every part of
/// delivery needs to know of it, and its contents while they are in
/// memory. A message waiting for a retry, or recovered at start-up, holds
/// only its [`Location`]: its contents are read back when needed, so a
/// backlog costs disk, not memory.
#[derive(Debug, Clone)]
pub struct Spooled {
    /// Queue id.
    pub id: String,
    /// When it was accepted, Unix milliseconds.
    pub received_at_ms: i64,
    /// How many recipients it has.
    pub recipients: usize,
    /// Its record.
    pub at: Location,
    /// Envelope and octets, while held in memory.
    pub contents: Option<Box<Contents>>,
}

impl Spooled {
    /// A message with its contents in memory.
    pub fn loaded(contents: Contents, at: Location) -> Spooled {
        Spooled {
            id: contents.envelope.id.clone(),
            received_at_ms: contents.envelope.received_at_ms,
            recipients: contents.envelope.recipients.len(),
            at,
            contents: Some(Box::new(contents)),
        }
    }

    /// Its contents: those in memory, else read back (blocking).
    pub fn read(&self) -> std::io::Result<std::borrow::Cow<'_, Contents>> {
        match &self.contents {
            Some(c) => Ok(std::borrow::Cow::Borrowed(c)),
            None => self.at.read().map(std::borrow::Cow::Owned),
        }
    }

    /// Octets held in memory for it.
    pub fn held(&self) -> usize {
        self.contents.as_ref().map_or(0, |c| c.message.len())
    }
}

struct Segment {
    seq: u64,
    path: Arc<Path>,
    /// Messages in it without a done record yet.
    outstanding: usize,
    /// Octets it holds on disk (written, or preallocated).
    bytes: u64,
}

struct Inner {
    dir: PathBuf,
    file: Rc<BufferedFile>,
    pos: u64,
    next_seq: u64,
    /// Oldest first; the last one is being written.
    segments: VecDeque<Segment>,
    done_pending: Vec<u8>,
}

enum Write {
    Message(Vec<u8>, async_channel::Sender<Result<Location, String>>),
    Done,
    /// Write the done records waiting now, whatever their retry wait;
    /// answered with whether none is left unwritten.
    Flush(async_channel::Sender<bool>),
}

/// What [`Spool::open`] found on disk.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Messages still to deliver, oldest first, without their contents.
    pub messages: Vec<Spooled>,
    /// The latest progress of their webhook deliveries, by webhook id.
    pub progress: HashMap<String, Progress>,
    /// Damaged places skipped in segments (each usually one record); the
    /// segments holding them were copied to `spool/corrupt/`.
    pub corrupt_records: u64,
    /// Segments that could not be read at all (moved to `spool/corrupt/`).
    pub unreadable_segments: u64,
}

/// One shard's spool (cheap to clone; shard-local).
#[derive(Clone)]
pub struct Spool {
    inner: Rc<RefCell<Inner>>,
    tx: async_channel::Sender<Write>,
    /// The next segment, zero-filled ahead of time by the writer.
    spare: Rc<RefCell<Spare>>,
}

impl Spool {
    /// Opens shard `shard`'s spool (of `count` shards) under `data_dir`,
    /// recovering segments left by an earlier run. Also adopts the spools
    /// of shards that no longer exist (`shard-j` with `j % count == shard`),
    /// so lowering `shards` loses nothing. Returns the spool and what was
    /// recovered. Only the shard's own directory failing is an error; a
    /// damaged or unreadable segment is reported and counted instead.
    /// Must run on the shard.
    pub async fn open(
        data_dir: &Path,
        shard: usize,
        count: usize,
    ) -> Result<(Spool, Recovered), SpoolError> {
        let root = data_dir.join("spool");
        let dir = root.join(format!("shard-{shard}"));
        std::fs::create_dir_all(&dir).map_err(SpoolError::io("create", &dir))?;
        let mut dirs = vec![dir.clone()];
        dirs.extend(recover::adopted_dirs(&root, shard, count));
        let found = recover::recover(&root, &dirs)?;
        let mut segments: VecDeque<Segment> = VecDeque::new();
        let mut seq = 0;
        for (path, outstanding) in found.segments {
            let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
            segments.push_back(Segment {
                seq,
                path: path.into(),
                outstanding,
                bytes,
            });
            seq += 1;
        }
        let messages: Vec<Spooled> = found
            .pending
            .into_iter()
            .map(|p| Spooled {
                id: p.id,
                received_at_ms: p.received_at_ms,
                recipients: p.recipients,
                at: Location {
                    segment: p.segment as u64,
                    file: segments[p.segment].path.clone(),
                    offset: p.offset,
                    len: p.len,
                },
                contents: None,
            })
            .collect();
        let file_no = found.max_file_no + 1;
        let path = segment_path(&dir, file_no);
        let file = create_segment(&dir, &path).await?;
        segments.push_back(Segment {
            seq,
            path: path.into(),
            outstanding: 0,
            bytes: 0,
        });
        let inner = Rc::new(RefCell::new(Inner {
            dir,
            file: Rc::new(file),
            pos: 0,
            next_seq: seq + 1,
            segments,
            done_pending: Vec::new(),
        }));
        let (tx, rx) = async_channel::unbounded();
        let spare = Rc::new(RefCell::new(Spare::Preparing));
        glommio::spawn_local(writer(inner.clone(), rx, file_no + 1, spare.clone())).detach();
        let spool = Spool { inner, tx, spare };
        spool.collect_garbage();
        let recovered = Recovered {
            messages,
            progress: found.progress,
            corrupt_records: found.corrupt_records,
            unreadable_segments: found.unreadable_segments,
        };
        Ok((spool, recovered))
    }

    /// Appends a message and returns once it is on disk and fdatasync'd.
    /// `prefix` (the `Received:` header) is written before `body`.
    /// Returns where it went, for reading it back and [`Spool::mark_done`].
    pub async fn commit(
        &self,
        envelope: &Envelope,
        prefix: &[u8],
        body: &[u8],
    ) -> Result<Location, SpoolError> {
        let rec = record::encode_message(envelope, prefix, body);
        let (tx, rx) = async_channel::bounded(1);
        self.tx
            .send(Write::Message(rec, tx))
            .await
            .map_err(|_| SpoolError::Stopped)?;
        match rx.recv().await {
            Ok(Ok(at)) => Ok(at),
            Ok(Err(e)) => Err(SpoolError::Io {
                op: "write",
                path: self.inner.borrow().dir.clone(),
                source: std::io::Error::other(e),
            }),
            Err(_) => Err(SpoolError::Stopped),
        }
    }

    /// Records that these messages are in the store. Call only after the
    /// store's writes are durable.
    pub fn mark_done<'a>(&self, done: impl IntoIterator<Item = (u64, &'a str)>) {
        {
            let mut inner = self.inner.borrow_mut();
            for (seq, id) in done {
                record::encode_done(id, &mut inner.done_pending);
                if let Some(s) = inner.segments.iter_mut().find(|s| s.seq == seq) {
                    s.outstanding = s.outstanding.saturating_sub(1);
                }
            }
        }
        let _ = self.tx.try_send(Write::Done);
    }

    /// Gives the done records still waiting (for a retry after a failed
    /// write, or not written yet) one write now, without waiting for the
    /// retry's backoff; true when none is left unwritten. For shutdown:
    /// without them a restart would deliver those messages again.
    pub async fn flush_done(&self) -> bool {
        let (tx, rx) = async_channel::bounded(1);
        if self.tx.send(Write::Flush(tx)).await.is_err() {
            return self.inner.borrow().done_pending.is_empty();
        }
        rx.recv().await.unwrap_or(false)
    }

    /// Records a webhook delivery's progress (see [`Progress`]). It rides
    /// on the next write; a crash before that only means the delivery
    /// resumes from its previous progress.
    pub fn note_progress(&self, progress: &Progress) {
        record::encode_progress(progress, &mut self.inner.borrow_mut().done_pending);
        let _ = self.tx.try_send(Write::Done);
    }

    /// Octets of segment files this shard's spool holds on disk (each
    /// segment counts whole: it is preallocated, and freed only when all
    /// of its messages are done), for `spool_max_bytes`.
    pub fn disk_bytes(&self) -> u64 {
        self.inner.borrow().segments.iter().map(|s| s.bytes).sum()
    }

    /// [`Spool::disk_bytes`] once a message of about `size` octets is
    /// written: the same when it fits in the active segment's preallocated
    /// space; else a whole new segment more (it may need one), less the
    /// segments whose messages are all done (deleted once it is there).
    pub fn disk_bytes_with(&self, size: usize) -> u64 {
        let inner = self.inner.borrow();
        let fits = inner
            .segments
            .back()
            .is_some_and(|s| inner.pos + size as u64 + 4096 <= s.bytes);
        if fits {
            return inner.segments.iter().map(|s| s.bytes).sum();
        }
        let kept: u64 = inner
            .segments
            .iter()
            .skip_while(|s| s.outstanding == 0)
            .map(|s| s.bytes)
            .sum();
        kept + SEGMENT_MAX.max(size as u64)
    }

    /// True while a spare segment is being zero-filled on the blocking
    /// pool. The shard must not stop before it is done: the pool's thread
    /// would finish after the executor it answers to is gone, and panic.
    pub fn preparing(&self) -> bool {
        matches!(*self.spare.borrow(), Spare::Preparing)
    }

    /// Messages not yet in the store, over all segments of this shard.
    pub fn outstanding(&self) -> usize {
        self.inner
            .borrow()
            .segments
            .iter()
            .map(|s| s.outstanding)
            .sum()
    }

    /// Deletes fully delivered segments, oldest first, never the active one.
    fn collect_garbage(&self) {
        collect_garbage(&mut self.inner.borrow_mut());
    }
}

fn collect_garbage(inner: &mut Inner) {
    while inner.segments.len() > 1 && inner.segments[0].outstanding == 0 {
        let seg = inner.segments.pop_front().expect("len > 1");
        if let Err(e) = std::fs::remove_file(&seg.path) {
            tracing::warn!(path = %seg.path.display(), error = %e, "could not delete delivered spool segment");
        }
    }
}

async fn create_segment(dir: &Path, path: &Path) -> Result<BufferedFile, SpoolError> {
    let file = BufferedFile::create(path)
        .await
        .map_err(|e| SpoolError::io("create", path)(e.into()))?;
    // The new file's directory entry must be durable before anything in
    // the file is acknowledged.
    crate::fsutil::sync_dir(dir).map_err(SpoolError::io("sync directory", dir))?;
    Ok(file)
}

/// `seg-<file number, 16 hex digits>.log` in `dir` (read back by recovery).
fn segment_path(dir: &std::path::Path, file_no: u64) -> PathBuf {
    dir.join(format!("seg-{file_no:016x}.log"))
}

#[cfg(test)]
mod tests;
