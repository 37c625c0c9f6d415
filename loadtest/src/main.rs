//! `loadtest`: an SMTP load generator, bounded in message count and time,
//! for benchmarking gomail against Postfix or Haraka on loopback.
//!
//! N sessions share a counter of messages; each connects from a loopback
//! source address (round-robin over `--sources`), says EHLO and sends
//! messages of an exact size, one per connection (`perconn`) or several
//! (`reuse`). The time from writing the end of data to reading the 250 is
//! recorded in an HdrHistogram per session; the merged result is printed as
//! one line and, with `--json`, written as a JSON report. Exit status is 0
//! only when every message was accepted in time.

mod client;
mod message;
mod reply;
mod report;
mod run;
mod sources;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;

use crate::client::Commands;
use crate::message::Template;
use crate::report::{Report, Status};
use crate::run::{Mode, Settings};

/// SMTP load generator: many loopback sources, DATA-to-250 latency
/// histogram, JSON report.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version)]
struct Args {
    /// Server to load, host:port.
    #[arg(long, default_value = "127.0.0.1:2525")]
    server: String,
    /// Concurrent SMTP sessions.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    sessions: u64,
    /// Messages to send (not counting --warmup).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    messages: u64,
    /// Size of each message in octets (header + body, before dot-stuffing).
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// One message per connection, or several per connection.
    #[arg(long, value_enum, default_value_t = Mode::Perconn)]
    mode: Mode,
    /// Messages per connection in reuse mode [default: ceil(messages / sessions)].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    per_conn: Option<u64>,
    /// Source addresses to bind, round-robin per new connection: A-B (IPv4
    /// range), a single address, or `any` (no bind).
    #[arg(long, default_value = "127.0.1.1-127.0.1.64")]
    sources: String,
    /// Envelope and header sender.
    #[arg(long, default_value = "sender@example.org")]
    from: String,
    /// Envelope and header recipient.
    #[arg(long, default_value = "rcpt@example.test")]
    to: String,
    /// EHLO name (also the Message-ID domain).
    #[arg(long, default_value = "loadgen.example.org")]
    helo: String,
    /// Limit for the whole run, warm-up included, in seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout_s: f64,
    /// Limit for each connect, write or reply wait, in seconds.
    #[arg(long, default_value_t = 60.0)]
    io_timeout_s: f64,
    /// Send MAIL, RCPT and DATA in one write when the server advertises
    /// PIPELINING.
    #[arg(long)]
    pipelining: bool,
    /// Write the JSON report to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Messages sent first and not counted (a separate phase).
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match start(args) {
        Ok(Status::Ok) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Checks the arguments, runs, reports.
fn start(args: Args) -> anyhow::Result<Status> {
    let server = resolve(&args.server)?;
    let sources = sources::parse(&args.sources)
        .map_err(anyhow::Error::msg)
        .context("--sources")?;
    if let Some(ip) = sources.iter().find(|ip| ip.is_ipv4() != server.is_ipv4()) {
        bail!("--sources: {ip} is not of the same family as the server address {server}");
    }
    for (name, v) in [
        ("--from", &args.from),
        ("--to", &args.to),
        ("--helo", &args.helo),
    ] {
        if v.is_empty() || v.len() > 500 || v.bytes().any(|b| b <= b' ' || b >= 0x7f) {
            bail!("{name} must be 1..500 printable ASCII characters without spaces");
        }
    }
    let timeouts_ok = |t: f64| t.is_finite() && t > 0.0 && t < 1e9;
    if !timeouts_ok(args.timeout_s) || !timeouts_ok(args.io_timeout_s) {
        bail!("--timeout-s and --io-timeout-s must be positive numbers of seconds");
    }
    let template = Template::new(&args.from, &args.to, &args.helo);
    let last_seq = args.warmup + args.messages;
    template
        .build(last_seq, args.size, &mut Vec::new())
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("--size (at least {})", template.min_size(last_seq)))?;
    let sessions = usize::try_from(args.sessions)?;
    let settings = Arc::new(Settings {
        server,
        sessions,
        mode: args.mode,
        per_conn: args
            .per_conn
            .unwrap_or_else(|| args.messages.div_ceil(args.sessions)),
        size: args.size,
        pipelining: args.pipelining,
        io_timeout: Duration::from_secs_f64(args.io_timeout_s),
        commands: Commands::new(&args.helo, &args.from, &args.to),
        template,
        sources,
        next_source: AtomicUsize::new(0),
        pipelined: AtomicBool::new(false),
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::try_from(args.threads)?)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let (warm, main) = runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.timeout_s);
        let mut warm = None;
        if args.warmup > 0 {
            let w = run::phase(settings.clone(), 1, args.warmup, deadline).await;
            for s in &w.samples {
                eprintln!("loadtest: warm-up error: {s}");
            }
            warm = Some(w);
        }
        if warm.as_ref().is_some_and(|w| w.timed_out) {
            let main = run::Outcome {
                stats: report::Stats::new(),
                samples: Vec::new(),
                elapsed: Duration::ZERO,
                timed_out: true,
            };
            return (warm, main);
        }
        let main = run::phase(settings.clone(), 1 + args.warmup, args.messages, deadline).await;
        (warm, main)
    });
    // Sessions cancelled by the deadline may leave tasks behind; don't wait.
    runtime.shutdown_background();

    let report = Report {
        server: args.server.clone(),
        mode: args.mode.as_str(),
        sessions,
        messages_requested: args.messages,
        warmup: args.warmup,
        warmup_errors: warm.as_ref().map_or(0, |w| w.stats.errors),
        size_bytes: args.size,
        sources: settings.sources.len(),
        pipelining: settings.pipelined.load(Ordering::Relaxed),
        stats: main.stats,
        error_samples: main.samples,
        elapsed: main.elapsed,
        timed_out: main.timed_out,
    };
    if args.pipelining && !report.pipelining && report.stats.ok > 0 {
        eprintln!("loadtest: --pipelining asked for, but the server does not advertise PIPELINING");
    }
    for s in &report.error_samples {
        eprintln!("loadtest: error: {s}");
    }
    println!("{}", report.summary());
    if let Some(path) = &args.json {
        std::fs::write(path, report.json())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.status())
}

/// `host:port` to a socket address (the first the resolver gives).
fn resolve(server: &str) -> anyhow::Result<SocketAddr> {
    server
        .to_socket_addrs()
        .with_context(|| format!("--server {server}: not host:port"))?
        .next()
        .with_context(|| format!("--server {server}: no address"))
}
