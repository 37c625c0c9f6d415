//! Admission on a shard: what happens between `accept` and the SMTP
//! session. The decisions are made by `crate::admission` (pure tables);
//! this file performs them: refusal replies, counters, log events,
//! violation reports.
//!
//! Order at connect: the ban list, then the global connection count,
//! then the shard's per-client table (concurrency, connection rate).
//! Trusted networks skip the ban list and the table; the global count
//! applies to everyone, as it measures the server's own capacity. A banned
//! client's refused sessions hold places in its table entry too, so being
//! banned never buys more connections than `max_connections_per_ip`.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::ShardState;
use crate::admission::service::{now_ms, Report};
use crate::admission::table::{Limit, Refusal, RefusedBy};
use crate::admission::{client_key, Settings, Violation};
use crate::smtp::{Gate, Misbehaviour, Reply};

/// How often the shard drops per-client state with nothing left to remember.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// A connection that has been let in: it holds its place in the global
/// count and (unless trusted) in the shard's table until dropped.
pub(super) struct Admitted {
    state: Rc<ShardState>,
    /// `Some(key)` when the client is counted in the table (not trusted).
    key: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.state.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(key) = self.key {
            self.state
                .table
                .borrow_mut()
                .disconnect(key, Instant::now());
        }
    }
}

impl Admitted {
    /// The gate the session asks at MAIL and RCPT (`None` for trusted clients).
    pub(super) fn gate(&self, ip: IpAddr) -> Option<Box<dyn Gate>> {
        self.key.map(|key| {
            Box::new(ShardGate {
                state: self.state.clone(),
                ip,
                key,
            }) as Box<dyn Gate>
        })
    }

    /// True when the client is in `trusted_networks`.
    pub(super) fn trusted(&self) -> bool {
        self.key.is_none()
    }
}

/// What to do with a new connection.
pub(super) enum Decision {
    /// Serve it.
    Serve(Admitted),
    /// Refuse it with this reply and close.
    Refuse(Reply),
    /// It is banned: answer with a refused session (554, then 503 to all
    /// but QUIT). It holds its places meanwhile.
    Banned(Admitted, Reply),
}

/// Takes a place in the global count; false (nothing taken) when full.
fn take_place(state: &ShardState, total: u64) -> bool {
    if state.total.fetch_add(1, Ordering::Relaxed) < total {
        return true;
    }
    state.total.fetch_sub(1, Ordering::Relaxed);
    false
}

/// The admission decision for a connection from `ip` under `settings`.
pub(super) fn admit(state: &Rc<ShardState>, settings: &Settings, ip: IpAddr) -> Decision {
    let ip = ip.to_canonical();
    let trusted = settings.trusted.contains(ip);
    let key = client_key(ip);
    let banned = !trusted && state.bans.borrow_mut().load().find(ip, now_ms()).is_some();
    if banned {
        refused(state, RefusedBy::Banned);
        // A banned client gets its refused session only within its own
        // places; past them, the 554 and the door at once.
        let placed = state
            .table
            .borrow_mut()
            .connect(key, Instant::now())
            .is_ok();
        if placed && take_place(state, settings.total) {
            return Decision::Banned(
                Admitted {
                    state: state.clone(),
                    key: Some(key),
                },
                Reply::banned(ip),
            );
        }
        if placed {
            state.table.borrow_mut().disconnect(key, Instant::now());
        }
        return Decision::Refuse(Reply::banned(ip));
    }
    if !take_place(state, settings.total) {
        refused(state, RefusedBy::Total);
        state.log_limit(|| tracing::warn!(event = "connection_limit_exceeded", ip = %ip, reason = "total", count = settings.total, shard = state.id, "connection refused: max_total_connections reached"));
        return Decision::Refuse(Reply::TOO_MANY_CONNECTIONS_TOTAL);
    }
    if trusted {
        return Decision::Serve(Admitted {
            state: state.clone(),
            key: None,
        });
    }
    let verdict = state.table.borrow_mut().connect(key, Instant::now());
    let Err(r) = verdict else {
        return Decision::Serve(Admitted {
            state: state.clone(),
            key: Some(key),
        });
    };
    state.total.fetch_sub(1, Ordering::Relaxed);
    refused(state, r.into());
    match r {
        Refusal::PerIp => {
            violation(state, key, Violation::Limit);
            state.log_limit(|| tracing::warn!(event = "connection_limit_exceeded", ip = %ip, reason = "per_ip", count = settings.per_ip, shard = state.id, "connection refused: max_connections_per_ip reached"));
            Decision::Refuse(Reply::too_many_connections_from(ip))
        }
        Refusal::Rate => {
            violation(state, key, Violation::Limit);
            rate_limited(state, ip, Limit::Connection);
            Decision::Refuse(Reply::connection_rate(ip))
        }
        Refusal::Total => {
            // The table is full of other clients: not this one's doing.
            state.log_limit(|| tracing::warn!(event = "connection_limit_exceeded", ip = %ip, reason = "table_full", count = crate::admission::table::MAX_ENTRIES, shard = state.id, "connection refused: the shard's client table is full"));
            Decision::Refuse(Reply::TOO_MANY_CONNECTIONS_TOTAL)
        }
    }
}

/// Counts a connection refused for `reason` (`gomail_connections_refused_total`).
pub(super) fn refused(state: &ShardState, reason: RefusedBy) {
    *state
        .stats
        .borrow_mut()
        .refused_by
        .entry(reason.as_str())
        .or_default() += 1;
}

fn rate_limited(state: &ShardState, ip: IpAddr, limit: Limit) {
    *state
        .stats
        .borrow_mut()
        .rate_limited
        .entry(limit.as_str())
        .or_default() += 1;
    let settings = state.table.borrow().settings().clone();
    let configured = match limit {
        Limit::Connection => settings.connection_rate,
        Limit::Message => settings.message_rate,
        Limit::Recipient => settings.recipient_rate,
    };
    state.log_limit(|| tracing::warn!(event = "rate_limit_exceeded", ip = %ip, reason = limit.as_str(), count = configured, window_s = settings.rate_window.as_secs(), shard = state.id, "client over its rate limit"));
}

/// Counts a violation and reports it to the ban service.
pub(super) fn violation(state: &ShardState, key: IpAddr, kind: Violation) {
    *state
        .stats
        .borrow_mut()
        .violations
        .entry(kind.as_str())
        .or_default() += 1;
    state.reporter.report(Report {
        key,
        kind,
        shard: state.id,
    });
}

/// The session's view of the shard's rates for one client.
struct ShardGate {
    state: Rc<ShardState>,
    ip: IpAddr,
    key: IpAddr,
}

impl ShardGate {
    fn check(&mut self, limit: Limit, now: Instant) -> bool {
        let ok = self.state.table.borrow_mut().command(self.key, limit, now);
        if !ok {
            rate_limited(&self.state, self.ip, limit);
            violation(&self.state, self.key, Violation::Limit);
        }
        ok
    }
}

impl Gate for ShardGate {
    fn mail(&mut self, now: Instant) -> Option<Reply> {
        (!self.check(Limit::Message, now)).then(|| Reply::message_rate(self.ip))
    }

    fn rcpt(&mut self, now: Instant) -> Option<Reply> {
        (!self.check(Limit::Recipient, now)).then(|| Reply::recipient_rate(self.ip))
    }

    fn misbehaved(&mut self, what: Misbehaviour) {
        let kind = match what {
            Misbehaviour::Relay => Violation::Relay,
            Misbehaviour::TooManyErrors => Violation::Errors,
        };
        violation(&self.state, self.key, kind);
    }
}

/// Drops per-client state with nothing left to remember, every
/// [`SWEEP_EVERY`], so the table stays small when clients go quiet.
pub(super) async fn sweep(state: Rc<ShardState>) {
    loop {
        glommio::timer::sleep(SWEEP_EVERY).await;
        state.table.borrow_mut().sweep(Instant::now());
    }
}

/// Limit-hit log lines a shard writes per second; past that they are
/// counted and summed up in one line, so a flood cannot flood the log.
pub(super) const LOG_BUDGET: u32 = 20;

/// A shard's log budget for limit hits (see [`LOG_BUDGET`]).
#[derive(Debug)]
pub(crate) struct LogBudget {
    since: Instant,
    written: u32,
    suppressed: u64,
}

impl Default for LogBudget {
    fn default() -> LogBudget {
        LogBudget {
            since: Instant::now(),
            written: 0,
            suppressed: 0,
        }
    }
}

impl ShardState {
    /// Writes a limit-hit log line within the shard's budget.
    pub(super) fn log_limit(&self, line: impl FnOnce()) {
        let mut b = self.log_budget.borrow_mut();
        let now = Instant::now();
        if now.duration_since(b.since) >= Duration::from_secs(1) {
            if b.suppressed > 0 {
                tracing::warn!(
                    shard = self.id,
                    suppressed = b.suppressed,
                    "more limit hits than {LOG_BUDGET} a second; the rest were counted, not logged"
                );
            }
            *b = LogBudget {
                since: now,
                ..LogBudget::default()
            };
        }
        if b.written < LOG_BUDGET {
            b.written += 1;
            drop(b);
            line();
        } else {
            b.suppressed += 1;
        }
    }
}
