//! `loadtest`: an SMTP load generator, bounded in message count and time,
//! for benchmarking gomail against Postfix or Haraka on loopback.
//!
//! N sessions share a counter of messages; each connects from a loopback
//! source address (round-robin over `--sources`), says EHLO and sends
//! messages of an exact size, one per connection (`perconn`) or several
//! (`reuse`); with `--data-file` every message is that file instead (for
//! example a DKIM-signed message). The time from writing the end of data to reading the 250 is
//! recorded in an HdrHistogram per session; the merged result is printed as
//! one line and, with `--json`, written as a JSON report. Exit status is 0
//! only when every message was accepted in time.
//!
//! `--starttls` or `--implicit-tls` add TLS to every connection (see the
//! `tls` module) and a histogram of handshake times; `--handshake-only`
//! counts handshakes instead of messages, to measure handshakes per second.
//!
//! `--hold N` is another kind of run (see the `hold` module): N idle
//! connections, each greeted and past EHLO, then the time a fresh client
//! waits for its 220 and, with `--server-pid`, the server's memory per held
//! connection.

mod client;
mod hold;
mod message;
mod reply;
mod report;
mod run;
mod sources;
mod tls;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{ArgGroup, Parser};

use crate::client::Commands;
use crate::message::Template;
use crate::report::{Report, Status, TlsReport};
use crate::run::{Mode, Settings};
use crate::tls::{Tls, TlsMode, TlsOptions, TlsVersion};

/// SMTP load generator: many loopback sources, DATA-to-250 latency
/// histogram, JSON report.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version)]
#[command(group(ArgGroup::new("tls").args(["starttls", "implicit_tls"])))]
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
    /// Send this file (dot-stuffed; lone LFs made CRLF) as every message
    /// instead of generated ones, e.g. a DKIM-signed message; its size
    /// replaces --size.
    #[arg(long, value_name = "PATH", conflicts_with = "size")]
    data_file: Option<PathBuf>,
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
    /// Recipients per message: `--to`, then its local part with 1, 2 …
    /// appended (`rcpt1@example.test`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    rcpts: u64,
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
    /// After EHLO, say STARTTLS (the server must advertise it), do the TLS
    /// handshake and EHLO again.
    #[arg(long)]
    starttls: bool,
    /// TLS right after the connect, before the greeting (smtps listeners).
    #[arg(long)]
    implicit_tls: bool,
    /// Verify the server certificate against these PEM certificates;
    /// without it any certificate is accepted (load testing only).
    #[arg(long, value_name = "PATH", requires = "tls")]
    ca: Option<PathBuf>,
    /// Allow only this TLS version [default: 1.2 and 1.3].
    #[arg(long, value_enum, requires = "tls")]
    tls_version: Option<TlsVersion>,
    /// TLS server name [default: the host of --server if it is a name, else
    /// mx.example.test].
    #[arg(long, value_name = "NAME", requires = "tls")]
    sni: Option<String>,
    /// Let connections resume earlier TLS sessions (abbreviated
    /// handshakes); by default every handshake is a full one.
    #[arg(long, requires = "tls")]
    tls_resume: bool,
    /// Count TLS handshakes instead of messages: each of --messages
    /// connections does greeting, EHLO, the handshake and QUIT.
    #[arg(long, requires = "tls")]
    handshake_only: bool,
    #[command(flatten)]
    hold: hold::HoldArgs,
}

impl Args {
    /// The TLS mode asked for, if any.
    fn tls_mode(&self) -> Option<TlsMode> {
        if self.starttls {
            Some(TlsMode::Starttls)
        } else if self.implicit_tls {
            Some(TlsMode::Implicit)
        } else {
            None
        }
    }

    /// The TLS options, reading `--ca`; `None` without TLS.
    fn tls_options(&self) -> anyhow::Result<Option<TlsOptions>> {
        let Some(mode) = self.tls_mode() else {
            return Ok(None);
        };
        let ca_pem = match &self.ca {
            Some(path) => Some(
                std::fs::read(path).with_context(|| format!("--ca: reading {}", path.display()))?,
            ),
            None => None,
        };
        Ok(Some(TlsOptions {
            mode,
            ca_pem,
            version: self.tls_version,
            sni: self
                .sni
                .clone()
                .unwrap_or_else(|| tls::default_sni(&self.server)),
            resume: self.tls_resume,
        }))
    }
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
    if args.hold.count.is_some() {
        let common = hold::Common {
            server,
            sources,
            sessions: usize::try_from(args.sessions)?,
            helo: &args.helo,
            io_timeout: Duration::from_secs_f64(args.io_timeout_s),
            limit: Duration::from_secs_f64(args.timeout_s),
        };
        let plan = args
            .hold
            .plan(common, hold::ports_per_source())
            .map_err(anyhow::Error::msg)?;
        return start_hold(&args, plan);
    }
    let template = Template::new(&args.from, &args.to, &args.helo);
    let (size, data) = match &args.data_file {
        Some(path) => {
            let file = std::fs::read(path)
                .with_context(|| format!("--data-file: reading {}", path.display()))?;
            let (size, wire) = message::file_wire(&file)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("--data-file {}", path.display()))?;
            (size, Some(wire))
        }
        None => {
            let last_seq = args.warmup + args.messages;
            template
                .build(last_seq, args.size, &mut Vec::new())
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("--size (at least {})", template.min_size(last_seq)))?;
            (args.size, None)
        }
    };
    let sessions = usize::try_from(args.sessions)?;
    let tls_options = args.tls_options()?;
    let tls = match &tls_options {
        Some(opts) => Some(Tls::new(opts).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let settings = Arc::new(Settings {
        server,
        sessions,
        mode: args.mode,
        per_conn: args
            .per_conn
            .unwrap_or_else(|| args.messages.div_ceil(args.sessions)),
        size,
        pipelining: args.pipelining,
        io_timeout: Duration::from_secs_f64(args.io_timeout_s),
        commands: Commands::new(&args.helo, &args.from, &args.to, args.rcpts as usize),
        template,
        data,
        sources,
        next_source: AtomicUsize::new(0),
        pipelined: AtomicBool::new(false),
        tls,
        handshake_only: args.handshake_only,
        negotiated: OnceLock::new(),
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
        mode: if args.handshake_only {
            "handshake-only"
        } else {
            args.mode.as_str()
        },
        sessions,
        messages_requested: args.messages,
        warmup: args.warmup,
        warmup_errors: warm.as_ref().map_or(0, |w| w.stats.errors),
        size_bytes: size,
        sources: settings.sources.len(),
        pipelining: settings.pipelined.load(Ordering::Relaxed),
        stats: main.stats,
        error_samples: main.samples,
        elapsed: main.elapsed,
        timed_out: main.timed_out,
        tls: tls_options.map(|o| TlsReport {
            mode: o.mode.as_str(),
            negotiated: settings.negotiated.get().cloned(),
            resumption: o.resume,
        }),
        handshake_only: args.handshake_only,
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

/// Raises the descriptor limit, runs `--hold`, reports.
fn start_hold(args: &Args, plan: hold::Plan) -> anyhow::Result<Status> {
    let limit = hold::raise_nofile().map_err(anyhow::Error::msg)?;
    hold::check_fds(plan.count as u64, limit)
        .map_err(anyhow::Error::msg)
        .context("--hold")?;
    if let Some(pid) = plan.server_pid {
        hold::vm_rss_kb(pid)
            .map_err(anyhow::Error::msg)
            .context("--server-pid")?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::try_from(args.threads)?)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let report = runtime.block_on(hold::run(Arc::new(plan)));
    runtime.shutdown_background();
    for s in report
        .failures
        .samples
        .iter()
        .chain(&report.probe_failures.samples)
    {
        eprintln!("loadtest: error: {s}");
    }
    for w in &report.warnings {
        eprintln!("loadtest: warning: {w}");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from([&["loadtest"][..], args].concat())
    }

    #[test]
    fn no_tls_by_default() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.tls_mode(), None);
        assert!(a.tls_options().unwrap().is_none());
        assert!(!a.handshake_only);
    }

    #[test]
    fn tls_flags() {
        let a = parse(&["--starttls", "--tls-version", "1.3"]).unwrap();
        let o = a.tls_options().unwrap().unwrap();
        assert_eq!(o.mode, TlsMode::Starttls);
        assert_eq!(o.version, Some(TlsVersion::V13));
        assert_eq!(o.sni, "mx.example.test");
        assert!(!o.resume && o.ca_pem.is_none());

        let a = parse(&["--implicit-tls", "--server", "mail.example.net:465"]).unwrap();
        let o = a.tls_options().unwrap().unwrap();
        assert_eq!(o.mode, TlsMode::Implicit);
        assert_eq!(o.version, None);
        assert_eq!(o.sni, "mail.example.net");

        let a = parse(&["--starttls", "--sni", "other.test", "--tls-resume"]).unwrap();
        let o = a.tls_options().unwrap().unwrap();
        assert_eq!((o.sni.as_str(), o.resume), ("other.test", true));

        let a = parse(&["--starttls", "--handshake-only", "--tls-version", "1.2"]).unwrap();
        assert!(a.handshake_only);
        assert_eq!(a.tls_version, Some(TlsVersion::V12));
    }

    #[test]
    fn data_file_flag() {
        assert!(parse(&[]).unwrap().data_file.is_none());
        let a = parse(&["--data-file", "/tmp/signed.eml"]).unwrap();
        assert_eq!(
            a.data_file.as_deref(),
            Some(std::path::Path::new("/tmp/signed.eml"))
        );
        // The file's size is the message size.
        assert!(parse(&["--data-file", "/tmp/signed.eml", "--size", "4096"]).is_err());
        let a = parse(&["--data-file", "/nonexistent/signed.eml", "--messages", "1"]).unwrap();
        let e = start(a).unwrap_err();
        assert!(format!("{e:#}").starts_with("--data-file: reading /nonexistent/signed.eml"));
    }

    #[test]
    fn tls_flag_errors() {
        // Both modes at once, TLS options without a mode, bad versions.
        assert!(parse(&["--starttls", "--implicit-tls"]).is_err());
        for alone in [
            &["--handshake-only"][..],
            &["--ca", "/x.pem"],
            &["--tls-version", "1.3"],
            &["--sni", "a.test"],
            &["--tls-resume"],
        ] {
            assert!(parse(alone).is_err(), "{alone:?}");
        }
        assert!(parse(&["--starttls", "--tls-version", "1.1"]).is_err());
        let a = parse(&["--starttls", "--ca", "/nonexistent/ca.pem"]).unwrap();
        let e = a.tls_options().unwrap_err();
        assert!(format!("{e:#}").starts_with("--ca: reading /nonexistent/ca.pem"));
    }
}
