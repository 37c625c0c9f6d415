//! Admission on a shard: what happens between `accept` and the SMTP
//! session. The decisions are made by `crate::admission` (pure tables);
//! this file performs them: refusal replies, counters, log events,
//! violation reports.
//!
//! Order at connect: ban list, then the global connection count, then the
//! shard's per-client table (concurrency, connection rate). Trusted
//! networks skip the ban list and the table; the global count applies to
//! everyone, as it measures the server's own capacity.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::ShardState;
use crate::admission::service::{now_ms, Report};
use crate::admission::table::{Limit, Refusal};
use crate::admission::{client_key, Violation};
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
    /// but QUIT). It holds its place in the global count meanwhile.
    Banned(Admitted, Reply),
}

/// The admission decision for a connection from `ip`.
pub(super) fn admit(state: &Rc<ShardState>, ip: IpAddr) -> Decision {
    let ip = ip.to_canonical();
    let trusted = state.admission.trusted.contains(ip);
    let total = state.total.fetch_add(1, Ordering::Relaxed) + 1;
    if total > state.admission.total {
        state.total.fetch_sub(1, Ordering::Relaxed);
        refused(state, Refusal::Total.as_str());
        tracing::warn!(event = "connection_limit_exceeded", ip = %ip, reason = "total", count = total - 1, shard = state.id, "connection refused: max_total_connections reached");
        return Decision::Refuse(Reply::TOO_MANY_CONNECTIONS_TOTAL);
    }
    if trusted {
        return Decision::Serve(Admitted {
            state: state.clone(),
            key: None,
        });
    }
    if let Some(ban) = state.bans.load().find(ip, now_ms()) {
        refused(state, "banned");
        tracing::debug!(shard = state.id, ip = %ip, ban = %ban.net, reason = %ban.reason, "banned client refused");
        return Decision::Banned(
            Admitted {
                state: state.clone(),
                key: None,
            },
            Reply::banned(ip),
        );
    }
    let key = client_key(ip);
    let verdict = state.table.borrow_mut().connect(key, Instant::now());
    match verdict {
        Ok(()) => Decision::Serve(Admitted {
            state: state.clone(),
            key: Some(key),
        }),
        Err(r) => {
            state.total.fetch_sub(1, Ordering::Relaxed);
            refused(state, r.as_str());
            violation(state, key, Violation::Limit);
            match r {
                Refusal::PerIp => {
                    tracing::warn!(event = "connection_limit_exceeded", ip = %ip, reason = "per_ip", count = state.admission.per_ip, shard = state.id, "connection refused: max_connections_per_ip reached");
                    Decision::Refuse(Reply::too_many_connections_from(ip))
                }
                Refusal::Rate => {
                    rate_limited(state, ip, Limit::Connection);
                    Decision::Refuse(Reply::connection_rate(ip))
                }
                Refusal::Total => {
                    tracing::warn!(event = "connection_limit_exceeded", ip = %ip, reason = "table_full", count = crate::admission::table::MAX_ENTRIES, shard = state.id, "connection refused: the shard's client table is full");
                    Decision::Refuse(Reply::TOO_MANY_CONNECTIONS_TOTAL)
                }
            }
        }
    }
}

/// Counts a connection refused for `reason` (`gomail_connections_refused_total`).
pub(super) fn refused(state: &ShardState, reason: &'static str) {
    *state
        .stats
        .borrow_mut()
        .refused_by
        .entry(reason)
        .or_default() += 1;
}

fn rate_limited(state: &ShardState, ip: IpAddr, limit: Limit) {
    *state
        .stats
        .borrow_mut()
        .rate_limited
        .entry(limit.as_str())
        .or_default() += 1;
    let configured = match limit {
        Limit::Connection => state.admission.connection_rate,
        Limit::Message => state.admission.message_rate,
        Limit::Recipient => state.admission.recipient_rate,
    };
    tracing::warn!(event = "rate_limit_exceeded", ip = %ip, reason = limit.as_str(), count = configured, window_s = state.admission.rate_window.as_secs(), shard = state.id, "client over its rate limit");
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
