//! The report of a hold run: a short summary for the terminal and a JSON
//! object of its own (the message-run report is left as it is).

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use super::limits::per_conn_bytes;
use super::{Class, Plan, Stage, Tally};
use crate::report::{object, round3, Status};

/// Smallest, median (nearest rank) and largest of some durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spread {
    pub(crate) min: Duration,
    pub(crate) p50: Duration,
    pub(crate) max: Duration,
}

impl Spread {
    /// `None` for no samples.
    pub(crate) fn of(samples: &[Duration]) -> Option<Spread> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        Some(Spread {
            min: *sorted.first()?,
            p50: sorted[sorted.len().div_ceil(2) - 1],
            max: *sorted.last()?,
        })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Everything a hold run found.
#[derive(Debug, Clone)]
pub(crate) struct HoldReport {
    pub(crate) server: String,
    pub(crate) requested: usize,
    pub(crate) sessions: usize,
    /// Source addresses (0: `any`).
    pub(crate) sources: usize,
    pub(crate) probe_source: IpAddr,
    /// Connections that got through greeting and EHLO.
    pub(crate) held: usize,
    pub(crate) failures: Tally,
    /// From the start to the last connection opened (or failed).
    pub(crate) open_elapsed: Duration,
    pub(crate) settle: Duration,
    /// Held connections the server had not closed after settling.
    pub(crate) open_after_settle: Option<usize>,
    pub(crate) probes_requested: usize,
    /// Time to the 220 of each successful probe.
    pub(crate) probe_times: Vec<Duration>,
    pub(crate) probe_failures: Tally,
    pub(crate) server_pid: Option<u32>,
    pub(crate) rss_before_kb: Option<u64>,
    pub(crate) rss_held_kb: Option<u64>,
    pub(crate) rss_settled_kb: Option<u64>,
    pub(crate) hold: Duration,
    /// Held connections the server had not closed when closing them.
    pub(crate) open_at_end: Option<usize>,
    pub(crate) elapsed: Duration,
    /// The stage the deadline stopped, or `Done`.
    pub(crate) stage: Stage,
    pub(crate) timed_out: bool,
    /// Problems outside the connections (the server's RSS unreadable).
    pub(crate) warnings: Vec<String>,
}

impl HoldReport {
    /// An empty report for `plan`, at the opening stage.
    pub(crate) fn new(plan: &Plan) -> HoldReport {
        HoldReport {
            server: plan.server.to_string(),
            requested: plan.count,
            sessions: plan.sessions,
            sources: plan.sources.len(),
            probe_source: plan.probe_source,
            held: 0,
            failures: Tally::default(),
            open_elapsed: Duration::ZERO,
            settle: plan.settle,
            open_after_settle: None,
            probes_requested: plan.probes,
            probe_times: Vec::new(),
            probe_failures: Tally::default(),
            server_pid: plan.server_pid,
            rss_before_kb: None,
            rss_held_kb: None,
            rss_settled_kb: None,
            hold: plan.hold,
            open_at_end: None,
            elapsed: Duration::ZERO,
            stage: Stage::Opening,
            timed_out: false,
            warnings: Vec::new(),
        }
    }

    /// Ok: every connection held to the end and every probe greeted.
    pub(crate) fn status(&self) -> Status {
        if self.timed_out {
            Status::Timeout
        } else if self.held < self.requested
            || self.failures.total() > 0
            || self.probe_times.len() < self.probes_requested
            || self.open_at_end != Some(self.held)
        {
            Status::Errors
        } else {
            Status::Ok
        }
    }

    pub(crate) fn probe_spread(&self) -> Option<Spread> {
        Spread::of(&self.probe_times)
    }

    /// The last RSS reading after opening: settled, else held.
    fn rss_after_kb(&self) -> Option<u64> {
        self.rss_settled_kb.or(self.rss_held_kb)
    }

    /// Server memory per held connection, bytes.
    pub(crate) fn rss_per_conn(&self) -> Option<f64> {
        per_conn_bytes(self.rss_before_kb?, self.rss_after_kb()?, self.held)
    }

    /// `refused 3 (421 x3), timeout 1`: the non-zero classes.
    fn failure_text(t: &Tally) -> String {
        let mut parts = Vec::new();
        for class in Class::ALL {
            let n = t.count(class);
            if n == 0 {
                continue;
            }
            let mut part = format!("{} {n}", class.as_str());
            if class == Class::Refused && !t.refused_codes.is_empty() {
                let codes: Vec<String> = t
                    .refused_codes
                    .iter()
                    .map(|(c, n)| format!("{c} x{n}"))
                    .collect();
                part.push_str(&format!(" ({})", codes.join(", ")));
            }
            parts.push(part);
        }
        parts.join(", ")
    }

    /// A few lines for a terminal or a log.
    pub(crate) fn summary(&self) -> String {
        let mut out = format!(
            "{status}: held {held}/{req} idle connections, opened in {open:.3}s | failed {failed}",
            status = self.status().as_str(),
            held = self.held,
            req = self.requested,
            open = self.open_elapsed.as_secs_f64(),
            failed = self.failures.total(),
        );
        if self.failures.total() > 0 {
            out.push_str(&format!(": {}", HoldReport::failure_text(&self.failures)));
        }
        let count = |n: Option<usize>| n.map_or("-".to_string(), |n| n.to_string());
        out.push_str(&format!(
            " | open after settle {} at end {}",
            count(self.open_after_settle),
            count(self.open_at_end)
        ));
        out.push_str(&format!(
            "\n  probe time-to-220 from {}: {}/{} ok",
            self.probe_source,
            self.probe_times.len(),
            self.probes_requested
        ));
        if let Some(s) = self.probe_spread() {
            out.push_str(&format!(
                ", ms min {:.3} p50 {:.3} max {:.3}",
                ms(s.min),
                ms(s.p50),
                ms(s.max)
            ));
        }
        if self.probe_failures.total() > 0 {
            out.push_str(&format!(
                " | failed: {}",
                HoldReport::failure_text(&self.probe_failures)
            ));
        }
        if let Some(pid) = self.server_pid {
            let kb = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} kB"));
            out.push_str(&format!(
                "\n  server {pid} RSS {} -> {}",
                kb(self.rss_before_kb),
                kb(self.rss_after_kb())
            ));
            if let Some(b) = self.rss_per_conn() {
                out.push_str(&format!(" = {b:.0} bytes per held connection"));
            }
        }
        out.push_str(&format!(
            "\n  stage {} in {:.3}s | hold sessions={} sources={} settle={}s hold={}s",
            self.stage.as_str(),
            self.elapsed.as_secs_f64(),
            self.sessions,
            self.sources,
            self.settle.as_secs_f64(),
            self.hold.as_secs_f64(),
        ));
        out
    }

    /// A tally as `{"refused": n, ..., "refused_codes": {...}, "samples": [...]}`.
    fn tally_json(t: &Tally) -> String {
        let v = |x: Value| x.to_string();
        let mut fields: Vec<(&str, String)> = Class::ALL
            .iter()
            .map(|c| (c.as_str(), v(t.count(*c).into())))
            .collect();
        let codes: Vec<(String, String)> = t
            .refused_codes
            .iter()
            .map(|(c, n)| (c.to_string(), v((*n).into())))
            .collect();
        let codes: Vec<(&str, String)> =
            codes.iter().map(|(c, n)| (c.as_str(), n.clone())).collect();
        fields.push(("refused_codes", object(&codes, false)));
        fields.push(("samples", v(t.samples.clone().into())));
        object(&fields, false)
    }

    /// The JSON report, keys in a fixed order.
    pub(crate) fn json(&self) -> String {
        let v = |x: Value| x.to_string();
        let opt = |x: Option<u64>| v(x.map_or(Value::Null, Value::from));
        let opt_n = |x: Option<usize>| v(x.map_or(Value::Null, Value::from));
        let probe_ms = match self.probe_spread() {
            Some(s) => object(
                &[
                    ("min", v(round3(ms(s.min)).into())),
                    ("p50", v(round3(ms(s.p50)).into())),
                    ("max", v(round3(ms(s.max)).into())),
                ],
                false,
            ),
            None => v(Value::Null),
        };
        let rss = object(
            &[
                ("before", opt(self.rss_before_kb)),
                ("held", opt(self.rss_held_kb)),
                ("settled", opt(self.rss_settled_kb)),
            ],
            false,
        );
        let per_conn = v(self
            .rss_per_conn()
            .map_or(Value::Null, |b| round3(b).into()));
        object(
            &[
                ("server", v(self.server.as_str().into())),
                ("mode", v("hold".into())),
                ("status", v(self.status().as_str().into())),
                ("stage", v(self.stage.as_str().into())),
                ("timed_out", v(self.timed_out.into())),
                ("requested", v(self.requested.into())),
                ("held", v(self.held.into())),
                ("failed", v(self.failures.total().into())),
                ("failures", HoldReport::tally_json(&self.failures)),
                (
                    "open_elapsed_s",
                    v(round3(self.open_elapsed.as_secs_f64()).into()),
                ),
                ("settle_s", v(round3(self.settle.as_secs_f64()).into())),
                ("open_after_settle", opt_n(self.open_after_settle)),
                ("probe_source", v(self.probe_source.to_string().into())),
                ("probes_requested", v(self.probes_requested.into())),
                ("probes_ok", v(self.probe_times.len().into())),
                ("probe_ms", probe_ms),
                (
                    "probe_failures",
                    HoldReport::tally_json(&self.probe_failures),
                ),
                (
                    "server_pid",
                    v(self.server_pid.map_or(Value::Null, Value::from)),
                ),
                ("rss_kb", rss),
                ("rss_per_conn_bytes", per_conn),
                ("hold_s", v(round3(self.hold.as_secs_f64()).into())),
                ("open_at_end", opt_n(self.open_at_end)),
                ("elapsed_s", v(round3(self.elapsed.as_secs_f64()).into())),
                ("sessions", v(self.sessions.into())),
                ("sources", v(self.sources.into())),
                ("warnings", v(self.warnings.clone().into())),
            ],
            true,
        )
    }
}
