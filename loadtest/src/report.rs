//! Statistics: per-session counters and histograms, merged at the end into
//! the one-line human summary and the JSON report.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::Value;

/// Highest latency tracked, in microseconds (one minute).
const MAX_US: u64 = 60_000_000;

/// What one session (or, merged, the whole run) saw.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    /// DATA-to-250: end of data written to final reply read, µs.
    pub(crate) latency: Histogram<u64>,
    /// TCP connect + 220 greeting, µs.
    pub(crate) connect: Histogram<u64>,
    /// Messages acknowledged with 2xx.
    pub(crate) ok: u64,
    /// Failed replies, connections and timeouts.
    pub(crate) errors: u64,
}

impl Stats {
    pub(crate) fn new() -> Stats {
        let h = || Histogram::<u64>::new_with_bounds(1, MAX_US, 3).expect("valid bounds");
        Stats {
            latency: h(),
            connect: h(),
            ok: 0,
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

    pub(crate) fn merge(&mut self, other: &Stats) {
        // Same bounds on both sides, so adding cannot fail.
        self.latency.add(&other.latency).expect("same bounds");
        self.connect.add(&other.connect).expect("same bounds");
        self.ok += other.ok;
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
}

impl Report {
    pub(crate) fn status(&self) -> Status {
        if self.timed_out {
            Status::Timeout
        } else if self.stats.errors > 0 || self.stats.ok < self.messages_requested {
            Status::Errors
        } else {
            Status::Ok
        }
    }

    pub(crate) fn msgs_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.stats.ok as f64 / secs
        } else {
            0.0
        }
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
fn object(fields: &[(&str, String)], pretty: bool) -> String {
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

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_status() {
        let mut a = Stats::new();
        let mut b = Stats::new();
        for us in 1..=1000u64 {
            a.record_ok(Duration::from_micros(us));
        }
        b.record_ok(Duration::from_secs(120)); // saturates at one minute
        b.errors = 1;
        a.merge(&b);
        let mut r = Report {
            server: "127.0.0.1:1".into(),
            mode: "reuse",
            sessions: 2,
            messages_requested: 1001,
            warmup: 0,
            warmup_errors: 0,
            size_bytes: 4096,
            sources: 1,
            pipelining: false,
            stats: a,
            error_samples: vec!["RCPT: 550 no".into()],
            elapsed: Duration::from_secs(2),
            timed_out: false,
        };
        assert_eq!(r.stats.ok, 1001);
        assert_eq!(r.status(), Status::Errors);
        let text = r.json();
        assert!(text.starts_with("{\n  \"server\": \"127.0.0.1:1\",\n  \"mode\": \"reuse\","));
        let j: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(j["latency_us"]["p50"].as_u64().unwrap() / 10, 50);
        assert!(j["latency_us"]["max"].as_u64().unwrap() >= MAX_US);
        assert_eq!(j["msgs_per_s"], 500.5);
        assert_eq!(j["status"], "errors");
        r.stats.errors = 0;
        assert_eq!(r.status(), Status::Ok);
        r.timed_out = true;
        assert_eq!(r.status(), Status::Timeout);
        assert!(r.summary().starts_with("timeout: 1001/1001 msgs in 2.000s"));
    }
}
