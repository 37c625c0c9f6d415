//! `shards`: gomail's thread-per-core runtime.
//!
//! One glommio executor (io_uring) per shard, optionally pinned to its own
//! CPU; each shard binds its own `SO_REUSEPORT` listener for every address,
//! so the kernel spreads connections over shards and no accept is shared.
//! Global read-mostly state reaches shards as a [`Snapshot`]; the main thread
//! talks to a shard only by message ([`ShardPool::send`], [`ShardPool::ask`]).
//!
//! This crate knows nothing of SMTP. Everything glommio-specific stays here,
//! so the runtime could be replaced without touching the protocol code.

#![warn(missing_docs)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use glommio::{LocalExecutorBuilder, Placement};

pub use glommio;

pub mod http;
pub mod steer;

/// glommio refuses to start an executor below this much lockable memory.
pub const MIN_MEMLOCK: u64 = 512 * 1024;

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShardsError {
    /// `RLIMIT_MEMLOCK` is below what io_uring executors need.
    #[error(
        "locked-memory limit is {have} bytes, glommio needs at least {need}: \
         raise it with `ulimit -l 8192` in the shell, or `LimitMEMLOCK=8M` in the systemd unit"
    )]
    MemLock {
        /// The current soft limit.
        have: u64,
        /// The minimum.
        need: u64,
    },
    /// An executor thread could not be started (io_uring unavailable, bad CPU).
    #[error(
        "shard {shard} could not start its io_uring executor: {source} \
         (is io_uring enabled? check /proc/sys/kernel/io_uring_disabled and the container's seccomp profile)"
    )]
    Executor {
        /// The shard index.
        shard: usize,
        /// glommio's error.
        source: io::Error,
    },
    /// A listen address is already taken by another process.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A shard panicked or ended abnormally.
    #[error("shard {shard} stopped abnormally: {reason}")]
    Join {
        /// The shard index.
        shard: usize,
        /// What glommio reported.
        reason: String,
    },
}

/// How many shards, and where they run.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Number of shards (executor threads).
    pub shards: usize,
    /// Pin shard `i` to the i-th CPU this process may run on.
    pub cpu_pinning: bool,
    /// Thread name prefix (`"shard"` gives `shard-0`, `shard-1`, ...).
    pub name: String,
}

/// What a shard is told about itself when it starts.
#[derive(Debug)]
pub struct ShardContext<M> {
    /// This shard's index, `0..count`.
    pub id: usize,
    /// How many shards there are.
    pub count: usize,
    /// The CPU this shard is pinned to, if pinning is on.
    pub cpu: Option<usize>,
    /// Messages from the main thread.
    pub inbox: async_channel::Receiver<M>,
}

/// The running shards.
#[derive(Debug)]
pub struct ShardPool<M> {
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
    senders: Vec<async_channel::Sender<M>>,
}

/// The CPUs this process may run on (its affinity mask), in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// The shard count for `shards: auto`: one per CPU this process may use.
pub fn auto_shard_count() -> usize {
    allowed_cpus().len().max(1)
}

/// Checks the locked-memory limit before any executor starts, so the error
/// names the setting to change instead of failing inside glommio.
pub fn check_memlock() -> Result<(), ShardsError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Ok(());
    }
    let have = lim.rlim_cur;
    if have != libc::RLIM_INFINITY && have < MIN_MEMLOCK {
        return Err(ShardsError::MemLock {
            have,
            need: MIN_MEMLOCK,
        });
    }
    Ok(())
}

/// How long the start-up probe waits for an address held by a process
/// that has just exited.
pub const PROBE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Backlog of each listening socket (the kernel caps it at `net.core.somaxconn`).
pub const LISTEN_BACKLOG: i32 = 4096;

/// A listening socket as gomail wants it: `SO_REUSEADDR` (a restart is
/// never blocked by connections in TIME-WAIT), `IPV6_V6ONLY` for IPv6 (so
/// `0.0.0.0:25` and `[::]:25` can both be listed), and `SO_REUSEPORT` when
/// `shared` (one listener per shard on the same port).
pub(crate) fn listen_socket(addr: SocketAddr, shared: bool) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    if shared {
        sock.set_reuse_port(true)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(LISTEN_BACKLOG)?;
    Ok(sock)
}

/// Checks that each address is free, and resolves port 0 to a real port.
///
/// The shards' listeners use `SO_REUSEPORT`, which would let a second gomail
/// (or any other `SO_REUSEPORT` server) share the port silently. A bind
/// without it first makes such a conflict an error at start-up. The probe
/// socket is closed again before the shards bind.
pub fn probe_addresses(addrs: &[SocketAddr]) -> Result<Vec<SocketAddr>, ShardsError> {
    addrs
        .iter()
        .map(|&addr| {
            let err = |source| ShardsError::Bind { addr, source };
            // A listener of a process that just exited can outlive it for a
            // moment: the kernel tears io_uring rings (and the sockets they
            // hold) down asynchronously. A quick restart retries for up to
            // PROBE_PATIENCE before calling the address taken.
            let deadline = std::time::Instant::now() + PROBE_PATIENCE;
            let sock = loop {
                match listen_socket(addr, false) {
                    Err(e)
                        if e.kind() == io::ErrorKind::AddrInUse
                            && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    other => break other.map_err(err)?,
                }
            };
            let local = sock.local_addr().map_err(err)?;
            local
                .as_socket()
                .ok_or_else(|| err(io::Error::other("not an IP socket")))
        })
        .collect()
}

/// Binds this shard's own `SO_REUSEPORT` listener (call it on the shard).
pub fn bind(addr: SocketAddr) -> Result<glommio::net::TcpListener, ShardsError> {
    use std::os::fd::IntoRawFd;
    let sock = listen_socket(addr, true).map_err(|source| ShardsError::Bind { addr, source })?;
    // SAFETY: the descriptor is a listening TCP socket we own; glommio takes it over.
    Ok(unsafe {
        <glommio::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(sock.into_raw_fd())
    })
}

impl<M: Send + 'static> ShardPool<M> {
    /// Starts `cfg.shards` executors, each running `shard(ctx)` to completion.
    pub fn spawn<F, Fut>(cfg: &PoolConfig, shard: F) -> Result<ShardPool<M>, ShardsError>
    where
        F: Fn(ShardContext<M>) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        check_memlock()?;
        let cpus = allowed_cpus();
        let count = cfg.shards.max(1);
        let mut pool = ShardPool {
            handles: Vec::with_capacity(count),
            senders: Vec::with_capacity(count),
        };
        for id in 0..count {
            let cpu = cfg
                .cpu_pinning
                .then(|| cpus.get(id % cpus.len().max(1)).copied())
                .flatten();
            let placement = match cpu {
                Some(c) => Placement::Fixed(c),
                None => Placement::Unbound,
            };
            let (tx, rx) = async_channel::bounded(64);
            let f = shard.clone();
            let handle = LocalExecutorBuilder::new(placement)
                .name(&format!("{}-{id}", cfg.name))
                .spawn(move || {
                    f(ShardContext {
                        id,
                        count,
                        cpu,
                        inbox: rx,
                    })
                })
                .map_err(|e| ShardsError::Executor {
                    shard: id,
                    source: e.into(),
                })?;
            pool.handles.push(handle);
            pool.senders.push(tx);
        }
        Ok(pool)
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// True when there are no shards.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Sends a message to one shard; false if the shard has stopped.
    pub fn send(&self, shard: usize, msg: M) -> bool {
        self.senders[shard].send_blocking(msg).is_ok()
    }

    /// Asks every shard a question and collects the answers in shard order.
    /// `make` builds the message from a reply channel; a shard that has
    /// stopped contributes `None`.
    pub fn ask<R: Send + 'static>(
        &self,
        make: impl Fn(async_channel::Sender<R>) -> M,
    ) -> Vec<Option<R>> {
        self.handle().ask(make)
    }

    /// A handle that other threads can use to message the shards.
    pub fn handle(&self) -> PoolHandle<M> {
        PoolHandle {
            senders: self.senders.clone(),
        }
    }

    /// Waits for every shard to finish.
    pub fn join(self) -> Result<(), ShardsError> {
        drop(self.senders);
        let mut first = Ok(());
        for (shard, h) in self.handles.into_iter().enumerate() {
            if let Err(e) = h.join() {
                if first.is_ok() {
                    first = Err(ShardsError::Join {
                        shard,
                        reason: e.to_string(),
                    });
                }
            }
        }
        first
    }
}

/// Messages the shards from any thread (blocking or async); cheap to clone.
#[derive(Debug)]
pub struct PoolHandle<M> {
    senders: Vec<async_channel::Sender<M>>,
}

impl<M> Clone for PoolHandle<M> {
    fn clone(&self) -> Self {
        PoolHandle {
            senders: self.senders.clone(),
        }
    }
}

impl<M: Send + 'static> PoolHandle<M> {
    /// Like [`ShardPool::ask`], blocking the calling thread.
    pub fn ask<R: Send + 'static>(
        &self,
        make: impl Fn(async_channel::Sender<R>) -> M,
    ) -> Vec<Option<R>> {
        let waits: Vec<_> = self
            .senders
            .iter()
            .map(|s| {
                let (tx, rx) = async_channel::bounded(1);
                s.send_blocking(make(tx)).ok().map(|_| rx)
            })
            .collect();
        waits
            .into_iter()
            .map(|rx| rx.and_then(|rx| rx.recv_blocking().ok()))
            .collect()
    }

    /// Asks one shard (`index` modulo the shard count); `None` if it stopped.
    pub async fn ask_one_async<R: Send + 'static>(
        &self,
        index: usize,
        make: impl FnOnce(async_channel::Sender<R>) -> M,
    ) -> Option<R> {
        let s = self.senders.get(index % self.senders.len().max(1))?;
        let (tx, rx) = async_channel::bounded(1);
        s.send(make(tx)).await.ok()?;
        rx.recv().await.ok()
    }

    /// Like [`PoolHandle::ask`], for async callers on any runtime.
    pub async fn ask_async<R: Send + 'static>(
        &self,
        make: impl Fn(async_channel::Sender<R>) -> M,
    ) -> Vec<Option<R>> {
        let mut waits = Vec::with_capacity(self.senders.len());
        for s in &self.senders {
            let (tx, rx) = async_channel::bounded(1);
            waits.push(s.send(make(tx)).await.ok().map(|_| rx));
        }
        let mut out = Vec::with_capacity(waits.len());
        for rx in waits {
            out.push(match rx {
                Some(rx) => rx.recv().await.ok(),
                None => None,
            });
        }
        out
    }
}

/// Read-mostly global state published to every shard (configuration, ban
/// list, TLS settings). Readers get the current value; a writer replaces it
/// whole. New connections see a new value; a connection keeps the one it
/// loaded.
#[derive(Debug)]
pub struct Snapshot<T> {
    inner: Arc<ArcSwap<T>>,
}

impl<T> Clone for Snapshot<T> {
    fn clone(&self) -> Self {
        Snapshot {
            inner: self.inner.clone(),
        }
    }
}

impl<T> Snapshot<T> {
    /// A snapshot holding `value`.
    pub fn new(value: T) -> Snapshot<T> {
        Snapshot {
            inner: Arc::new(ArcSwap::from_pointee(value)),
        }
    }

    /// The current value.
    pub fn load(&self) -> Arc<T> {
        self.inner.load_full()
    }

    /// Publishes a new value.
    pub fn store(&self, value: T) {
        self.inner.store(Arc::new(value));
    }

    /// A reader for one shard: [`SnapshotCache::load`] checks one pointer
    /// and touches no shared reference count while the value is unchanged.
    pub fn cache(&self) -> SnapshotCache<T> {
        SnapshotCache(arc_swap::cache::Cache::new(self.inner.clone()))
    }
}

/// A shard-local reader of a [`Snapshot`] (see [`Snapshot::cache`]).
pub struct SnapshotCache<T>(arc_swap::cache::Cache<Arc<ArcSwap<T>>, Arc<T>>);

impl<T> SnapshotCache<T> {
    /// The current value.
    pub fn load(&mut self) -> &Arc<T> {
        self.0.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_start_answer_and_stop() {
        let cfg = PoolConfig {
            shards: 2,
            cpu_pinning: false,
            name: "t".into(),
        };
        let pool: ShardPool<async_channel::Sender<usize>> = ShardPool::spawn(
            &cfg,
            |ctx: ShardContext<async_channel::Sender<usize>>| async move {
                while let Ok(reply) = ctx.inbox.recv().await {
                    let _ = reply.send(ctx.id).await;
                }
            },
        )
        .unwrap();
        assert_eq!(pool.ask(|tx| tx), vec![Some(0), Some(1)]);
        pool.join().unwrap();
    }

    #[test]
    fn probe_resolves_port_zero_and_detects_conflicts() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let got = probe_addresses(&[addr]).unwrap();
        assert_ne!(got[0].port(), 0);
        let hold = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = hold.local_addr().unwrap();
        let err = probe_addresses(&[taken]).unwrap_err();
        assert!(err.to_string().contains(&taken.to_string()));
    }

    #[test]
    fn snapshot_readers_see_new_values() {
        let s = Snapshot::new(1);
        let old = s.load();
        s.store(2);
        assert_eq!((*old, *s.load()), (1, 2));
    }
}
