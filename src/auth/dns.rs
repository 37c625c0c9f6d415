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
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::{MessageAuthenticator, Parameters, RecordSet, ResolverCache, Txt, MX};

/// Entries per record type per shard; past that, expired entries are
/// dropped, then the cache starts over.
const CACHE_MAX: usize = 16_384;

/// The process's DNS runtime and resolver settings.
pub struct DnsRuntime {
    runtime: tokio::runtime::Runtime,
    config: ResolverConfig,
    opts: ResolverOpts,
}

impl DnsRuntime {
    /// Starts the runtime. `servers` empty: the system's resolvers
    /// (`/etc/resolv.conf`); otherwise those, by UDP then TCP.
    pub fn start(servers: &[SocketAddr], timeout: Duration) -> std::io::Result<DnsRuntime> {
        let (config, mut opts) = if servers.is_empty() {
            mail_auth::hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| std::io::Error::other(format!("reading /etc/resolv.conf: {e}")))?
        } else {
            let ns = servers
                .iter()
                .map(|a| {
                    let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                    for c in &mut ns.connections {
                        c.port = a.port();
                    }
                    ns
                })
                .collect();
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
        opts.negative_max_ttl = Some(Duration::from_secs(300));
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
/// bounded in size, counts hits and misses. No lock: one shard, one thread.
pub struct TtlCache<K, V> {
    map: RefCell<HashMap<K, (V, Instant)>>,
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl<K, V> Default for TtlCache<K, V> {
    fn default() -> Self {
        TtlCache {
            map: RefCell::new(HashMap::new()),
            hits: Cell::new(0),
            misses: Cell::new(0),
        }
    }
}

impl<K: Hash + Eq, V: Clone> ResolverCache<K, V> for TtlCache<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = Instant::now();
        let found = self
            .map
            .borrow()
            .get(name)
            .filter(|(_, until)| *until > now)
            .map(|(v, _)| v.clone());
        let counter = if found.is_some() {
            &self.hits
        } else {
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

    /// The A-record cache (DNS blocklists use it directly).
    pub fn ipv4(&self) -> &TtlCache<Box<str>, RecordSet<Ipv4Addr>> {
        &self.ipv4
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
