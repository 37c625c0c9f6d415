//! Statistics: per-session counters and histograms, merged at the end into
//! the one-line human summary and the JSON report. TLS runs add the
//! handshake histogram and what was negotiated; without TLS the summary
//! line is as it always was and the JSON says `"tls": {"mode": "none"}`.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::Value;

use crate::tls::Negotiated;

/// Highest latency tracked, in microseconds (one minute).
const MAX_US: u64 = 60_000_000;

/// What one session (or, merged, the whole run) saw.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    /// DATA-to-250: end of data written to final reply read, µs.
    pub(crate) latency: Histogram<u64>,
    /// TCP connect + 220 greeting, µs.
    pub(crate) connect: Histogram<u64>,
    /// TLS handshake, first write to completion, µs.
    pub(crate) handshake: Histogram<u64>,
    /// Messages acknowledged with 2xx.
    pub(crate) ok: u64,
    /// TLS handshakes completed.
    pub(crate) handshakes: u64,
    /// Failed replies, connections and timeouts.
    pub(crate) errors: u64,
}

impl Stats {
    pub(crate) fn new() -> Stats {
        let h = || Histogram::<u64>::new_with_bounds(1, MAX_US, 3).expect("valid bounds");
        Stats {
            latency: h(),
            connect: h(),
            handshake: h(),
            ok: 0,
            handshakes: 0,
            errors: 0,
        }
    }

    pub(crate) fn record_ok(&mut self, latency: Duration) {
        self.ok += 1;
        self.latency.saturating_record(micros(latency));
    }

    pub(crate) fn record_connect(&mut self, took: Duration) {
        self.connect.saturating_record(micros(took));
    }

    pub(crate) fn record_handshake(&mut self, took: Duration) {
        self.handshakes += 1;
        self.handshake.saturating_record(micros(took));
    }

    pub(crate) fn merge(&mut self, other: &Stats) {
        // Same bounds on both sides, so adding cannot fail.
        self.latency.add(&other.latency).expect("same bounds");
        self.connect.add(&other.connect).expect("same bounds");
        self.handshake.add(&other.handshake).expect("same bounds");
        self.ok += other.ok;
        self.handshakes += other.handshakes;
        self.errors += other.errors;
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Ok,
    Timeout,
    Errors,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Timeout => "timeout",
            Status::Errors => "errors",
        }
    }
}

/// The TLS side of a run.
#[derive(Debug)]
pub(crate) struct TlsReport {
    /// `starttls` or `implicit`.
    pub(crate) mode: &'static str,
    /// What the first connection negotiated, if any completed.
    pub(crate) negotiated: Option<Negotiated>,
    /// Session resumption was allowed.
    pub(crate) resumption: bool,
}

/// Everything the report shows.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) server: String,
    pub(crate) mode: &'static str,
    pub(crate) sessions: usize,
    pub(crate) messages_requested: u64,
    pub(crate) warmup: u64,
    pub(crate) warmup_errors: u64,
    pub(crate) size_bytes: usize,
    pub(crate) sources: usize,
    pub(crate) pipelining: bool,
    pub(crate) stats: Stats,
    pub(crate) error_samples: Vec<String>,
    pub(crate) elapsed: Duration,
    pub(crate) timed_out: bool,
    /// `None`: plain SMTP.
    pub(crate) tls: Option<TlsReport>,
    /// The run counted handshakes, not messages (`messages_requested` is
    /// then the number of handshakes).
    pub(crate) handshake_only: bool,
}

impl Report {
    /// Units of work done: handshakes or messages.
    fn done(&self) -> u64 {
        if self.handshake_only {
            self.stats.handshakes
        } else {
            self.stats.ok
        }
    }

    pub(crate) fn status(&self) -> Status {
        if self.timed_out {
            Status::Timeout
        } else if self.stats.errors > 0 || self.done() < self.messages_requested {
            Status::Errors
        } else {
            Status::Ok
        }
    }

    pub(crate) fn msgs_per_s(&self) -> f64 {
        self.rate(self.stats.ok)
    }

    pub(crate) fn handshakes_per_s(&self) -> f64 {
        self.rate(self.stats.handshakes)
    }

    fn rate(&self, n: u64) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            n as f64 / secs
        } else {
            0.0
        }
    }

    /// The `tls` object of the JSON report.
    fn tls_json(&self) -> String {
        let v = |x: Value| x.to_string();
        let Some(tls) = &self.tls else {
            return object(&[("mode", v("none".into()))], false);
        };
        let n = tls.negotiated.as_ref();
        let field = |f: fn(&Negotiated) -> &str| v(n.map(f).into());
        object(
            &[
                ("mode", v(tls.mode.into())),
                ("version", field(|n| &n.version)),
                ("cipher", field(|n| &n.cipher)),
                ("kx_group", field(|n| &n.kx_group)),
                ("resumption", v(tls.resumption.into())),
            ],
            false,
        )
    }

    /// ` | TLS ...` for the summary line; empty without TLS.
    fn tls_summary(&self) -> String {
        let Some(tls) = &self.tls else {
            return String::new();
        };
        let h = &self.stats.handshake;
        let ms = |us: u64| us as f64 / 1000.0;
        let negotiated = tls
            .negotiated
            .as_ref()
            .map_or("not negotiated".to_string(), |n| {
                format!("{} {} {}", n.version, n.cipher, n.kx_group)
            });
        let count = if self.handshake_only {
            String::new()
        } else {
            format!(
                " | {} handshakes = {:.1}/s",
                self.stats.handshakes,
                self.handshakes_per_s()
            )
        };
        format!(
            " | TLS handshake ms p50 {:.3} p99 {:.3} max {:.3}{count} | tls={} {negotiated}{}",
            ms(h.value_at_quantile(0.50)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
            tls.mode,
            if tls.resumption { " resumption" } else { "" },
        )
    }

    /// The JSON report, keys in a fixed, readable order.
    pub(crate) fn json(&self) -> String {
        let l = &self.stats.latency;
        let c = &self.stats.connect;
        let v = |x: Value| x.to_string();
        let latency = object(
            &[
                ("p50", v(l.value_at_quantile(0.50).into())),
                ("p90", v(l.value_at_quantile(0.90).into())),
                ("p99", v(l.value_at_quantile(0.99).into())),
                ("p999", v(l.value_at_quantile(0.999).into())),
                ("max", v(l.max().into())),
                ("mean", v(round3(l.mean()).into())),
            ],
            false,
        );
        let connect = object(
            &[
                ("p50", v(c.value_at_quantile(0.50).into())),
                ("p99", v(c.value_at_quantile(0.99).into())),
            ],
            false,
        );
        let h = &self.stats.handshake;
        let handshake = object(
            &[
                ("p50", v(h.value_at_quantile(0.50).into())),
                ("p99", v(h.value_at_quantile(0.99).into())),
                ("max", v(h.max().into())),
            ],
            false,
        );
        object(
            &[
                ("server", v(self.server.as_str().into())),
                ("mode", v(self.mode.into())),
                ("sessions", v(self.sessions.into())),
                ("messages_requested", v(self.messages_requested.into())),
                ("messages_ok", v(self.stats.ok.into())),
                ("errors", v(self.stats.errors.into())),
                ("error_samples", v(self.error_samples.clone().into())),
                ("elapsed_s", v(round3(self.elapsed.as_secs_f64()).into())),
                ("msgs_per_s", v(round3(self.msgs_per_s()).into())),
                ("size_bytes", v(self.size_bytes.into())),
                ("latency_us", latency),
                ("connect_us", connect),
                ("tls", self.tls_json()),
                ("tls_handshake_us", handshake),
                ("handshake_only", v(self.handshake_only.into())),
                ("handshakes_ok", v(self.stats.handshakes.into())),
                (
                    "handshakes_per_s",
                    v(round3(self.handshakes_per_s()).into()),
                ),
                ("status", v(self.status().as_str().into())),
                ("sources", v(self.sources.into())),
                ("pipelining", v(self.pipelining.into())),
                ("warmup", v(self.warmup.into())),
                ("warmup_errors", v(self.warmup_errors.into())),
            ],
            true,
        )
    }

    /// One line for a terminal or a log.
    pub(crate) fn summary(&self) -> String {
        if self.handshake_only {
            return self.handshake_summary();
        }
        let mut line = self.message_summary();
        line.push_str(&self.tls_summary());
        line
    }

    /// The summary line of `--handshake-only`.
    fn handshake_summary(&self) -> String {
        let c = &self.stats.connect;
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "{status}: {n}/{req} handshakes in {secs:.3}s = {rate:.1} handshakes/s | \
             connect ms p50 {c50:.3} p99 {c99:.3} | errors {errors} | \
             handshake-only sessions={sessions} sources={sources}{tls}",
            status = self.status().as_str(),
            n = self.stats.handshakes,
            req = self.messages_requested,
            secs = self.elapsed.as_secs_f64(),
            rate = self.handshakes_per_s(),
            c50 = ms(c.value_at_quantile(0.50)),
            c99 = ms(c.value_at_quantile(0.99)),
            errors = self.stats.errors,
            sessions = self.sessions,
            sources = self.sources,
            tls = self.tls_summary(),
        )
    }

    /// The summary line of a message run, without TLS figures.
    fn message_summary(&self) -> String {
        let l = &self.stats.latency;
        let c = &self.stats.connect;
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "{status}: {ok}/{req} msgs in {secs:.3}s = {rate:.1} msgs/s | \
             DATA-to-250 ms p50 {p50:.3} p99 {p99:.3} p99.9 {p999:.3} max {max:.3} | \
             connect ms p50 {c50:.3} p99 {c99:.3} | errors {errors} | \
             {mode} sessions={sessions} size={size} pipelining={pipe} sources={sources}",
            status = self.status().as_str(),
            ok = self.stats.ok,
            req = self.messages_requested,
            secs = self.elapsed.as_secs_f64(),
            rate = self.msgs_per_s(),
            p50 = ms(l.value_at_quantile(0.50)),
            p99 = ms(l.value_at_quantile(0.99)),
            p999 = ms(l.value_at_quantile(0.999)),
            max = ms(l.max()),
            c50 = ms(c.value_at_quantile(0.50)),
            c99 = ms(c.value_at_quantile(0.99)),
            errors = self.stats.errors,
            mode = self.mode,
            sessions = self.sessions,
            size = self.size_bytes,
            pipe = self.pipelining,
            sources = self.sources,
        )
    }
}

/// A JSON object from keys and already-encoded values; `pretty` puts one
/// key per line (serde_json's own map would sort the keys).
pub(crate) fn object(fields: &[(&str, String)], pretty: bool) -> String {
    let (open, sep, close) = if pretty {
        ("{\n  ", ",\n  ", "\n}\n")
    } else {
        ("{", ", ", "}")
    };
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}: {v}", Value::from(*k)))
        .collect();
    format!("{open}{}{close}", body.join(sep))
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests;
