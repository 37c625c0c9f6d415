//! Admission: who may connect and how much they may send, before and
//! during an SMTP session.
//!
//! Pure code with `now` passed in; the shard driver (`server/conn.rs`)
//! performs what it decides.
//!
//! # Layout
//! - this file: the settings, client keys (IPv4 address, IPv6 /64) and
//!   network lists (`trusted_networks`, CIDR bans);
//! - [`table`]: a shard's per-client table: concurrency, GCRA rates;
//! - [`bans`]: the ban book (violations in a window, bans with expiry,
//!   persistence) and the immutable [`bans::BanList`] shards read;
//! - [`service`]: the thread that owns the ban book, takes shards'
//!   violation reports and publishes ban snapshots.
//!
//! Exactness across shards comes from `shards::steer`: every connection
//! from one key lands on one shard, so the shard's table sees all of them.

pub mod bans;
pub mod service;
pub mod table;

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

use crate::config::Config;

/// The unit limits and bans count in: an IPv4 address, or the /64 of an
/// IPv6 address (one customer's LAN; counting single IPv6 addresses would
/// let one host take 2^64 of them).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        v4 @ IpAddr::V4(_) => v4,
        v6 => masked(v6, 64),
    }
}

/// `addr` with every bit past `prefix` cleared.
fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// An address block: `192.0.2.0/24`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    /// The network address (host bits cleared).
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// The block holding exactly the addresses of `key` (a /32 or a /64).
    pub fn of_key(key: IpAddr) -> Cidr {
        match key {
            IpAddr::V4(_) => Cidr {
                addr: key,
                prefix: 32,
            },
            IpAddr::V6(_) => Cidr {
                addr: client_key(key),
                prefix: 64,
            },
        }
    }

    /// True when `ip` is inside the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(ip) & mask == u128::from(net)
            }
            _ => false,
        }
    }

    /// True when the block is one client key (so a hash lookup finds it).
    pub fn is_key(&self) -> bool {
        matches!(
            (self.addr, self.prefix),
            (IpAddr::V4(_), 32) | (IpAddr::V6(_), 64)
        )
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let raw: IpAddr = a
            .trim_matches(['[', ']'])
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR block"))?;
        let max = if raw.is_ipv4() { 32 } else { 128 };
        let mut prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?,
        };
        // An IPv4-mapped block (`::ffff:192.0.2.0/120`) is the IPv4 block,
        // as clients are compared in their IPv4 form.
        let mut addr = raw;
        if let IpAddr::V6(v6) = raw {
            if let (Some(v4), true) = (v6.to_ipv4_mapped(), prefix >= 96) {
                addr = IpAddr::V4(v4);
                prefix -= 96;
            }
        }
        let addr = masked(addr, prefix);
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == if self.addr.is_ipv4() { 32 } else { 128 } {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// A list of blocks (`trusted_networks`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks(pub Vec<Cidr>);

impl Networks {
    /// True when any block holds `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

/// What the admission checks are set to (resolved once from the config).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `max_connections_per_ip` (0: no limit).
    pub per_ip: u32,
    /// `max_total_connections`, over all shards.
    pub total: u64,
    /// `smtp_connection_rate_limit` per `smtp_rate_window` (0: off).
    pub connection_rate: u32,
    /// `smtp_message_rate_limit` (MAIL commands) per window (0: off).
    pub message_rate: u32,
    /// `smtp_recipient_rate_limit` (RCPT commands) per window (0: off).
    pub recipient_rate: u32,
    /// `smtp_rate_window`: the time unit of the three rates.
    pub rate_window: Duration,
    /// `trusted_networks`: never limited, never banned.
    pub trusted: Networks,
    /// `ban_threshold` violations (0: no automatic bans) ...
    pub ban_threshold: u32,
    /// ... within `ban_window` ...
    pub ban_window: Duration,
    /// ... ban the client for `ban_duration`.
    pub ban_duration: Duration,
    /// `pregreet_wait`: silence the server keeps before its `220` (0: off).
    pub pregreet_wait: Duration,
    /// `smtp_write_timeout`: time allowed for a reply to be taken by the client.
    pub write_timeout: Duration,
    /// `smtp_session_timeout`: time allowed for a whole session.
    pub session_timeout: Duration,
}

impl Settings {
    /// The admission settings of `cfg`.
    pub fn from_config(cfg: &Config) -> Settings {
        let rate = |k| cfg.number(k).min(u64::from(u32::MAX)) as u32;
        Settings {
            per_ip: rate("max_connections_per_ip"),
            total: cfg.max_total_connections as u64,
            connection_rate: rate("smtp_connection_rate_limit"),
            message_rate: rate("smtp_message_rate_limit"),
            recipient_rate: rate("smtp_recipient_rate_limit"),
            rate_window: cfg.duration("smtp_rate_window"),
            trusted: cfg.trusted_networks.clone(),
            ban_threshold: rate("ban_threshold"),
            ban_window: cfg.duration("ban_window"),
            ban_duration: cfg.duration("ban_duration"),
            pregreet_wait: cfg.duration("pregreet_wait"),
            write_timeout: cfg.duration("smtp_write_timeout"),
            session_timeout: cfg.duration("smtp_session_timeout"),
        }
    }
}

/// Something a client did that counts toward an automatic ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Violation {
    /// It hit a connection, rate or concurrency limit.
    Limit,
    /// Its session was closed for too many errors.
    Errors,
    /// It asked us to relay (RCPT for a domain that is not ours).
    Relay,
    /// It spoke before the greeting.
    Pregreet,
    /// DNS blocklists listed it.
    Dnsbl,
}

impl Violation {
    /// Every kind, in metric order.
    pub const ALL: [Violation; 5] = [
        Violation::Limit,
        Violation::Errors,
        Violation::Relay,
        Violation::Pregreet,
        Violation::Dnsbl,
    ];

    /// The `kind` label of `gomail_violations_total`, and the ban reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Violation::Limit => "limit",
            Violation::Errors => "errors",
            Violation::Relay => "relay",
            Violation::Pregreet => "pregreet",
            Violation::Dnsbl => "dnsbl",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_per_64_and_ipv4_per_address() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        assert_eq!(client_key(a).to_string(), "2001:db8:1:2::");
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(client_key(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), v4);
    }

    #[test]
    fn cidr_parse_contains_and_display() {
        let n: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(n.to_string(), "10.0.0.0/8");
        assert!(n.contains("10.200.0.1".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        let one: Cidr = "192.0.2.9".parse().unwrap();
        assert_eq!((one.prefix, one.to_string().as_str()), (32, "192.0.2.9"));
        assert!(one.is_key());
        let v6: Cidr = "[2001:db8::]/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        let mapped: Cidr = "::ffff:192.0.2.0/120".parse().unwrap();
        assert_eq!(mapped.to_string(), "192.0.2.0/24");
        assert!(mapped.contains("192.0.2.200".parse().unwrap()));
        assert!("example.org".parse::<Cidr>().is_err());
    }
}
