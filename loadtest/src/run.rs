//! The run: concurrent sessions (tokio tasks) share one counter of messages
//! to send. Each session claims the next sequence number, opens a
//! connection if it has none, sends the message, and in `perconn` mode (or
//! after `per_conn` messages in `reuse` mode) says QUIT.
//!
//! A claimed message is attempted once: a refused reply or a broken
//! connection counts one error, drops the connection and moves on, so a run
//! is bounded by the message count even against a server refusing
//! everything. The whole phase is also bounded by a deadline.
//!
//! With `--handshake-only` the unit of work is a TLS handshake instead of a
//! message: each claimed number opens a connection, does the handshake and
//! says QUIT.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::client::{Commands, Conn, Dial, Opened};
use crate::message::{dot_stuff, Template, TERMINATOR};
use crate::report::Stats;
use crate::tls::{Negotiated, Tls};

/// Distinct error texts kept for the report.
const MAX_SAMPLES: usize = 5;

/// Connection handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// One message per connection, then QUIT.
    Perconn,
    /// `--per-conn` messages per connection, then QUIT.
    Reuse,
}

impl Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Perconn => "perconn",
            Mode::Reuse => "reuse",
        }
    }
}

/// Fixed for the whole run.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) server: SocketAddr,
    /// Bound round-robin, one per new connection; empty: let the kernel pick.
    pub(crate) sources: Vec<IpAddr>,
    pub(crate) sessions: usize,
    pub(crate) mode: Mode,
    pub(crate) per_conn: u64,
    pub(crate) size: usize,
    pub(crate) pipelining: bool,
    pub(crate) io_timeout: Duration,
    pub(crate) template: Template,
    /// `--data-file`: the wire form sent as every message, instead of
    /// messages built from `template`.
    pub(crate) data: Option<Vec<u8>>,
    pub(crate) commands: Commands,
    /// Round-robin position in `sources`, across phases.
    pub(crate) next_source: AtomicUsize,
    /// Set once any connection used PIPELINING.
    pub(crate) pipelined: AtomicBool,
    /// STARTTLS or implicit TLS; `None`: plain SMTP.
    pub(crate) tls: Option<Tls>,
    /// Count TLS handshakes, not messages.
    pub(crate) handshake_only: bool,
    /// What the first TLS connection negotiated.
    pub(crate) negotiated: OnceLock<Negotiated>,
}

impl Settings {
    fn source(&self) -> Option<IpAddr> {
        if self.sources.is_empty() {
            return None;
        }
        let i = self.next_source.fetch_add(1, Ordering::Relaxed);
        Some(self.sources[i % self.sources.len()])
    }

    /// Opens a connection and records what opening it took.
    async fn open(&self, stats: &mut Stats) -> Result<Conn, String> {
        let dial = Dial {
            server: self.server,
            source: self.source(),
            tls: self.tls.as_ref(),
            handshake_only: self.handshake_only,
            io_timeout: self.io_timeout,
        };
        let Opened {
            conn,
            connected,
            handshake,
        } = Conn::open(dial, &self.commands).await?;
        stats.record_connect(connected);
        if let Some(took) = handshake {
            stats.record_handshake(took);
            if self.negotiated.get().is_none() {
                if let Some(n) = conn.negotiated() {
                    let _ = self.negotiated.set(n);
                }
            }
        }
        if self.pipelining && conn.pipelining() {
            self.pipelined.store(true, Ordering::Relaxed);
        }
        Ok(conn)
    }
}

/// What one phase (warm-up or measured) produced.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) stats: Stats,
    pub(crate) samples: Vec<String>,
    pub(crate) elapsed: Duration,
    pub(crate) timed_out: bool,
}

/// State shared by the sessions of one phase.
struct Phase {
    settings: Arc<Settings>,
    /// Next sequence number to claim.
    next: AtomicU64,
    /// One past the last sequence number of the phase.
    end: u64,
    samples: Mutex<Vec<String>>,
}

impl Phase {
    fn claim(&self) -> Option<u64> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        (seq < self.end).then_some(seq)
    }

    fn error(&self, stats: &mut Stats, what: String) {
        stats.errors += 1;
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() < MAX_SAMPLES && !samples.contains(&what) {
            samples.push(what);
        }
    }
}

/// Sends messages `first .. first + count` over `settings.sessions`
/// sessions, stopping at `deadline`.
pub(crate) async fn phase(
    settings: Arc<Settings>,
    first: u64,
    count: u64,
    deadline: Instant,
) -> Outcome {
    let sessions = settings.sessions;
    let phase = Arc::new(Phase {
        settings,
        next: AtomicU64::new(first),
        end: first + count,
        samples: Mutex::new(Vec::new()),
    });
    let started = Instant::now();
    let tasks: Vec<_> = (0..sessions)
        .map(|_| {
            let phase = phase.clone();
            tokio::spawn(async move {
                let mut stats = Stats::new();
                let run = tokio::time::timeout_at(deadline, session(&phase, &mut stats));
                let timed_out = run.await.is_err();
                (stats, timed_out)
            })
        })
        .collect();
    let mut stats = Stats::new();
    let mut timed_out = false;
    for task in tasks {
        match task.await {
            Ok((s, t)) => {
                stats.merge(&s);
                timed_out |= t;
            }
            Err(e) => phase.error(&mut stats, format!("session task failed: {e}")),
        }
    }
    let elapsed = started.elapsed();
    let samples = std::mem::take(&mut *phase.samples.lock().unwrap_or_else(|p| p.into_inner()));
    Outcome {
        stats,
        samples,
        elapsed,
        timed_out,
    }
}

/// One session: claims and sends messages until none are left.
async fn session(phase: &Phase, stats: &mut Stats) {
    let s = &*phase.settings;
    let mut conn: Option<Conn> = None;
    let mut used = 0u64;
    let mut message = Vec::with_capacity(s.size);
    let mut wire = Vec::with_capacity(s.size + s.size / 32 + 16);
    while let Some(seq) = phase.claim() {
        if s.handshake_only {
            let quit = match s.open(stats).await {
                Ok(c) => c.quit().await,
                Err(e) => Err(e),
            };
            if let Err(e) = quit {
                phase.error(stats, e);
            }
            continue;
        }
        if conn.is_none() {
            match s.open(stats).await {
                Ok(c) => {
                    conn = Some(c);
                    used = 0;
                }
                Err(e) => {
                    phase.error(stats, e);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let payload: &[u8] = match &s.data {
            Some(data) => data,
            None => {
                if let Err(e) = s.template.build(seq, s.size, &mut message) {
                    // Checked at start-up; kept as an error rather than a panic.
                    phase.error(stats, e);
                    continue;
                }
                wire.clear();
                dot_stuff(&message, &mut wire);
                wire.extend_from_slice(TERMINATOR);
                &wire
            }
        };
        match c.send(&s.commands, payload, s.pipelining).await {
            Ok(latency) => {
                stats.record_ok(latency);
                used += 1;
            }
            Err(e) => {
                phase.error(stats, e);
                conn = None;
                continue;
            }
        }
        if s.mode == Mode::Perconn || used >= s.per_conn {
            if let Some(c) = conn.take() {
                if let Err(e) = c.quit().await {
                    phase.error(stats, e);
                }
            }
        }
    }
    if let Some(c) = conn {
        if let Err(e) = c.quit().await {
            phase.error(stats, e);
        }
    }
}
