//! The flags of a hold run, and the checks that turn them and the common
//! flags into a [`Plan`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{check_ports, Plan, MAX_HOLD};

/// `--hold` and the flags that only it uses.
#[derive(Debug, clap::Args)]
pub(crate) struct HoldArgs {
    /// Hold this many idle connections instead of sending messages: each
    /// reads the greeting, says EHLO and stays open; then probe the
    /// greeting time (opened --sessions at a time; plain SMTP only).
    #[arg(
        long = "hold",
        id = "hold",
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..=MAX_HOLD),
        conflicts_with_all = [
            "messages", "size", "data_file", "mode", "per_conn", "pipelining", "warmup",
            "starttls", "implicit_tls",
        ]
    )]
    pub(crate) count: Option<u64>,
    /// With --hold: seconds to wait once all are held, before measuring.
    #[arg(long, value_name = "SECS", default_value_t = 2.0, requires = "hold")]
    pub(crate) settle: f64,
    /// With --hold: fresh connections timed from connect to the whole 220 line.
    #[arg(
        long,
        value_name = "K",
        default_value_t = 20,
        requires = "hold",
        value_parser = clap::value_parser!(u64).range(0..=10_000)
    )]
    pub(crate) probes: u64,
    /// With --hold: the source address of the probes, outside --sources.
    #[arg(
        long,
        value_name = "IP",
        default_value = "127.0.0.250",
        requires = "hold"
    )]
    pub(crate) probe_source: IpAddr,
    /// With --hold: the server's PID, to read its VmRSS before and after.
    #[arg(long, value_name = "PID", requires = "hold")]
    pub(crate) server_pid: Option<u32>,
    /// With --hold: seconds to keep holding after the probes, before closing.
    #[arg(long, value_name = "SECS", default_value_t = 0.0, requires = "hold")]
    pub(crate) hold_secs: f64,
}

/// What a hold run takes from the common flags, already checked.
#[derive(Debug)]
pub(crate) struct Common<'a> {
    pub(crate) server: SocketAddr,
    pub(crate) sources: Vec<IpAddr>,
    pub(crate) sessions: usize,
    pub(crate) helo: &'a str,
    pub(crate) io_timeout: Duration,
    pub(crate) limit: Duration,
}

impl HoldArgs {
    /// The plan of the run; `ports` is the number of ephemeral ports per
    /// source address. An error names the flag.
    pub(crate) fn plan(&self, common: Common<'_>, ports: u64) -> Result<Plan, String> {
        let count = self.count.ok_or("--hold not given")?;
        let seconds = |name: &str, t: f64| {
            if t.is_finite() && (0.0..1e9).contains(&t) {
                Ok(Duration::from_secs_f64(t))
            } else {
                Err(format!("{name} must be a number of seconds, 0 or more"))
            }
        };
        let settle = seconds("--settle", self.settle)?;
        let hold = seconds("--hold-secs", self.hold_secs)?;
        let Common {
            server, sources, ..
        } = common;
        let probe = self.probe_source;
        if probe.is_ipv4() != server.is_ipv4() {
            return Err(format!(
                "--probe-source: {probe} is not of the same family as the server address {server}"
            ));
        }
        if sources.contains(&probe) {
            return Err(format!(
                "--probe-source: {probe} is one of --sources; the probes need an address of \
                 their own"
            ));
        }
        check_ports(count, sources.len(), ports).map_err(|e| format!("--hold: {e}"))?;
        let size = |n: u64| usize::try_from(n).map_err(|e| format!("--hold: {e}"));
        Ok(Plan {
            server,
            sources,
            count: size(count)?,
            sessions: common.sessions,
            ehlo: format!("EHLO {}\r\n", common.helo).into_bytes(),
            io_timeout: common.io_timeout,
            limit: common.limit,
            settle,
            probes: size(self.probes)?,
            probe_source: probe,
            server_pid: self.server_pid,
            hold,
            progress: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::Args;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from([&["loadtest"][..], args].concat())
    }

    /// The plan the command line would run, with `ports` per source.
    fn plan_of(args: &[&str], ports: u64) -> Result<Plan, String> {
        let a = parse(args).unwrap();
        let common = Common {
            server: a.server.parse().unwrap(),
            sources: crate::sources::parse(&a.sources).unwrap(),
            sessions: usize::try_from(a.sessions).unwrap(),
            helo: &a.helo,
            io_timeout: Duration::from_secs_f64(a.io_timeout_s),
            limit: Duration::from_secs_f64(a.timeout_s),
        };
        a.hold.plan(common, ports)
    }

    #[test]
    fn defaults() {
        assert_eq!(parse(&[]).unwrap().hold.count, None);
        let p = plan_of(&["--hold", "10000"], 28_232).unwrap();
        assert_eq!((p.count, p.sessions, p.probes), (10_000, 50, 20));
        assert_eq!((p.settle, p.hold), (Duration::from_secs(2), Duration::ZERO));
        assert_eq!(p.probe_source, "127.0.0.250".parse::<IpAddr>().unwrap());
        assert_eq!(p.sources.len(), 64);
        assert_eq!(p.server_pid, None);
        assert_eq!(p.ehlo, b"EHLO loadgen.example.org\r\n");
        assert_eq!(p.limit, Duration::from_secs(300));
        assert_eq!(p.io_timeout, Duration::from_secs(60));
    }

    #[test]
    fn every_flag() {
        let p = plan_of(
            &[
                "--hold",
                "200000",
                "--sources",
                "127.0.2.1-127.0.2.8",
                "--settle",
                "0.5",
                "--probes",
                "0",
                "--probe-source",
                "127.0.0.9",
                "--server-pid",
                "1234",
                "--hold-secs",
                "30",
                "--sessions",
                "200",
                "--helo",
                "idle.test",
            ],
            28_232,
        )
        .unwrap();
        assert_eq!((p.count, p.sessions, p.probes), (200_000, 200, 0));
        assert_eq!(
            (p.settle, p.hold),
            (Duration::from_millis(500), Duration::from_secs(30))
        );
        assert_eq!(p.server_pid, Some(1234));
        assert_eq!(p.ehlo, b"EHLO idle.test\r\n");
    }

    #[test]
    fn refused_flags() {
        // Out of range, or not for hold runs.
        for bad in [
            &["--hold", "0"][..],
            &["--hold", "200001"],
            &["--hold", "10", "--messages", "5"],
            &["--hold", "10", "--starttls"],
            &["--hold", "10", "--pipelining"],
            &["--hold", "10", "--mode", "reuse"],
            &["--hold", "10", "--probe-source", "nowhere"],
            &["--hold", "10", "--probes", "10001"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        // Hold options without --hold.
        for alone in [
            &["--settle", "1"][..],
            &["--probes", "3"],
            &["--probe-source", "127.0.0.9"],
            &["--server-pid", "1"],
            &["--hold-secs", "1"],
        ] {
            assert!(parse(alone).is_err(), "{alone:?}");
        }
    }

    #[test]
    fn refused_plans() {
        let err = |args: &[&str], ports| plan_of(args, ports).unwrap_err();
        let e = err(&["--hold", "10", "--settle=-1"], 28_232);
        assert!(e.starts_with("--settle must be"), "{e}");
        let e = err(&["--hold", "10", "--hold-secs", "inf"], 28_232);
        assert!(e.starts_with("--hold-secs must be"), "{e}");
        let e = err(&["--hold", "10", "--probe-source", "::1"], 28_232);
        assert!(e.contains("not of the same family"), "{e}");
        let e = err(&["--hold", "10", "--probe-source", "127.0.1.7"], 28_232);
        assert!(e.contains("is one of --sources"), "{e}");
        // 64 default sources at 1000 ports each hold 64,000.
        assert!(plan_of(&["--hold", "64000"], 1000).is_ok());
        let e = err(&["--hold", "64001"], 1000);
        assert!(
            e.starts_with("--hold: 64001 connections need at least 65 source addresses"),
            "{e}"
        );
        let e = err(&["--hold", "30000", "--sources", "any"], 28_232);
        assert!(e.ends_with("--sources gives 1"), "{e}");
    }
}
