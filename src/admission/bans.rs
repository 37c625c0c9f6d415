//! Bans: the book the ban service keeps, and the immutable list shards read.
//!
//! The book counts violations per client key within `ban_window`; at
//! `ban_threshold` it bans the key for `ban_duration`. Operators add and
//! remove bans of any block by hand. Times are Unix milliseconds, so a
//! ban reads the same after a restart.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{client_key, Cidr, Violation};

/// Clients whose recent violations the book remembers; past that, clients
/// with nothing recent are forgotten first, then new ones are not counted.
pub const MAX_TRACKED: usize = 1 << 16;

/// Automatic bans held at most: past that a client is refused by its
/// limits but not banned (each ban is written to disk; an IPv6 /48 holds
/// 65,536 client keys). Manual bans are not limited.
pub const MAX_AUTO_BANS: usize = 10_000;

/// The longest ban: ten years.
pub const MAX_BAN: Duration = Duration::from_secs(10 * 365 * 86_400);

/// How a ban was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// By `ban_threshold` violations within `ban_window`.
    Auto,
    /// By an operator (`gomail security ban`, `POST /api/v1/bans`).
    Manual,
}

impl Source {
    /// The `source` label of `gomail_bans_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Auto => "auto",
            Source::Manual => "manual",
        }
    }
}

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// The banned block (`192.0.2.7`, `2001:db8:1:2::/64`, `10.0.0.0/8`).
    #[serde(with = "cidr_text")]
    pub net: Cidr,
    /// Why.
    pub reason: String,
    /// Automatic or manual.
    pub source: Source,
    /// Violations that led to it (0 for a manual ban).
    pub count: u32,
    /// When it was made, Unix milliseconds.
    pub since_ms: i64,
    /// When it ends, Unix milliseconds.
    pub expires_ms: i64,
}

impl Ban {
    /// True while the ban holds.
    pub fn active(&self, now_ms: i64) -> bool {
        self.expires_ms > now_ms
    }
}

mod cidr_text {
    use super::Cidr;
    use serde::{Deserialize, Deserializer, Serializer};
    pub(super) fn serialize<S: Serializer>(c: &Cidr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(c)
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The bans in force, as shards read them (one lookup per connection).
#[derive(Debug, Default)]
pub struct BanList {
    /// Bans of exactly one client key: a hash lookup.
    keys: HashMap<IpAddr, Ban>,
    /// Wider or narrower blocks: scanned (operators list few).
    nets: Vec<Ban>,
}

impl BanList {
    /// The ban covering `ip` at `now_ms`, if any.
    pub fn find(&self, ip: IpAddr, now_ms: i64) -> Option<&Ban> {
        if self.keys.is_empty() && self.nets.is_empty() {
            return None;
        }
        self.keys
            .get(&client_key(ip))
            .into_iter()
            .chain(self.nets.iter().filter(|b| b.net.contains(ip)))
            .find(|b| b.active(now_ms))
    }
}

/// The ban service's state (see the module docs).
#[derive(Debug, Default)]
pub struct BanBook {
    /// Per client key: when each recent violation was, and whether it was
    /// a limit hit.
    violations: HashMap<IpAddr, VecDeque<(Instant, bool)>>,
    bans: BTreeMap<Cidr, Ban>,
    /// Bans that are not one client key (wider or narrower blocks).
    blocks: usize,
    auto_bans: usize,
    /// When the violation table was last pruned.
    pruned: Option<Instant>,
}

/// What the book needs to decide automatic bans.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `ban_threshold` (0: never ban automatically).
    pub threshold: u32,
    /// `ban_window`.
    pub window: Duration,
    /// `ban_duration`.
    pub duration: Duration,
    /// Limit hits count at most once per this time (`smtp_rate_window`):
    /// a client that keeps going over its limits is banned, one that
    /// bursts over them once is not.
    pub limit_every: Duration,
}

impl BanBook {
    /// A book holding `bans` (read back from disk); expired ones are dropped.
    pub fn with_bans(bans: Vec<Ban>, now_ms: i64) -> BanBook {
        let mut book = BanBook::default();
        for b in bans.into_iter().filter(|b| b.active(now_ms)) {
            book.insert(b);
        }
        book
    }

    /// Adds `ban`, replacing one of the same block.
    fn insert(&mut self, ban: Ban) {
        let counts = |b: &Ban| {
            (
                usize::from(!b.net.is_key()),
                usize::from(b.source == Source::Auto),
            )
        };
        let (blocks, autos) = counts(&ban);
        self.blocks += blocks;
        self.auto_bans += autos;
        if let Some(old) = self.bans.insert(ban.net, ban) {
            let (blocks, autos) = counts(&old);
            self.blocks -= blocks;
            self.auto_bans -= autos;
        }
    }

    /// Removes the ban of exactly `net`.
    fn remove(&mut self, net: &Cidr) -> Option<Ban> {
        let old = self.bans.remove(net)?;
        self.blocks -= usize::from(!old.net.is_key());
        self.auto_bans -= usize::from(old.source == Source::Auto);
        Some(old)
    }

    /// True when a ban in force covers `key`: one lookup, plus a scan of
    /// the block bans when there are any.
    fn covers(&self, key: IpAddr, now_ms: i64) -> bool {
        let active = |b: &Ban| b.active(now_ms) && b.net.contains(key);
        self.bans.get(&Cidr::of_key(key)).is_some_and(active)
            || (self.blocks > 0 && self.bans.values().any(active))
    }

    /// Counts a violation by `key`; returns the ban it triggers, if any.
    pub fn violation(
        &mut self,
        key: IpAddr,
        kind: Violation,
        policy: &Policy,
        now: Instant,
        now_ms: i64,
    ) -> Option<Ban> {
        if policy.threshold == 0 || self.covers(key, now_ms) {
            return None;
        }
        if !self.violations.contains_key(&key) && self.violations.len() >= MAX_TRACKED {
            // Pruned at most once a second: a flood of new keys must not
            // make every report scan the table.
            if self
                .pruned
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                self.pruned = Some(now);
                let window = policy.window;
                self.violations.retain(|_, q| {
                    q.back()
                        .is_some_and(|&(t, _)| now.duration_since(t) < window)
                });
            }
            if self.violations.len() >= MAX_TRACKED {
                return None;
            }
        }
        let q = self.violations.entry(key).or_default();
        while q
            .front()
            .is_some_and(|&(t, _)| now.duration_since(t) >= policy.window)
        {
            q.pop_front();
        }
        let limit = kind == Violation::Limit;
        if limit
            && q.iter()
                .any(|&(t, l)| l && now.duration_since(t) < policy.limit_every)
        {
            return None;
        }
        q.push_back((now, limit));
        if (q.len() as u32) < policy.threshold || self.auto_bans >= MAX_AUTO_BANS {
            return None;
        }
        let count = q.len() as u32;
        self.violations.remove(&key);
        let ban = Ban {
            net: Cidr::of_key(key),
            reason: format!(
                "{count} violations within {}s, the last: {}",
                policy.window.as_secs(),
                kind.as_str()
            ),
            source: Source::Auto,
            count,
            since_ms: now_ms,
            expires_ms: expiry(now_ms, policy.duration),
        };
        self.insert(ban.clone());
        Some(ban)
    }

    /// Bans `net` by hand (at most [`MAX_BAN`]), replacing a ban of the
    /// same block.
    pub fn ban(&mut self, net: Cidr, duration: Duration, reason: String, now_ms: i64) -> Ban {
        let ban = Ban {
            net,
            reason,
            source: Source::Manual,
            count: 0,
            since_ms: now_ms,
            expires_ms: expiry(now_ms, duration),
        };
        self.insert(ban.clone());
        ban
    }

    /// Lifts the ban of exactly `net`; its clients' violations start over.
    pub fn unban(&mut self, net: Cidr) -> Option<Ban> {
        let ban = self.remove(&net)?;
        self.violations.retain(|k, _| !net.contains(*k));
        Some(ban)
    }

    /// Removes and returns the bans that have ended by `now_ms`.
    pub fn expire(&mut self, now_ms: i64) -> Vec<Ban> {
        let ended: Vec<Cidr> = self
            .bans
            .values()
            .filter(|b| !b.active(now_ms))
            .map(|b| b.net)
            .collect();
        ended.iter().filter_map(|n| self.remove(n)).collect()
    }

    /// When the next ban ends, Unix milliseconds.
    pub fn next_expiry(&self) -> Option<i64> {
        self.bans.values().map(|b| b.expires_ms).min()
    }

    /// The bans, by block.
    pub fn bans(&self) -> impl Iterator<Item = &Ban> {
        self.bans.values()
    }

    /// Number of bans held.
    pub fn len(&self) -> usize {
        self.bans.len()
    }

    /// True when nobody is banned.
    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }

    /// The list shards read.
    pub fn snapshot(&self) -> BanList {
        let mut list = BanList::default();
        for b in self.bans.values() {
            if b.net.is_key() {
                list.keys.insert(b.net.addr, b.clone());
            } else {
                list.nets.push(b.clone());
            }
        }
        list
    }
}

/// When a ban made at `now_ms` for `duration` ends (at most [`MAX_BAN`]).
fn expiry(now_ms: i64, duration: Duration) -> i64 {
    let ms = i64::try_from(duration.min(MAX_BAN).as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_add(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        threshold: 3,
        window: Duration::from_secs(600),
        duration: Duration::from_secs(3600),
        limit_every: Duration::from_secs(60),
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn threshold_violations_within_the_window_ban_the_key() {
        let mut book = BanBook::default();
        let t0 = Instant::now();
        let key = ip("192.0.2.1");
        assert!(book
            .violation(key, Violation::Relay, &POLICY, t0, 0)
            .is_none());
        assert!(book
            .violation(key, Violation::Relay, &POLICY, t0, 0)
            .is_none());
        let ban = book
            .violation(key, Violation::Limit, &POLICY, t0, 1_000)
            .expect("the third violation bans");
        assert_eq!((ban.source, ban.count), (Source::Auto, 3));
        assert_eq!(ban.expires_ms, 1_000 + 3_600_000);
        assert!(ban.reason.contains("limit"), "{}", ban.reason);
        let list = book.snapshot();
        assert!(list.find(key, 2_000).is_some());
        assert!(list.find(key, 3_601_000).is_none(), "ends on time");
        assert!(list.find(ip("192.0.2.2"), 2_000).is_none());
    }

    #[test]
    fn old_violations_fall_out_of_the_window() {
        let mut book = BanBook::default();
        let t0 = Instant::now();
        let key = ip("192.0.2.1");
        book.violation(key, Violation::Relay, &POLICY, t0, 0);
        book.violation(key, Violation::Relay, &POLICY, t0, 0);
        let later = t0 + Duration::from_secs(601);
        assert!(book
            .violation(key, Violation::Relay, &POLICY, later, 0)
            .is_none());
    }

    #[test]
    fn ipv6_bans_cover_the_64_and_cidr_bans_cover_their_block() {
        let mut book = BanBook::default();
        let t0 = Instant::now();
        let key = client_key(ip("2001:db8:1:2::5"));
        for _ in 0..3 {
            book.violation(key, Violation::Pregreet, &POLICY, t0, 0);
        }
        book.ban(
            "198.51.100.0/24".parse().unwrap(),
            Duration::from_secs(60),
            "spam run".into(),
            0,
        );
        let list = book.snapshot();
        assert!(list.find(ip("2001:db8:1:2:ffff::1"), 1).is_some());
        assert!(list.find(ip("2001:db8:1:3::1"), 1).is_none());
        assert_eq!(
            list.find(ip("198.51.100.77"), 1).unwrap().reason,
            "spam run"
        );
        assert!(book.unban("198.51.100.0/24".parse().unwrap()).is_some());
        assert!(book.snapshot().find(ip("198.51.100.77"), 1).is_none());
    }

    #[test]
    fn expiry_removes_bans_and_a_restart_keeps_the_rest() {
        let mut book = BanBook::default();
        book.ban(
            "192.0.2.1".parse().unwrap(),
            Duration::from_secs(1),
            "a".into(),
            0,
        );
        book.ban(
            "192.0.2.2".parse().unwrap(),
            Duration::from_secs(9),
            "b".into(),
            0,
        );
        assert_eq!(book.next_expiry(), Some(1_000));
        let ended = book.expire(1_000);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].reason, "a");
        let saved = serde_json::to_string(&book.bans().cloned().collect::<Vec<_>>()).unwrap();
        assert!(saved.contains("\"net\":\"192.0.2.2\""), "{saved}");
        let back: Vec<Ban> = serde_json::from_str(&saved).unwrap();
        let book = BanBook::with_bans(back, 2_000);
        assert_eq!(book.len(), 1);
        assert!(BanBook::with_bans(book.bans().cloned().collect(), 9_000).is_empty());
    }

    #[test]
    fn limit_hits_count_once_per_rate_window() {
        let mut book = BanBook::default();
        let t0 = Instant::now();
        let key = ip("192.0.2.1");
        // A burst over the limits: one violation, however many refusals.
        for _ in 0..100 {
            assert!(book
                .violation(key, Violation::Limit, &POLICY, t0, 0)
                .is_none());
        }
        // Still over them a minute and two minutes later: banned.
        let m1 = t0 + Duration::from_secs(60);
        assert!(book
            .violation(key, Violation::Limit, &POLICY, m1, 0)
            .is_none());
        let m2 = t0 + Duration::from_secs(120);
        assert!(book
            .violation(key, Violation::Limit, &POLICY, m2, 0)
            .is_some());
    }

    #[test]
    fn automatic_bans_are_bounded_and_durations_capped() {
        let mut book = BanBook::default();
        let t0 = Instant::now();
        let one = Policy {
            threshold: 1,
            ..POLICY
        };
        for i in 0..MAX_AUTO_BANS as u32 + 10 {
            book.violation(IpAddr::V4(i.into()), Violation::Relay, &one, t0, 0);
        }
        assert_eq!(book.len(), MAX_AUTO_BANS);
        // Manual bans are not limited; a huge duration is capped.
        let b = book.ban("10.0.0.0/8".parse().unwrap(), Duration::MAX, "x".into(), 0);
        assert_eq!(b.expires_ms, MAX_BAN.as_millis() as i64);
        assert_eq!(book.len(), MAX_AUTO_BANS + 1);
        // A client inside the banned block is not counted again.
        assert!(!book.violations.contains_key(&ip("10.1.2.3")));
        assert!(book
            .violation(ip("10.1.2.3"), Violation::Relay, &one, t0, 1)
            .is_none());
    }

    #[test]
    fn an_unbanned_client_starts_over() {
        let mut book = BanBook::default();
        let t0 = Instant::now();
        let key = ip("192.0.2.1");
        for _ in 0..3 {
            book.violation(key, Violation::Relay, &POLICY, t0, 0);
        }
        book.unban(Cidr::of_key(key)).unwrap();
        assert!(book
            .violation(key, Violation::Relay, &POLICY, t0, 0)
            .is_none());
    }
}
