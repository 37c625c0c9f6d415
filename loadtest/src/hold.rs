//! `--hold N`: idle connections (slowloris). N connections are opened, at
//! most `--sessions` at a time so the server's accept backlog is not
//! overrun, round-robin over `--sources`; each reads the 220 greeting,
//! says EHLO, reads the whole reply and is then left idle. With all of them
//! held, a fresh client from `--probe-source` measures how long the server
//! takes to greet it, and `--server-pid` shows the server's memory per held
//! connection.
//!
//! The steps, in order: RSS before; open; RSS held; settle; count the
//! connections still open; RSS settled; probes; hold; count again; close.
//! Every network wait has the I/O timeout and the whole run the deadline:
//! once it passes the remaining steps are skipped, the connections are
//! closed, and the report names the stage reached. The status is `ok`
//! (exit 0) only when all N were held to the end, none closed by the
//! server, and every probe was greeted.

mod args;
mod limits;
mod report;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::client::connect;
use crate::reply::{read_reply, Reply};

pub(crate) use args::{Common, HoldArgs};
use limits::check_ports;
pub(crate) use limits::{check_fds, ports_per_source, raise_nofile, vm_rss_kb};
pub(crate) use report::HoldReport;

/// Distinct failure texts kept for the report.
const MAX_SAMPLES: usize = 5;

/// Most connections one run may hold.
pub(crate) const MAX_HOLD: u64 = 200_000;

/// How often the opening prints its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Fixed for the whole run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) server: SocketAddr,
    /// Bound round-robin; empty: let the kernel pick.
    pub(crate) sources: Vec<IpAddr>,
    /// Connections to hold.
    pub(crate) count: usize,
    /// Connections being opened at once.
    pub(crate) sessions: usize,
    /// `EHLO <name>\r\n`.
    pub(crate) ehlo: Vec<u8>,
    pub(crate) io_timeout: Duration,
    /// The whole run.
    pub(crate) limit: Duration,
    /// Wait once all are held, before measuring.
    pub(crate) settle: Duration,
    pub(crate) probes: usize,
    pub(crate) probe_source: IpAddr,
    pub(crate) server_pid: Option<u32>,
    /// Wait after the probes, before closing.
    pub(crate) hold: Duration,
    /// Print the opening's progress to stderr.
    pub(crate) progress: bool,
}

impl Plan {
    fn source(&self, i: usize) -> Option<IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[i % self.sources.len()])
    }
}

/// How far a run got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Opening,
    Settling,
    Probing,
    Holding,
    Done,
}

impl Stage {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stage::Opening => "opening",
            Stage::Settling => "settling",
            Stage::Probing => "probing",
            Stage::Holding => "holding",
            Stage::Done => "done",
        }
    }
}

/// Why a connection (or a probe) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// The server answered with a refusal (`421` at the greeting, ...).
    Refused,
    /// No answer within the I/O timeout.
    Timeout,
    /// Creating, binding or connecting the socket failed.
    Connect,
    /// The server closed or reset the connection before its reply.
    Closed,
    /// A malformed reply or another I/O error.
    Other,
}

impl Class {
    pub(crate) const ALL: [Class; 5] = [
        Class::Refused,
        Class::Timeout,
        Class::Connect,
        Class::Closed,
        Class::Other,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Class::Refused => "refused",
            Class::Timeout => "timeout",
            Class::Connect => "connect",
            Class::Closed => "closed",
            Class::Other => "other",
        }
    }
}

/// One failure: its class, the reply code if refused, and a text naming
/// the step (`greeting: 421 4.3.2 busy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) class: Class,
    pub(crate) code: Option<u16>,
    pub(crate) text: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Failure {
    fn io(step: &str, e: &io::Error) -> Failure {
        use io::ErrorKind::*;
        let class = match e.kind() {
            _ if step == "connect" => Class::Connect,
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => Class::Closed,
            _ => Class::Other,
        };
        Failure {
            class,
            code: None,
            text: format!("{step}: {e}"),
        }
    }

    fn refused(step: &str, reply: &Reply) -> Failure {
        Failure {
            class: Class::Refused,
            code: Some(reply.code),
            text: format!("{step}: {reply}"),
        }
    }
}

/// Failures counted by class, refusals by code, and a few texts.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Tally {
    pub(crate) by_class: [u64; Class::ALL.len()],
    pub(crate) refused_codes: BTreeMap<u16, u64>,
    pub(crate) samples: Vec<String>,
}

impl Tally {
    pub(crate) fn record(&mut self, f: Failure) {
        self.by_class[f.class as usize] += 1;
        if let Some(code) = f.code {
            *self.refused_codes.entry(code).or_default() += 1;
        }
        if self.samples.len() < MAX_SAMPLES && !self.samples.contains(&f.text) {
            self.samples.push(f.text);
        }
    }

    pub(crate) fn merge(&mut self, other: Tally) {
        for (a, b) in self.by_class.iter_mut().zip(other.by_class) {
            *a += b;
        }
        for (code, n) in other.refused_codes {
            *self.refused_codes.entry(code).or_default() += n;
        }
        for s in other.samples {
            if self.samples.len() < MAX_SAMPLES && !self.samples.contains(&s) {
                self.samples.push(s);
            }
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.by_class.iter().sum()
    }

    pub(crate) fn count(&self, class: Class) -> u64 {
        self.by_class[class as usize]
    }
}

/// Runs `fut` under `limit`, naming `step` in any failure.
async fn step<T>(
    limit: Duration,
    step: &str,
    fut: impl Future<Output = io::Result<T>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::io(step, &e)),
        Err(_) => Err(Failure {
            class: Class::Timeout,
            code: None,
            text: format!("{step}: no answer within {}s", limit.as_secs_f64()),
        }),
    }
}

/// Connects from `source`, reads the greeting, says EHLO and reads its
/// whole reply; returns the bare stream (no buffers kept while idle).
async fn open_one(plan: &Plan, source: Option<IpAddr>) -> Result<TcpStream, Failure> {
    let t = plan.io_timeout;
    let mut stream = step(t, "connect", connect(plan.server, source)).await?;
    let (r, mut w) = stream.split();
    let mut r = BufReader::with_capacity(1024, r);
    let mut scratch = Vec::new();
    let greeting = step(t, "greeting", read_reply(&mut r, &mut scratch)).await?;
    if greeting.code != 220 {
        return Err(Failure::refused("greeting", &greeting));
    }
    step(t, "EHLO", w.write_all(&plan.ehlo)).await?;
    let ehlo = step(t, "EHLO", read_reply(&mut r, &mut scratch)).await?;
    if !ehlo.is_positive() {
        return Err(Failure::refused("EHLO", &ehlo));
    }
    Ok(stream)
}

/// One probe from `--probe-source`: the time from creating the socket to
/// the whole 220 line; then QUIT, its reply, close.
async fn probe(plan: &Plan) -> Result<Duration, Failure> {
    let t = plan.io_timeout;
    let started = std::time::Instant::now();
    let mut stream = step(t, "connect", connect(plan.server, Some(plan.probe_source))).await?;
    let (r, mut w) = stream.split();
    let mut r = BufReader::with_capacity(1024, r);
    let mut scratch = Vec::new();
    let greeting = step(t, "greeting", read_reply(&mut r, &mut scratch)).await?;
    let took = started.elapsed();
    if greeting.code != 220 {
        return Err(Failure::refused("greeting", &greeting));
    }
    step(t, "QUIT", w.write_all(b"QUIT\r\n")).await?;
    let bye = step(t, "QUIT", read_reply(&mut r, &mut scratch)).await?;
    if !bye.is_positive() {
        return Err(Failure::refused("QUIT", &bye));
    }
    let _ = step(t, "close", w.shutdown()).await;
    Ok(took)
}

/// Counters shared by the openers, for progress.
#[derive(Default)]
struct Opening {
    next: AtomicUsize,
    held: AtomicUsize,
    failed: AtomicUsize,
}

/// One opener: claims connection numbers until none are left or the
/// deadline passes. Returns what it holds, its failures, and whether the
/// deadline stopped it.
async fn opener(
    plan: Arc<Plan>,
    shared: Arc<Opening>,
    deadline: Instant,
) -> (Vec<TcpStream>, Tally, bool) {
    let mut held = Vec::new();
    let mut tally = Tally::default();
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= plan.count {
            return (held, tally, false);
        }
        match tokio::time::timeout_at(deadline, open_one(&plan, plan.source(i))).await {
            Err(_) => return (held, tally, true),
            Ok(Ok(s)) => {
                held.push(s);
                shared.held.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(f)) => {
                tally.record(f);
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Opens every connection; returns those held, the failures, and whether
/// the deadline cut the opening short.
async fn open_all(plan: &Arc<Plan>, deadline: Instant) -> (Vec<TcpStream>, Tally, bool) {
    let shared = Arc::new(Opening::default());
    let progress = plan.progress.then(|| {
        let (shared, count) = (shared.clone(), plan.count);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!(
                    "loadtest: opening: {} of {count} held, {} failed",
                    shared.held.load(Ordering::Relaxed),
                    shared.failed.load(Ordering::Relaxed)
                );
            }
        })
    });
    let tasks: Vec<_> = (0..plan.sessions.min(plan.count))
        .map(|_| tokio::spawn(opener(plan.clone(), shared.clone(), deadline)))
        .collect();
    let mut held = Vec::with_capacity(plan.count);
    let mut tally = Tally::default();
    let mut timed_out = false;
    for task in tasks {
        match task.await {
            Ok((h, t, late)) => {
                held.extend(h);
                tally.merge(t);
                timed_out |= late;
            }
            Err(e) => tally.record(Failure {
                class: Class::Other,
                code: None,
                text: format!("opener task failed: {e}"),
            }),
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    (held, tally, timed_out)
}

/// Drops the connections the server has closed (or written to: on an idle
/// SMTP session that is a `421` before closing); returns how many remain.
fn sweep(held: &mut Vec<TcpStream>) -> usize {
    let mut byte = [0u8; 1];
    held.retain(
        |s| matches!(s.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
    );
    held.len()
}

/// Sleeps `wait`, but not past `deadline`; false if the deadline came first.
async fn wait(wait: Duration, deadline: Instant) -> bool {
    let until = Instant::now() + wait;
    tokio::time::sleep_until(until.min(deadline)).await;
    until <= deadline
}

/// Reads the server's RSS, or notes why it could not.
fn rss(plan: &Plan, warnings: &mut Vec<String>) -> Option<u64> {
    let pid = plan.server_pid?;
    vm_rss_kb(pid)
        .map_err(|e| warnings.push(format!("--server-pid: {e}")))
        .ok()
}

/// The whole hold run.
pub(crate) async fn run(plan: Arc<Plan>) -> HoldReport {
    let started = Instant::now();
    let deadline = started + plan.limit;
    let mut r = HoldReport::new(&plan);
    r.rss_before_kb = rss(&plan, &mut r.warnings);

    let (mut held, failures, late) = open_all(&plan, deadline).await;
    r.held = held.len();
    r.failures = failures;
    r.open_elapsed = started.elapsed();
    r.rss_held_kb = rss(&plan, &mut r.warnings);
    r.timed_out = late;

    if !r.timed_out {
        r.stage = Stage::Settling;
        r.timed_out = !wait(plan.settle, deadline).await;
    }
    r.open_after_settle = Some(sweep(&mut held));
    if !r.timed_out {
        r.rss_settled_kb = rss(&plan, &mut r.warnings);
        r.stage = Stage::Probing;
        for _ in 0..plan.probes {
            match tokio::time::timeout_at(deadline, probe(&plan)).await {
                Err(_) => {
                    r.timed_out = true;
                    break;
                }
                Ok(Ok(took)) => r.probe_times.push(took),
                Ok(Err(f)) => r.probe_failures.record(f),
            }
        }
    }
    if !r.timed_out {
        r.stage = Stage::Holding;
        r.timed_out = !wait(plan.hold, deadline).await;
    }
    if !r.timed_out {
        r.stage = Stage::Done;
    }
    r.open_at_end = Some(sweep(&mut held));
    drop(held);
    r.elapsed = started.elapsed();
    r
}
