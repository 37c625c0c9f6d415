//! The counters a shard keeps. They live on the shard (plain fields, no
//! atomics) and reach the control plane only as snapshots sent by message.

use std::collections::BTreeMap;

use serde::Serialize;

/// Counters one shard keeps (answered on request; never shared memory).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ShardStats {
    /// The shard index.
    pub shard: usize,
    /// TCP connections accepted.
    pub connections_accepted: u64,
    /// Connections open now.
    pub connections_active: u64,
    /// Messages made durable and acknowledged with `250`.
    pub messages_accepted: u64,
    /// Octets of accepted messages.
    pub bytes_accepted: u64,
    /// Messages answered `451` because the spool failed.
    pub spool_failures: u64,
    /// Messages deferred with `452 4.3.1` because the backlog was full.
    pub spool_backlog_refusals: u64,
    /// Messages refused by authentication policy (DMARC) after DATA.
    pub messages_refused_by_policy: u64,
    /// Connections refused because DNS blocklists listed the client.
    pub connections_blocked: u64,
    /// Per-shard DNS cache hits (authentication checks).
    pub dns_cache_hits: u64,
    /// Per-shard DNS cache misses (authentication checks).
    pub dns_cache_misses: u64,
    /// Time of the DNS lookups behind cache misses.
    pub dns_lookup_latency: LatencyHistogram,
    /// Messages written to the JSON store.
    pub messages_stored: u64,
    /// Store batches that failed (retried).
    pub store_failures: u64,
    /// Messages deferred with `452 4.3.1` because the store could not be written.
    pub store_refusals: u64,
    /// 1 while the store cannot be written (new messages are deferred).
    pub store_failing: u64,
    /// Why, while it cannot (for `/health`).
    pub store_error: String,
    /// Messages recovered from the spool at start-up.
    pub messages_recovered: u64,
    /// Damaged places in spool segments found at start-up (each usually
    /// one record, lost); their segments are copied to `spool/corrupt/`.
    pub spool_corrupt_records: u64,
    /// Spool segments that could not be read at start-up (moved to
    /// `spool/corrupt/`; their messages are not recovered).
    pub spool_unreadable_segments: u64,
    /// Webhook POSTs made (every attempt).
    pub webhook_attempts: u64,
    /// Messages delivered to the webhook (2xx).
    pub webhook_delivered: u64,
    /// Messages moved to the dead-letter folder.
    pub webhook_dead_letters: u64,
    /// Webhook request latency.
    pub webhook_latency: LatencyHistogram,
    /// From acceptance (`250`) to the receiver's 2xx, retries included.
    pub webhook_delivery_delay: LatencyHistogram,
    /// 1 while the circuit breaker holds deliveries back.
    pub webhook_circuit_open: u64,
    /// 1 once the receiver answered 410 Gone (until restart).
    pub webhook_disabled: u64,
    /// Messages spooled and not yet in the store.
    pub store_backlog: u64,
    /// Webhook deliveries waiting or under way (one per recipient).
    pub webhook_pending: u64,
    /// Octets of message contents the outbox holds in memory.
    pub webhook_held_bytes: u64,
    /// Octets of spool segments on disk.
    pub spool_bytes: u64,
    /// TLS handshakes completed (STARTTLS and implicit TLS).
    pub tls_handshakes: u64,
    /// Completed handshakes by `"<version> <cipher>"`.
    pub tls_by_suite: BTreeMap<String, u64>,
    /// Time from the end of a message to its fdatasync (the wait before `250`).
    pub commit_latency: LatencyHistogram,
    /// Time spent in authentication checks (SPF at MAIL; DKIM and DMARC
    /// after DATA), DNS included.
    pub auth_latency: LatencyHistogram,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: u64,
    /// Connection tasks that panicked (a bug) and were contained.
    pub connection_panics: u64,
    /// Connections refused at connect, by reason (`per_ip`, `total`,
    /// `rate`, `banned`, `pregreet`, `dnsbl`).
    pub refused_by: BTreeMap<&'static str, u64>,
    /// Rate-limit hits by limit (`connection`, `message`, `recipient`).
    pub rate_limited: BTreeMap<&'static str, u64>,
    /// Violations counted toward bans, by kind.
    pub violations: BTreeMap<&'static str, u64>,
    /// Connections closed because the client did not take its replies
    /// within `smtp_write_timeout`.
    pub write_timeouts: u64,
    /// Messages by authentication result, keyed as GoMail's counters
    /// (`spf_pass`, `dkim_fail`, …; see `auth::Tally::KEYS`).
    pub auth_results: BTreeMap<&'static str, u64>,
}

/// Upper bounds (µs) of [`LatencyHistogram`]'s buckets; a last, unbounded
/// bucket catches the rest.
///
/// From 250 µs (an fdatasync, a DNS answer from a warm resolver) to 6 h (a
/// webhook delivery retried through a receiver's outage): one set for every
/// histogram, so each one's buckets cover what it measures.
pub const LATENCY_BOUNDS_US: [u64; 19] = [
    250,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    1_000_000,
    5_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
    900_000_000,
    3_600_000_000,
    10_800_000_000,
    21_600_000_000,
];

/// A cumulative-at-read latency histogram with fixed buckets (Prometheus style).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    pub buckets: [u64; LATENCY_BOUNDS_US.len() + 1],
    /// Number of observations.
    pub count: u64,
    /// Sum of observations, µs.
    pub sum_us: u64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&mut self, us: u64) {
        let i = LATENCY_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_us += us;
    }

    /// Adds `other`'s observations to these.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.sum_us += other.sum_us;
    }
}
