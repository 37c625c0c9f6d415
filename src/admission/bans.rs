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
    violations: HashMap<IpAddr, VecDeque<Instant>>,
    bans: BTreeMap<Cidr, Ban>,
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
}

impl BanBook {
    /// A book holding `bans` (read back from disk); expired ones are dropped.
    pub fn with_bans(bans: Vec<Ban>, now_ms: i64) -> BanBook {
        BanBook {
            violations: HashMap::new(),
            bans: bans
                .into_iter()
                .filter(|b| b.active(now_ms))
                .map(|b| (b.net, b))
                .collect(),
        }
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
        if policy.threshold == 0 || self.snapshot_find(key, now_ms) {
            return None;
        }
        if !self.violations.contains_key(&key) && self.violations.len() >= MAX_TRACKED {
            let window = policy.window;
            self.violations
                .retain(|_, q| q.back().is_some_and(|&t| now.duration_since(t) < window));
            if self.violations.len() >= MAX_TRACKED {
                return None;
            }
        }
        let q = self.violations.entry(key).or_default();
        q.push_back(now);
        while q
            .front()
            .is_some_and(|&t| now.duration_since(t) >= policy.window)
        {
            q.pop_front();
        }
        if (q.len() as u32) < policy.threshold {
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
            expires_ms: now_ms.saturating_add(policy.duration.as_millis() as i64),
        };
        self.bans.insert(ban.net, ban.clone());
        Some(ban)
    }

    fn snapshot_find(&self, key: IpAddr, now_ms: i64) -> bool {
        self.bans
            .values()
            .any(|b| b.active(now_ms) && b.net.contains(key))
    }

    /// Bans `net` by hand, replacing a ban of the same block.
    pub fn ban(&mut self, net: Cidr, duration: Duration, reason: String, now_ms: i64) -> Ban {
        let ban = Ban {
            net,
            reason,
            source: Source::Manual,
            count: 0,
            since_ms: now_ms,
            expires_ms: now_ms.saturating_add(duration.as_millis() as i64),
        };
        self.bans.insert(net, ban.clone());
        ban
    }

    /// Lifts the ban of exactly `net`; its clients' violations start over.
    pub fn unban(&mut self, net: Cidr) -> Option<Ban> {
        let ban = self.bans.remove(&net)?;
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
        ended
            .into_iter()
            .filter_map(|n| self.bans.remove(&n))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        threshold: 3,
        window: Duration::from_secs(600),
        duration: Duration::from_secs(3600),
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
