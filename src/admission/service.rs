//! The ban service: one thread that owns the [`BanBook`], takes violation
//! reports from the shards, persists bans in `data_dir/bans.json` and
//! publishes every change as a new [`BanList`] snapshot.
//!
//! Shards never wait on it: a report is a `try_send` on a bounded channel
//! (a full channel drops the report and counts it in
//! `gomail_ban_reports_dropped_total`), and a shard reads the ban list once
//! per connection from its snapshot. Reports are handled in batches, with
//! one write of the ban file per batch. A manual ban is
//! published before the API call returns, so the next connection on any
//! shard sees it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shards::Snapshot;

use super::bans::{Ban, BanBook, BanList, Policy};
use super::{Cidr, Violation};

/// Reports waiting for the service before shards start dropping them.
const REPORT_QUEUE: usize = 16 * 1024;

/// The longest the service sleeps between expiry checks.
const TICK: Duration = Duration::from_secs(1);

/// Reports handled before one commit: under a flood, bans are written to
/// disk once per batch, not once per ban.
const BATCH: usize = 1024;

/// A shard's report of one violation.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// The client key (see `client_key`).
    pub key: IpAddr,
    /// What it did.
    pub kind: Violation,
    /// The shard that saw it.
    pub shard: usize,
}

/// Why the ban file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BanError {
    /// Reading or writing `data_dir/bans.json` failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

struct Inner {
    book: Mutex<BanBook>,
    list: Snapshot<BanList>,
    /// Replaced by a reload ([`Bans::set_policy`]).
    policy: Mutex<Policy>,
    path: PathBuf,
    /// Bans made, by source (auto, manual).
    made: [AtomicU64; 2],
    /// Reports dropped because the queue was full.
    dropped: AtomicU64,
}

/// The ban service's handle: shards report through [`Bans::reporter`],
/// the control plane bans and lists through it.
#[derive(Clone)]
pub struct Bans {
    inner: Arc<Inner>,
}

/// A shard's end of the report channel.
#[derive(Clone)]
pub struct Reporter {
    tx: SyncSender<Report>,
    inner: Arc<Inner>,
}

impl Reporter {
    /// Reports a violation; never waits.
    pub fn report(&self, r: Report) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(r) {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Unix milliseconds as RFC 3339 (UTC, seconds).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Bans {
    /// Loads `data_dir/bans.json` (a damaged file is set aside and
    /// reported, and the service starts with no bans) and starts the thread.
    /// Returns the handle and the reporter the shards clone.
    pub fn start(data_dir: &Path, policy: Policy) -> Result<(Bans, Reporter), BanError> {
        let path = data_dir.join("bans.json");
        let now = now_ms();
        let saved = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            read => match read.map_err(|e| e.to_string()).and_then(|bytes| {
                serde_json::from_slice::<Vec<Ban>>(&bytes).map_err(|e| e.to_string())
            }) {
                Ok(bans) => bans,
                Err(e) => {
                    // Unreadable or damaged: set aside, and serve without
                    // bans rather than not at all.
                    let aside = path.with_extension(format!("json.damaged-{}", now / 1000));
                    if let Err(source) = std::fs::rename(&path, &aside) {
                        return Err(BanError::Io {
                            op: "set aside the unreadable ban file",
                            path,
                            source,
                        });
                    }
                    tracing::error!(path = %path.display(), moved_to = %aside.display(), error = %e, "the ban file is damaged; it was set aside and gomail starts with no bans");
                    Vec::new()
                }
            },
        };
        let book = BanBook::with_bans(saved, now);
        if !book.is_empty() {
            tracing::info!(bans = book.len(), path = %path.display(), "bans restored");
        }
        let inner = Arc::new(Inner {
            list: Snapshot::new(book.snapshot()),
            book: Mutex::new(book),
            policy: Mutex::new(policy),
            path,
            made: [AtomicU64::new(0), AtomicU64::new(0)],
            dropped: AtomicU64::new(0),
        });
        let (tx, rx) = std::sync::mpsc::sync_channel(REPORT_QUEUE);
        let worker = inner.clone();
        std::thread::Builder::new()
            .name("bans".into())
            .spawn(move || run(&worker, &rx))
            .map_err(|source| BanError::Io {
                op: "start the ban thread for",
                path: inner.path.clone(),
                source,
            })?;
        let reporter = Reporter {
            tx,
            inner: inner.clone(),
        };
        Ok((Bans { inner }, reporter))
    }

    /// The snapshot shards read.
    pub fn list(&self) -> Snapshot<BanList> {
        self.inner.list.clone()
    }

    /// Bans `net` by hand for `duration` (persisted, then published). An
    /// error means the ban applies but was not saved.
    pub fn ban(&self, net: Cidr, duration: Duration, reason: String) -> Result<Ban, BanError> {
        let mut book = self.inner.book.lock().expect("ban book");
        let ban = book.ban(net, duration, reason, now_ms());
        // In force even when it cannot be saved; the error says it will
        // not outlast a restart.
        let saved = self.inner.commit_or_publish(&book);
        drop(book);
        self.inner.made[1].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(event = "ip_banned", ip = %ban.net, reason = %ban.reason, count = ban.count, source = "manual", expires = %rfc3339(ban.expires_ms), "client banned by an operator");
        saved.map(|()| ban)
    }

    /// Lifts the ban of exactly `net`; `None` when there was none.
    pub fn unban(&self, net: Cidr) -> Result<Option<Ban>, BanError> {
        let mut book = self.inner.book.lock().expect("ban book");
        let Some(ban) = book.unban(net) else {
            return Ok(None);
        };
        self.inner.commit_or_publish(&book)?;
        drop(book);
        tracing::warn!(event = "ip_unbanned", ip = %ban.net, reason = %ban.reason, count = ban.count, source = ban.source.as_str(), "ban lifted by an operator");
        Ok(Some(ban))
    }

    /// The bans in force, by block.
    pub fn bans(&self) -> Vec<Ban> {
        let now = now_ms();
        let book = self.inner.book.lock().expect("ban book");
        book.bans().filter(|b| b.active(now)).cloned().collect()
    }

    /// Bans in force now, bans made since start by source (auto,
    /// manual), and violation reports dropped because the service was
    /// behind, for `/metrics`.
    pub fn counts(&self) -> (u64, [u64; 2], u64) {
        let now = now_ms();
        let active = {
            let book = self.inner.book.lock().expect("ban book");
            book.bans().filter(|b| b.active(now)).count() as u64
        };
        let made = [
            self.inner.made[0].load(Ordering::Relaxed),
            self.inner.made[1].load(Ordering::Relaxed),
        ];
        (active, made, self.inner.dropped.load(Ordering::Relaxed))
    }

    /// The configured `ban_duration`.
    pub fn default_duration(&self) -> Duration {
        self.inner.policy().duration
    }

    /// Applies a reloaded policy to violations from now on; bans in force
    /// keep their expiry.
    pub fn set_policy(&self, policy: Policy) {
        *self.inner.policy.lock().expect("ban policy") = policy;
    }
}

impl Inner {
    fn policy(&self) -> Policy {
        *self.policy.lock().expect("ban policy")
    }

    /// Like [`Inner::commit`], but publishes the bans even when they cannot
    /// be written (they hold until gomail stops), and returns the error.
    fn commit_or_publish(&self, book: &BanBook) -> Result<(), BanError> {
        self.commit(book)
            .inspect_err(|_| self.list.store(book.snapshot()))
    }

    /// Writes the bans durably, then publishes them.
    fn commit(&self, book: &BanBook) -> Result<(), BanError> {
        let bans: Vec<&Ban> = book.bans().collect();
        let json = serde_json::to_vec(&bans).expect("bans serialize");
        let err = |source| BanError::Io {
            op: "write",
            path: self.path.clone(),
            source,
        };
        crate::fsutil::replace_file(&self.path, &json, 0o600).map_err(err)?;
        if let Some(dir) = self.path.parent() {
            crate::fsutil::sync_dir(dir).map_err(err)?;
        }
        self.list.store(book.snapshot());
        Ok(())
    }
}

fn run(inner: &Inner, rx: &Receiver<Report>) {
    loop {
        let wait = {
            let book = inner.book.lock().expect("ban book");
            book.next_expiry()
                .map(|e| {
                    Duration::from_millis((e - now_ms()).clamp(0, TICK.as_millis() as i64) as u64)
                })
                .unwrap_or(TICK)
        };
        let first = match rx.recv_timeout(wait) {
            Ok(r) => Some(r),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if let Some(first) = first {
            let policy = inner.policy();
            let mut book = inner.book.lock().expect("ban book");
            let mut made = Vec::new();
            for r in std::iter::once(first).chain(rx.try_iter().take(BATCH - 1)) {
                if let Some(ban) = book.violation(r.key, r.kind, &policy, Instant::now(), now_ms())
                {
                    made.push((ban, r.shard));
                }
            }
            if !made.is_empty() {
                // Published even when the write fails: the bans hold for
                // this run, and the error says they will not last.
                if let Err(e) = inner.commit_or_publish(&book) {
                    tracing::error!(error = %e, "bans not saved; they hold until gomail restarts");
                }
            }
            drop(book);
            for (ban, shard) in made {
                inner.made[0].fetch_add(1, Ordering::Relaxed);
                tracing::warn!(event = "ip_banned", ip = %ban.net, reason = %ban.reason, count = ban.count, shard, source = "auto", expires = %rfc3339(ban.expires_ms), "client banned automatically");
            }
        }
        let mut book = inner.book.lock().expect("ban book");
        let ended = book.expire(now_ms());
        if ended.is_empty() {
            continue;
        }
        if let Err(e) = inner.commit_or_publish(&book) {
            tracing::error!(error = %e, "expired bans not saved");
        }
        drop(book);
        for b in ended {
            tracing::info!(event = "ban_expired", ip = %b.net, reason = %b.reason, count = b.count, source = b.source.as_str(), "ban expired");
        }
    }
}
