//! Prometheus text exposition (format 0.0.4) of the shards' counters.
//!
//! Written by hand: the counters arrive as plain snapshots from the shards,
//! and the classic text format keeps GoMail-style metric names exact.

use std::fmt::Write;

use crate::server::{ShardStats, LATENCY_BOUNDS_US};

/// The ban service's figures: bans in force, and bans made by source
/// (auto, manual).
#[derive(Debug, Clone, Copy, Default)]
pub struct BanCounts {
    /// Bans in force.
    pub active: u64,
    /// Bans made since start: automatic, manual.
    pub made: [u64; 2],
    /// Violation reports dropped because the ban service was behind.
    pub dropped: u64,
}

/// Every `limit` of `gomail_rate_limited_total`.
const RATE_LIMITS: [&str; 3] = ["connection", "message", "recipient"];

/// Renders every shard's counters, labelled `shard="N"`.
pub fn render(stats: &[ShardStats], uptime_s: u64, bans: BanCounts) -> String {
    let mut out = String::with_capacity(4096);
    let mut family = |name: &str, kind: &str, help: &str, value: &dyn Fn(&ShardStats) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for s in stats {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", s.shard, value(s));
        }
    };
    family(
        "gomail_connections_accepted_total",
        "counter",
        "SMTP connections accepted.",
        &|s| s.connections_accepted,
    );
    family(
        "gomail_connections_active",
        "gauge",
        "SMTP connections open now.",
        &|s| s.connections_active,
    );
    family(
        "gomail_messages_accepted_total",
        "counter",
        "Messages made durable and acknowledged with 250.",
        &|s| s.messages_accepted,
    );
    family(
        "gomail_emails_received_total",
        "counter",
        "Messages received and acknowledged with 250 (GoMail's name for gomail_messages_accepted_total).",
        &|s| s.messages_accepted,
    );
    for key in crate::auth::Tally::KEYS {
        let (check, result) = key.split_once('_').unwrap_or((key, ""));
        let name = format!("gomail_{key}_total");
        let help = format!(
            "Messages whose {} result was {result}.",
            check.to_ascii_uppercase()
        );
        family(&name, "counter", &help, &|s| {
            s.auth_results.get(key).copied().unwrap_or(0)
        });
    }
    family(
        "gomail_message_bytes_accepted_total",
        "counter",
        "Octets of accepted messages.",
        &|s| s.bytes_accepted,
    );
    family(
        "gomail_spool_failures_total",
        "counter",
        "Messages answered 451 because the spool could not make them durable.",
        &|s| s.spool_failures,
    );
    family(
        "gomail_messages_stored_total",
        "counter",
        "Messages written to the JSON store.",
        &|s| s.messages_stored,
    );
    family(
        "gomail_store_failures_total",
        "counter",
        "JSON store batches that failed and were retried.",
        &|s| s.store_failures,
    );
    family(
        "gomail_store_refusals_total",
        "counter",
        "Messages deferred with 452 4.3.1 because the JSON store could not be written.",
        &|s| s.store_refusals,
    );
    family(
        "gomail_store_failing",
        "gauge",
        "1 while the JSON store cannot be written (a full disk): new messages are deferred until it can.",
        &|s| s.store_failing,
    );
    family(
        "gomail_messages_recovered_total",
        "counter",
        "Messages recovered from the spool at start-up.",
        &|s| s.messages_recovered,
    );
    family(
        "gomail_spool_corrupt_records_total",
        "counter",
        "Damaged places in spool segments found at start-up, each usually one lost record; the segments are copied to spool/corrupt/.",
        &|s| s.spool_corrupt_records,
    );
    family(
        "gomail_spool_unreadable_segments_total",
        "counter",
        "Spool segments that could not be read at start-up and were moved to spool/corrupt/ (their messages are not recovered).",
        &|s| s.spool_unreadable_segments,
    );
    family(
        "gomail_store_backlog",
        "gauge",
        "Messages spooled and not yet done (stored and/or delivered by webhook); spool_max_backlog limits it.",
        &|s| s.store_backlog,
    );
    family(
        "gomail_spool_bytes",
        "gauge",
        "Octets of spool segment files on disk (a segment is freed when all its messages are done); spool_max_bytes limits it.",
        &|s| s.spool_bytes,
    );
    family(
        "gomail_webhook_pending",
        "gauge",
        "Webhook deliveries (one per recipient) waiting for an attempt or under way.",
        &|s| s.webhook_pending,
    );
    family(
        "gomail_webhook_held_bytes",
        "gauge",
        "Octets of message contents the webhook outbox keeps in memory for first attempts; waiting messages are read back from the spool.",
        &|s| s.webhook_held_bytes,
    );
    family(
        "gomail_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed or timed out.",
        &|s| s.tls_handshake_failures,
    );
    family(
        "gomail_connection_panics_total",
        "counter",
        "Connection tasks that panicked (a bug: report it) and were contained; the shard went on.",
        &|s| s.connection_panics,
    );
    family(
        "gomail_connections_blocked_total",
        "counter",
        "Connections refused because DNS blocklists listed the client (554).",
        &|s| s.connections_blocked,
    );
    family(
        "gomail_messages_refused_policy_total",
        "counter",
        "Messages refused by authentication policy (DMARC) after DATA.",
        &|s| s.messages_refused_by_policy,
    );
    family(
        "gomail_dns_cache_hits_total",
        "counter",
        "DNS answers served from the shard's cache.",
        &|s| s.dns_cache_hits,
    );
    family(
        "gomail_dns_cache_misses_total",
        "counter",
        "DNS lookups not answered by the shard's answer cache (negative answers are then served by the resolver's own cache).",
        &|s| s.dns_cache_misses,
    );
    family(
        "gomail_spool_backlog_refusals_total",
        "counter",
        "Messages deferred with 452 4.3.1 because the undelivered backlog was full.",
        &|s| s.spool_backlog_refusals,
    );
    family(
        "gomail_webhook_circuit_open",
        "gauge",
        "1 while the circuit breaker holds webhook deliveries back (receiver failing).",
        &|s| s.webhook_circuit_open,
    );
    family(
        "gomail_webhook_disabled",
        "gauge",
        "1 once the receiver answered 410 Gone: no deliveries until restart.",
        &|s| s.webhook_disabled,
    );
    family(
        "gomail_webhook_attempts_total",
        "counter",
        "Webhook requests made (every attempt).",
        &|s| s.webhook_attempts,
    );
    family(
        "gomail_webhook_delivered_total",
        "counter",
        "Messages delivered to the webhook (2xx).",
        &|s| s.webhook_delivered,
    );
    family(
        "gomail_webhook_dead_letters_total",
        "counter",
        "Messages moved to the dead-letter folder.",
        &|s| s.webhook_dead_letters,
    );

    family(
        "gomail_smtp_write_timeouts_total",
        "counter",
        "Connections closed because the client did not take its replies within smtp_write_timeout.",
        &|s| s.write_timeouts,
    );
    let reasons: Vec<&str> = crate::admission::table::RefusedBy::ALL
        .iter()
        .map(|r| r.as_str())
        .collect();
    labelled(
        &mut out,
        stats,
        "gomail_connections_refused_total",
        "SMTP connections refused at connect, by reason.",
        "reason",
        &reasons,
        |s| &s.refused_by,
    );
    labelled(
        &mut out,
        stats,
        "gomail_rate_limited_total",
        "Connections (421) and MAIL or RCPT commands (450) refused by a per-client rate limit.",
        "limit",
        &RATE_LIMITS,
        |s| &s.rate_limited,
    );
    let kinds: Vec<&str> = crate::admission::Violation::ALL
        .iter()
        .map(|v| v.as_str())
        .collect();
    labelled(
        &mut out,
        stats,
        "gomail_violations_total",
        "Client violations counted toward automatic bans, by kind.",
        "kind",
        &kinds,
        |s| &s.violations,
    );
    let _ = writeln!(
        out,
        "# HELP gomail_bans_active Clients and blocks banned now.\n# TYPE gomail_bans_active gauge\ngomail_bans_active {}",
        bans.active
    );
    let _ = writeln!(
        out,
        "# HELP gomail_bans_total Bans made since start, by source.\n# TYPE gomail_bans_total counter\ngomail_bans_total{{source=\"auto\"}} {}\ngomail_bans_total{{source=\"manual\"}} {}",
        bans.made[0], bans.made[1]
    );
    let _ = writeln!(
        out,
        "# HELP gomail_ban_reports_dropped_total Violation reports dropped because the ban service was behind (bans may come late).\n# TYPE gomail_ban_reports_dropped_total counter\ngomail_ban_reports_dropped_total {}",
        bans.dropped
    );
    let _ = writeln!(
        out,
        "# HELP gomail_tls_handshakes_total TLS handshakes completed, by version and cipher."
    );
    let _ = writeln!(out, "# TYPE gomail_tls_handshakes_total counter");
    for s in stats {
        for (suite, n) in &s.tls_by_suite {
            let (version, cipher) = suite.split_once(' ').unwrap_or((suite, ""));
            let _ = writeln!(
                out,
                "gomail_tls_handshakes_total{{shard=\"{}\",version=\"{version}\",cipher=\"{cipher}\"}} {n}",
                s.shard
            );
        }
    }

    histogram(
        &mut out,
        stats,
        "gomail_spool_commit_seconds",
        "Time from the end of a message to its fdatasync: the wait before 250.",
        |s| &s.commit_latency,
    );
    histogram(
        &mut out,
        stats,
        "gomail_webhook_request_seconds",
        "Webhook request latency (connect to the end of the answer).",
        |s| &s.webhook_latency,
    );
    histogram(
        &mut out,
        stats,
        "gomail_webhook_delivery_seconds",
        "From acceptance (250) to the receiver's 2xx, retries included.",
        |s| &s.webhook_delivery_delay,
    );
    histogram(
        &mut out,
        stats,
        "gomail_auth_check_seconds",
        "Time in SPF, DKIM and DMARC checks (DNS included), per check.",
        |s| &s.auth_latency,
    );
    histogram(
        &mut out,
        stats,
        "gomail_dns_lookup_seconds",
        "DNS lookups behind answer-cache misses (authentication checks, blocklists), from the miss to the answer.",
        |s| &s.dns_lookup_latency,
    );
    let _ = writeln!(
        out,
        "# HELP gomail_shards Number of shards.\n# TYPE gomail_shards gauge\ngomail_shards {}",
        stats.len()
    );
    let _ = writeln!(out, "# HELP gomail_uptime_seconds Seconds since start.\n# TYPE gomail_uptime_seconds gauge\ngomail_uptime_seconds {uptime_s}");
    let _ = writeln!(
        out,
        "# HELP gomail_build_info Version of the running gomail.\n# TYPE gomail_build_info gauge\ngomail_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    out
}

/// The control plane's own figures: requests by method, endpoint and
/// status, their latency, and API authentication failures.
#[derive(Debug, Default)]
pub struct HttpStats {
    requests: std::collections::BTreeMap<(&'static str, &'static str, u16), u64>,
    latency: crate::server::LatencyHistogram,
    /// Requests refused for a missing or wrong token.
    pub auth_failures: u64,
}

impl HttpStats {
    /// Counts one answered request.
    pub fn record(
        &mut self,
        method: &'static str,
        endpoint: &'static str,
        status: u16,
        took: std::time::Duration,
    ) {
        *self.requests.entry((method, endpoint, status)).or_default() += 1;
        self.latency.observe(took.as_micros() as u64);
    }

    /// Appends the families to a scrape.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP gomail_http_requests_total API requests answered, by method, endpoint and status.");
        let _ = writeln!(out, "# TYPE gomail_http_requests_total counter");
        for ((m, e, s), n) in &self.requests {
            let _ = writeln!(
                out,
                "gomail_http_requests_total{{method=\"{m}\",endpoint=\"{e}\",status=\"{s}\"}} {n}"
            );
        }
        let name = "gomail_http_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} API request latency, from the request's headers to the answer."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        let h = &self.latency;
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BOUNDS_US.iter().enumerate() {
            cumulative += h.buckets[i];
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum {}", h.sum_us as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {}", h.count);
        let _ = writeln!(
            out,
            "# HELP gomail_auth_failures_total API requests refused for a missing or wrong token.\n# TYPE gomail_auth_failures_total counter\ngomail_auth_failures_total {}",
            self.auth_failures
        );
    }
}

/// The `method` label: the method, or `other` (a label set a client
/// cannot grow).
pub fn method_label(m: &hyper::Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// The `endpoint` label: the route, never the raw path (a ban's address
/// would make a series per address).
pub fn endpoint_label(path: &str, metrics_path: &str) -> &'static str {
    match path {
        "/health" => "/health",
        "/queue/retry" => "/queue/retry",
        "/mail/inbound" => "/mail/inbound",
        "/api/v1/bans" => "/api/v1/bans",
        p if p.starts_with("/api/v1/bans/") => "/api/v1/bans/{ip}",
        p if p == metrics_path => "/metrics",
        _ => "other",
    }
}

/// Writes one counter family with a second label, every value of it on
/// every shard (zeros included, so that rates start from the first scrape).
fn labelled(
    out: &mut String,
    stats: &[ShardStats],
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
    get: impl Fn(&ShardStats) -> &std::collections::BTreeMap<&'static str, u64>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for s in stats {
        let m = get(s);
        for v in values {
            let n = m.get(v).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}{{shard=\"{}\",{label}=\"{v}\"}} {n}", s.shard);
        }
    }
}

/// Writes one histogram family (cumulative buckets, sum, count) per shard.
fn histogram(
    out: &mut String,
    stats: &[ShardStats],
    name: &str,
    help: &str,
    get: impl Fn(&ShardStats) -> &crate::server::LatencyHistogram,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for s in stats {
        let h = get(s);
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BOUNDS_US.iter().enumerate() {
            cumulative += h.buckets[i];
            let le = *bound as f64 / 1e6;
            let _ = writeln!(
                out,
                "{name}_bucket{{shard=\"{}\",le=\"{le}\"}} {cumulative}",
                s.shard
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{shard=\"{}\",le=\"+Inf\"}} {}",
            s.shard, h.count
        );
        let _ = writeln!(
            out,
            "{name}_sum{{shard=\"{}\"}} {}",
            s.shard,
            h.sum_us as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{shard=\"{}\"}} {}", s.shard, h.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_labels_exact() {
        let mut s = ShardStats {
            shard: 1,
            messages_accepted: 3,
            ..ShardStats::default()
        };
        for us in [100, 700, 3_000_000] {
            s.commit_latency.observe(us);
        }
        s.tls_by_suite
            .insert("TLSv1.3 TLS13_AES_128_GCM_SHA256".into(), 2);
        s.refused_by.insert("per_ip", 4);
        let text = render(
            &[s],
            5,
            BanCounts {
                active: 2,
                made: [3, 1],
                dropped: 0,
            },
        );
        assert!(
            text.contains("gomail_connections_refused_total{shard=\"1\",reason=\"per_ip\"} 4\n")
        );
        assert!(
            text.contains("gomail_connections_refused_total{shard=\"1\",reason=\"banned\"} 0\n")
        );
        assert!(text.contains("gomail_bans_active 2\n"));
        assert!(text.contains("gomail_bans_total{source=\"manual\"} 1\n"));
        assert!(text.contains("gomail_messages_accepted_total{shard=\"1\"} 3\n"));
        assert!(
            text.contains("gomail_spool_commit_seconds_bucket{shard=\"1\",le=\"0.00025\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("gomail_spool_commit_seconds_bucket{shard=\"1\",le=\"0.001\"} 2\n"));
        assert!(text.contains("gomail_spool_commit_seconds_bucket{shard=\"1\",le=\"1\"} 2\n"));
        assert!(text.contains("gomail_spool_commit_seconds_bucket{shard=\"1\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("gomail_spool_commit_seconds_count{shard=\"1\"} 3\n"));
        assert!(text.contains("gomail_tls_handshakes_total{shard=\"1\",version=\"TLSv1.3\",cipher=\"TLS13_AES_128_GCM_SHA256\"} 2\n"));
    }
}
