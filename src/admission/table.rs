//! A shard's per-client table: concurrent connections and the three
//! Postfix-anvil-style rates (connections, MAIL, RCPT per window).
//!
//! Rates use GCRA: a limit of `n` per `window` lets a client burst `n` at
//! once, then one more every `window / n`; after a quiet `window` it may
//! burst `n` again. A refused attempt does not use up allowance.
//!
//! Each entry is a few dozen bytes; an entry goes when its client has no
//! connection open and its rates have fully recovered. The table never
//! holds more than [`MAX_ENTRIES`] clients: a flood of addresses past that
//! is refused as if the server were full, never grown for.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Settings;

/// Clients one shard keeps state for.
pub const MAX_ENTRIES: usize = 1 << 18;

/// Why a connection is refused at connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections_per_ip` connections are open already.
    PerIp,
    /// `smtp_connection_rate_limit` is used up.
    Rate,
    /// `max_total_connections` (or the table) is full.
    Total,
}

/// Why a connection was refused at connect: the `reason` label of
/// `gomail_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedBy {
    /// `max_connections_per_ip`.
    PerIp,
    /// `max_total_connections`, or a full client table.
    Total,
    /// `smtp_connection_rate_limit`.
    Rate,
    /// A ban.
    Banned,
    /// It spoke before the greeting.
    Pregreet,
    /// DNS blocklists.
    Dnsbl,
}

impl RefusedBy {
    /// Every reason, in metric order.
    pub const ALL: [RefusedBy; 6] = [
        RefusedBy::PerIp,
        RefusedBy::Total,
        RefusedBy::Rate,
        RefusedBy::Banned,
        RefusedBy::Pregreet,
        RefusedBy::Dnsbl,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusedBy::PerIp => "per_ip",
            RefusedBy::Total => "total",
            RefusedBy::Rate => "rate",
            RefusedBy::Banned => "banned",
            RefusedBy::Pregreet => "pregreet",
            RefusedBy::Dnsbl => "dnsbl",
        }
    }
}

impl From<Refusal> for RefusedBy {
    fn from(r: Refusal) -> RefusedBy {
        match r {
            Refusal::PerIp => RefusedBy::PerIp,
            Refusal::Rate => RefusedBy::Rate,
            Refusal::Total => RefusedBy::Total,
        }
    }
}

/// Which rate a command hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `smtp_connection_rate_limit`.
    Connection,
    /// `smtp_message_rate_limit`.
    Message,
    /// `smtp_recipient_rate_limit`.
    Recipient,
}

impl Limit {
    /// The `limit` label of `gomail_rate_limited_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Connection => "connection",
            Limit::Message => "message",
            Limit::Recipient => "recipient",
        }
    }
}

#[derive(Debug, Default)]
struct Entry {
    active: u32,
    /// GCRA theoretical arrival times; `None` until first used.
    conn: Option<Instant>,
    msg: Option<Instant>,
    rcpt: Option<Instant>,
}

impl Entry {
    fn idle(&self, now: Instant) -> bool {
        self.active == 0
            && [self.conn, self.msg, self.rcpt]
                .iter()
                .all(|t| t.is_none_or(|t| t <= now))
    }
}

/// One GCRA step: true (and the allowance used) when the event fits.
fn allow(tat: &mut Option<Instant>, now: Instant, limit: u32, window: Duration) -> bool {
    if limit == 0 {
        return true;
    }
    let interval = window / limit;
    let tolerance = window.saturating_sub(interval);
    let t = tat.map_or(now, |t| t.max(now));
    if t.saturating_duration_since(now) > tolerance {
        return false;
    }
    *tat = Some(t + interval);
    true
}

/// A shard's per-client table (see the module docs).
#[derive(Debug)]
pub struct Table {
    settings: Arc<Settings>,
    entries: HashMap<IpAddr, Entry>,
}

impl Table {
    /// An empty table.
    pub fn new(settings: Arc<Settings>) -> Table {
        Table {
            settings,
            entries: HashMap::new(),
        }
    }

    /// Takes `settings` (a reload) unless they are the ones in force. The
    /// clients' counts and rate states carry over: a client over a new,
    /// lower limit is refused from its next connection or command.
    pub fn use_settings(&mut self, settings: &Arc<Settings>) {
        if !Arc::ptr_eq(&self.settings, settings) {
            self.settings = settings.clone();
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &Arc<Settings> {
        &self.settings
    }

    /// A new connection from `key` (see `client_key`): counted, or refused.
    pub fn connect(&mut self, key: IpAddr, now: Instant) -> Result<(), Refusal> {
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_ENTRIES {
            self.sweep(now);
            if self.entries.len() >= MAX_ENTRIES {
                return Err(Refusal::Total);
            }
        }
        let s = &self.settings;
        let e = self.entries.entry(key).or_default();
        let refusal = if s.per_ip > 0 && e.active >= s.per_ip {
            Some(Refusal::PerIp)
        } else if !allow(&mut e.conn, now, s.connection_rate, s.rate_window) {
            Some(Refusal::Rate)
        } else {
            None
        };
        match refusal {
            None => {
                e.active += 1;
                Ok(())
            }
            Some(r) => {
                if e.idle(now) {
                    self.entries.remove(&key);
                }
                Err(r)
            }
        }
    }

    /// A connection from `key` has ended.
    pub fn disconnect(&mut self, key: IpAddr, now: Instant) {
        if let Some(e) = self.entries.get_mut(&key) {
            e.active = e.active.saturating_sub(1);
            if e.idle(now) {
                self.entries.remove(&key);
            }
        }
    }

    /// A MAIL or RCPT command from `key`: true when its rate allows it.
    pub fn command(&mut self, key: IpAddr, limit: Limit, now: Instant) -> bool {
        let s = &self.settings;
        let Some(e) = self.entries.get_mut(&key) else {
            return true;
        };
        match limit {
            Limit::Connection => allow(&mut e.conn, now, s.connection_rate, s.rate_window),
            Limit::Message => allow(&mut e.msg, now, s.message_rate, s.rate_window),
            Limit::Recipient => allow(&mut e.rcpt, now, s.recipient_rate, s.rate_window),
        }
    }

    /// Drops the clients with nothing left to remember, and gives back the
    /// memory a past flood of clients made the table take.
    pub fn sweep(&mut self, now: Instant) {
        self.entries.retain(|_, e| !e.idle(now));
        if self.entries.capacity() > 4 * self.entries.len().max(1024) {
            self.entries.shrink_to_fit();
        }
    }

    /// Clients remembered now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Networks;

    fn settings(per_ip: u32, conn: u32, msg: u32) -> Arc<Settings> {
        Arc::new(Settings {
            per_ip,
            total: 1000,
            connection_rate: conn,
            message_rate: msg,
            recipient_rate: 0,
            rate_window: Duration::from_secs(60),
            trusted: Networks::default(),
            ban_threshold: 5,
            ban_window: Duration::from_secs(600),
            ban_duration: Duration::from_secs(3600),
            pregreet_wait: Duration::ZERO,
            write_timeout: Duration::from_secs(60),
            session_timeout: Duration::from_secs(600),
        })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn concurrency_is_counted_per_client_and_released() {
        let mut t = Table::new(settings(2, 0, 0));
        let now = Instant::now();
        assert_eq!(t.connect(A, now), Ok(()));
        assert_eq!(t.connect(A, now), Ok(()));
        assert_eq!(t.connect(A, now), Err(Refusal::PerIp));
        assert_eq!(t.connect(B, now), Ok(()));
        t.disconnect(A, now);
        assert_eq!(t.connect(A, now), Ok(()));
        for _ in 0..3 {
            t.disconnect(A, now);
        }
        t.disconnect(B, now);
        assert!(t.is_empty(), "idle clients are forgotten");
    }

    #[test]
    fn a_rate_bursts_to_its_limit_refills_and_clears_after_the_window() {
        let mut t = Table::new(settings(0, 5, 0));
        let t0 = Instant::now();
        for i in 0..5 {
            assert_eq!(t.connect(A, t0), Ok(()), "connection {i}");
            t.disconnect(A, t0);
        }
        assert_eq!(t.connect(A, t0), Err(Refusal::Rate));
        // One more every window / limit = 12 s.
        assert_eq!(
            t.connect(A, t0 + Duration::from_secs(11)),
            Err(Refusal::Rate)
        );
        assert_eq!(t.connect(A, t0 + Duration::from_secs(12)), Ok(()));
        t.disconnect(A, t0 + Duration::from_secs(12));
        // A whole quiet window later: a full burst again, and nothing held.
        let later = t0 + Duration::from_secs(12 + 60);
        t.sweep(later);
        assert!(t.is_empty());
        for _ in 0..5 {
            assert_eq!(t.connect(A, later), Ok(()));
        }
    }

    #[test]
    fn message_rate_is_per_client() {
        let mut t = Table::new(settings(0, 0, 2));
        let now = Instant::now();
        t.connect(A, now).unwrap();
        t.connect(B, now).unwrap();
        assert!(t.command(A, Limit::Message, now));
        assert!(t.command(A, Limit::Message, now));
        assert!(!t.command(A, Limit::Message, now));
        assert!(t.command(B, Limit::Message, now));
        // Recipients are not limited in these settings.
        assert!((0..100).all(|_| t.command(A, Limit::Recipient, now)));
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = Table::new(settings(10, 0, 0));
        let now = Instant::now();
        for i in 0..MAX_ENTRIES as u32 {
            t.connect(IpAddr::V4(i.into()), now).unwrap();
        }
        assert_eq!(
            t.connect(IpAddr::V4(u32::MAX.into()), now),
            Err(Refusal::Total)
        );
        t.disconnect(IpAddr::V4(0.into()), now);
        assert_eq!(t.connect(IpAddr::V4(u32::MAX.into()), now), Ok(()));
    }
}
