//! DNS for the authentication checks: one small tokio runtime for the whole
//! process, and a TTL-honouring, bounded cache per shard.
//!
//! mail-auth resolves through hickory's tokio resolver, while shards run
//! glommio. Each shard enters the runtime's context for its whole life and
//! polls the lookups itself, so the crypto (DKIM signatures, SPF and DMARC
//! evaluation) runs inline on the shard; only the sockets' IO is driven by
//! the runtime's one worker thread, which wakes the shard when an answer
//! arrives. No shard waits behind another's lookup.

use std::borrow::Borrow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::{MessageAuthenticator, Parameters, RecordSet, ResolverCache, Txt, MX};

use crate::server::LatencyHistogram;

/// Entries per record type per shard; past that, expired entries are
/// dropped, then the cache starts over.
const CACHE_MAX: usize = 16_384;

/// The longest a "no such record" answer is kept, whatever its zone says.
const NEGATIVE_MAX: Duration = Duration::from_secs(300);

/// The process's DNS runtime and resolver settings.
pub struct DnsRuntime {
    runtime: tokio::runtime::Runtime,
    config: ResolverConfig,
    opts: ResolverOpts,
}

/// Resolver entries for `servers` (UDP and TCP, each on its own port).
pub(crate) fn name_servers(servers: &[SocketAddr]) -> Vec<NameServerConfig> {
    servers
        .iter()
        .map(|a| {
            let mut ns = NameServerConfig::udp_and_tcp(a.ip());
            for c in &mut ns.connections {
                c.port = a.port();
            }
            ns
        })
        .collect()
}

impl DnsRuntime {
    /// Starts the runtime. `servers` empty: the system's resolvers
    /// (`/etc/resolv.conf`); otherwise those, by UDP then TCP.
    pub fn start(servers: &[SocketAddr], timeout: Duration) -> std::io::Result<DnsRuntime> {
        let (config, mut opts) = if servers.is_empty() {
            mail_auth::hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| std::io::Error::other(format!("reading /etc/resolv.conf: {e}")))?
        } else {
            let ns = name_servers(servers);
            (
                ResolverConfig::from_name_servers(ns),
                ResolverOpts::default(),
            )
        };
        // Positive answers are cached per shard in `TtlCache` (below). The
        // resolver's own cache is kept small and holds what that cache
        // cannot: negative answers (NXDOMAIN, NODATA), e.g. the DMARC
        // organisational-domain walk that misses for almost every message.
        // Each shard builds its own resolver, so this cache is per shard too.
        opts.cache_size = 1024;
        opts.negative_max_ttl = Some(NEGATIVE_MAX);
        opts.timeout = timeout;
        opts.attempts = 1;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dns")
            .enable_all()
            .build()?;
        Ok(DnsRuntime {
            runtime,
            config,
            opts,
        })
    }

    /// The runtime's handle; a shard enters it for its whole life.
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.runtime.handle().clone()
    }

    /// A resolver for one shard (its own sockets).
    pub fn authenticator(&self) -> std::io::Result<MessageAuthenticator> {
        let _enter = self.runtime.enter();
        MessageAuthenticator::new(self.config.clone(), self.opts.clone())
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

/// A shard-local cache for one record type: honours each answer's TTL,
/// bounded in size, counts hits and misses, and times the lookups its
/// misses lead to. No lock: one shard, one thread.
pub struct TtlCache<K, V> {
    map: RefCell<HashMap<K, (V, Instant)>>,
    hits: Cell<u64>,
    misses: Cell<u64>,
    /// Misses waiting for their answer: (hash of the name, when).
    pending: RefCell<Vec<(u64, Instant)>>,
    /// From a miss to its answer arriving in the cache.
    lookups: RefCell<LatencyHistogram>,
}

impl<K, V> Default for TtlCache<K, V> {
    fn default() -> Self {
        TtlCache {
            map: RefCell::new(HashMap::new()),
            hits: Cell::new(0),
            misses: Cell::new(0),
            pending: RefCell::new(Vec::new()),
            lookups: RefCell::new(LatencyHistogram::default()),
        }
    }
}

/// Misses whose lookup failed never get an answer; past this many waiting,
/// the oldest are forgotten. One entry per name: a new miss for a name
/// already waiting restarts its clock, so an answer is never timed against
/// an older, failed lookup.
const PENDING_MAX: usize = 256;

impl<K: Hash + Eq, V> TtlCache<K, V> {
    /// The lookup for `name`, missed at some point, is over: its time goes
    /// into the lookup histogram.
    fn settle<Q>(&self, name: &Q)
    where
        Q: Hash + ?Sized,
    {
        if let Some(since) = self.forget(name) {
            self.lookups
                .borrow_mut()
                .observe(since.elapsed().as_micros() as u64);
        }
    }

    /// Drops the waiting miss for `name`, untimed; returns when it began.
    fn forget<Q>(&self, name: &Q) -> Option<Instant>
    where
        Q: Hash + ?Sized,
    {
        let h = self.map.borrow().hasher().hash_one(name);
        let mut pending = self.pending.borrow_mut();
        let i = pending.iter().position(|(p, _)| *p == h)?;
        Some(pending.remove(i).1)
    }

    /// The unexpired entry for `key`, if any (not counted as a hit or miss).
    fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        let now = Instant::now();
        self.map
            .borrow()
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(v, _)| v.clone())
    }
}

impl<K: Hash + Eq, V: Clone> ResolverCache<K, V> for TtlCache<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let found = self.peek(name);
        let counter = if found.is_some() {
            &self.hits
        } else {
            // A name already waiting restarts its clock (see PENDING_MAX).
            if self.forget(name).is_none() && self.pending.borrow().len() >= PENDING_MAX {
                self.pending.borrow_mut().drain(..PENDING_MAX / 2);
            }
            let h = self.map.borrow().hasher().hash_one(name);
            self.pending.borrow_mut().push((h, Instant::now()));
            &self.misses
        };
        counter.set(counter.get() + 1);
        found
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.borrow_mut().remove(name).map(|(v, _)| v)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        self.settle(&key);
        let mut map = self.map.borrow_mut();
        if map.len() >= CACHE_MAX {
            let now = Instant::now();
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= CACHE_MAX {
                map.clear();
            }
        }
        map.insert(key, (value, valid_until));
    }
}

/// One shard's DNS caches, one per record type mail-auth asks for.
#[derive(Default)]
pub struct ShardDns {
    txt: TtlCache<Box<str>, Txt>,
    mx: TtlCache<Box<str>, RecordSet<MX>>,
    ipv4: TtlCache<Box<str>, RecordSet<Ipv4Addr>>,
    ipv6: TtlCache<Box<str>, RecordSet<Ipv6Addr>>,
    ptr: TtlCache<IpAddr, RecordSet<Box<str>>>,
}

/// mail-auth parameters wired to a shard's caches.
pub type Cached<'x, P> = Parameters<
    'x,
    P,
    TtlCache<Box<str>, Txt>,
    TtlCache<Box<str>, RecordSet<MX>>,
    TtlCache<Box<str>, RecordSet<Ipv4Addr>>,
    TtlCache<Box<str>, RecordSet<Ipv6Addr>>,
    TtlCache<IpAddr, RecordSet<Box<str>>>,
>;

impl ShardDns {
    /// Wraps check parameters with this shard's caches.
    pub fn params<P>(&self, p: P) -> Cached<'_, P> {
        Parameters::new(p)
            .with_txt_cache(&self.txt)
            .with_mx_cache(&self.mx)
            .with_ipv4_cache(&self.ipv4)
            .with_ipv6_cache(&self.ipv6)
            .with_ptr_cache(&self.ptr)
    }

    /// Puts the absences DMARC's tree walk met for `author_domain` (the
    /// RFC5322.From domain) in the answer cache, for the zone's negative
    /// TTL (at most 5 minutes), so that the next walk finds them there.
    ///
    /// mail-auth puts only answers it got in the cache, yet the absences
    /// are most of the walk: `_dmarc.<tld>.` for every message, and most
    /// parents of a sender domain. Walking the same names in the same
    /// order, each name the cache does not hold is asked again, which the
    /// resolver's own cache answers, since the walk just asked it. The
    /// walk's end is where it stopped: a record with `psd=`, or a name the
    /// walk cannot have asked (a record after all, or a failure, which is
    /// never kept: it must stay a temporary error). So at most one query
    /// per message goes beyond what the walk asked, and only the author's
    /// domain is walked, whatever the message's signatures name.
    pub async fn learn_dmarc_absences(&self, resolver: &MessageAuthenticator, author_domain: &str) {
        use mail_auth::dmarc::Psd;
        use mail_auth::hickory_resolver::net::{DnsError, NetError};
        use mail_auth::hickory_resolver::proto::rr::Name;
        let mut names = Vec::new();
        dmarc_walk_names(&mail_auth::common::to_a_label(author_domain), &mut names);
        for name in &names {
            match self.txt.peek(name.as_str()) {
                Some(Txt::Dmarc(d)) if matches!(d.psd, Psd::Yes | Psd::No) => return,
                Some(_) => continue,
                None => {}
            }
            let Ok(query) = Name::from_str_relaxed(name) else {
                return;
            };
            let Err(NetError::Dns(DnsError::NoRecordsFound(none))) =
                resolver.0.txt_lookup(query).await
            else {
                return;
            };
            let Some(ttl) = none.negative_ttl else {
                return;
            };
            let keep = Duration::from_secs(ttl.into()).min(NEGATIVE_MAX);
            let absent =
                mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(none.response_code));
            // The walk's miss for this name is not timed: its answer came
            // long before this, and this one came from the resolver's cache.
            self.txt.forget(name.as_str());
            self.txt.insert(
                name.as_str().into(),
                Txt::Error(absent),
                Instant::now() + keep,
            );
        }
    }

    /// The A-record cache (DNS blocklists use it directly).
    pub fn ipv4(&self) -> &TtlCache<Box<str>, RecordSet<Ipv4Addr>> {
        &self.ipv4
    }

    /// How long the lookups behind cache misses took (all record types):
    /// from the miss to the answer arriving in the cache. Lookups that
    /// found no record are in it only for blocklists (where "not listed"
    /// is the usual answer); other absences, and failures (timeout,
    /// SERVFAIL), are not: their cost shows in the checks' time and, for
    /// failures, their `temperror` results.
    pub fn lookup_latency(&self) -> LatencyHistogram {
        let mut all = self.txt.lookups.borrow().clone();
        for h in [
            &self.mx.lookups,
            &self.ipv4.lookups,
            &self.ipv6.lookups,
            &self.ptr.lookups,
        ] {
            all.merge(&h.borrow());
        }
        all
    }

    /// A DNS blocklist lookup for `name` is over (listed or not).
    pub fn settle_ipv4(&self, name: &str) {
        self.ipv4.settle(name);
    }

    /// (hits, misses) over all record types.
    pub fn counts(&self) -> (u64, u64) {
        let h = self.txt.hits.get()
            + self.mx.hits.get()
            + self.ipv4.hits.get()
            + self.ipv6.hits.get()
            + self.ptr.hits.get();
        let m = self.txt.misses.get()
            + self.mx.misses.get()
            + self.ipv4.misses.get()
            + self.ipv6.misses.get()
            + self.ptr.misses.get();
        (h, m)
    }
}

/// The names DMARC's tree walk (RFC 9989 section 4.10, as mail-auth 0.13
/// does it) asks for `domain`: `_dmarc.<domain>.`, then its parents, down to
/// seven labels when it has eight or more, then one label at a time to the
/// top-level domain. Appended to `out`.
pub fn dmarc_walk_names(domain: &str, out: &mut Vec<String>) {
    let total = domain.split('.').filter(|l| !l.is_empty()).count();
    if total < 2 {
        return;
    }
    let mut count = total;
    loop {
        let mut name = domain;
        for _ in 0..total - count {
            name = name.split_once('.').map_or("", |(_, rest)| rest);
        }
        out.push(format!("_dmarc.{name}."));
        if count == 1 {
            break;
        }
        count = if count >= 8 { 7 } else { count - 1 };
    }
}

#[cfg(test)]
mod tests {
    use super::dmarc_walk_names;

    #[test]
    fn the_cache_stays_bounded() {
        use mail_auth::ResolverCache;
        let cache = super::TtlCache::<Box<str>, u32>::default();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        for i in 0..super::CACHE_MAX as u32 + 10 {
            cache.insert(format!("n{i}.example.").into(), i, until);
        }
        assert!(cache.map.borrow().len() <= super::CACHE_MAX);
        let last = format!("n{}.example.", super::CACHE_MAX as u32 + 9);
        assert_eq!(cache.get(last.as_str()), Some(super::CACHE_MAX as u32 + 9));
    }

    #[test]
    fn dmarc_walk_asks_each_parent_down_to_the_tld() {
        let mut names = Vec::new();
        dmarc_walk_names("mail.example.com", &mut names);
        assert_eq!(
            names,
            [
                "_dmarc.mail.example.com.",
                "_dmarc.example.com.",
                "_dmarc.com."
            ]
        );
        names.clear();
        dmarc_walk_names("a.b.c.d.e.f.g.h.i.test", &mut names);
        assert_eq!(names.len(), 8, "{names:?}");
        assert_eq!(names[1], "_dmarc.d.e.f.g.h.i.test.");
        assert_eq!(names[7], "_dmarc.test.");
        names.clear();
        dmarc_walk_names("localhost", &mut names);
        assert!(names.is_empty());
    }
}
