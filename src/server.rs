//! `gomail server`: wires the shards, the spool, the SMTP sessions and the
//! store together.
//!
//! Each shard owns its listeners (one `SO_REUSEPORT` socket per address),
//! its connections, its spool and its delivery task. The main thread only
//! starts shards, asks them for counters and tells them to stop.

mod accept;
mod admit;
mod conn;
mod contain;
mod live;
mod outbox;
mod stats;
mod store_writer;
mod webhook_settings;

use live::{Fixed, Live};
use webhook_settings::WebhookSettings;

pub use stats::{LatencyHistogram, ShardStats, LATENCY_BOUNDS_US};

pub use outbox::{StoreMode, WebhookMode};

pub use contain::panic_is_contained;

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use shards::{PoolConfig, ShardContext, ShardPool, Snapshot};

use crate::admission::bans::{BanList, Policy};
use crate::admission::service::{BanError, Bans, Reporter};
use crate::admission::table::Table;
use crate::admission::Settings as AdmissionSettings;
use crate::auth::dns::DnsRuntime;
use crate::auth::{AuthSettings, ShardAuth};
use crate::config::Config;
use crate::spool::Spool;
use crate::tls::{self, CertSource, TlsError};

/// How long a shutdown waits for open transactions and queued store writes.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The runtime could not start (io_uring, memlock, bind).
    #[error(transparent)]
    Shards(#[from] shards::ShardsError),
    /// data_dir cannot be used.
    #[error("data_dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The webhook settings are unusable.
    #[error("webhook: {0}")]
    Webhook(String),
    /// The DNS runtime for the authentication checks could not start.
    #[error("DNS for SPF/DKIM/DMARC: {0}")]
    Dns(std::io::Error),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The ban file cannot be read or the ban service cannot start.
    #[error(transparent)]
    Bans(#[from] BanError),
    /// Another gomail holds data_dir.
    #[error("another gomail process is using data_dir {0} (lock file gomail.lock is held); stop it or choose another data_dir")]
    Locked(PathBuf),
    /// A shard failed while starting.
    #[error("shard {shard} failed to start: {reason}")]
    ShardStart {
        /// The shard.
        shard: usize,
        /// What went wrong.
        reason: String,
    },
}

/// Messages the main thread sends to shards.
pub enum Control {
    /// Reply with the shard's counters.
    Stats(async_channel::Sender<ShardStats>),
    /// Stop accepting, finish open transactions, flush, then reply.
    Shutdown(async_channel::Sender<()>),
    /// Deliver this dead letter again (`gomail queue retry`); the reply
    /// says whether the shard took it (it has a webhook configured).
    Redeliver(PathBuf, async_channel::Sender<bool>),
    /// Take a message from the API (`POST /mail/inbound`) through the
    /// same checks, spool and delivery as SMTP mail; the reply is its queue
    /// id, or the SMTP reply that refused it.
    Inject(
        Box<Injected>,
        async_channel::Sender<Result<String, crate::smtp::Reply>>,
    ),
}

/// A message given to `POST /mail/inbound`.
#[derive(Debug)]
pub struct Injected {
    /// The envelope sender.
    pub sender: String,
    /// The one recipient (one of our domains; checked by the caller).
    pub recipient: String,
    /// The message, lines ending in CRLF.
    pub raw: Vec<u8>,
    /// The client it came from, for SPF (none: SPF is not evaluated).
    pub client_ip: Option<std::net::IpAddr>,
    /// Its HELO name, for SPF.
    pub helo: Option<String>,
    /// The API request's id, for the payload's `metadata.request_id`.
    pub request_id: String,
}

/// Shard-local state shared by its tasks.
pub(crate) struct ShardState {
    pub(crate) id: usize,
    /// The settings a reload changes, read once per connection
    /// ([`ShardState::live`]).
    pub(crate) live: RefCell<shards::SnapshotCache<Live>>,
    pub(crate) hostname: String,
    pub(crate) data_dir: PathBuf,
    pub(crate) spool: Spool,
    /// The JSON store's writer queue (it records messages as done, too).
    pub(crate) store: store_writer::Queue,
    /// Webhook delivery, when `api_endpoint` is set.
    pub(crate) outbox: Option<outbox::Outbox>,
    pub(crate) stats: RefCell<ShardStats>,
    pub(crate) active: Cell<u64>,
    /// This shard's per-client table (exact: `shards::steer` sends every
    /// connection of a client here).
    pub(crate) table: RefCell<Table>,
    /// The bans in force (published by the ban service), read through a
    /// shard-local cache: one pointer check per connection.
    pub(crate) bans: RefCell<shards::SnapshotCache<BanList>>,
    /// Limit-hit log lines written this second.
    pub(crate) log_budget: RefCell<admit::LogBudget>,
    /// Where violations are reported.
    pub(crate) reporter: Reporter,
    /// Connections open over all shards (`max_total_connections`).
    pub(crate) total: Arc<std::sync::atomic::AtomicU64>,
    /// The shard's one read buffer: connections borrow it only while a
    /// read completes, so an idle connection holds none.
    pub(crate) read_buf: RefCell<Vec<u8>>,
    /// The current TLS configuration, if TLS is enabled.
    pub(crate) tls: Option<Snapshot<Arc<ServerConfig>>>,
    /// SPF/DKIM/DMARC on this shard, if any check is on.
    pub(crate) auth: Option<ShardAuth>,
    /// Closed (all senders dropped) when the shard starts shutting down.
    pub(crate) shutdown: async_channel::Receiver<()>,
}

impl ShardState {
    /// The settings in force now, for a new connection or API message: a
    /// reload reaches the shard here. The shard's table and checks are
    /// brought up to date with them (one pointer comparison each).
    pub(crate) fn live(&self) -> Arc<Live> {
        let live = self.live.borrow_mut().load().clone();
        self.table.borrow_mut().use_settings(&live.admission);
        if let Some(auth) = &self.auth {
            auth.use_settings(&live.auth);
        }
        live
    }

    /// Hands an accepted (or recovered) message to delivery: the webhook
    /// when `api_endpoint` is set, else the JSON store.
    pub(crate) fn deliver(&self, msg: crate::spool::Spooled) {
        match &self.outbox {
            Some(o) => o.push(msg),
            None => self.store.push(msg),
        }
    }
}

/// A running server.
pub struct Server {
    pool: ShardPool<Control>,
    smtp_addrs: Vec<SocketAddr>,
    smtps_addrs: Vec<SocketAddr>,
    /// TLS, live settings and bans: what a reload replaces.
    handle: ReloadHandle,
    /// Kept alive for the shards' DNS lookups.
    _dns: Option<Arc<DnsRuntime>>,
    _lock: File,
}

/// Applies a new configuration to a running server, from any thread
/// ([`Server::reload_handle`]).
#[derive(Clone)]
pub struct ReloadHandle {
    tls: Option<Snapshot<Arc<ServerConfig>>>,
    live: Snapshot<Live>,
    fixed: Fixed,
    bans: Bans,
}

impl ReloadHandle {
    /// Publishes what `cfg` changes among the settings that apply live:
    /// limits, rates, ban policy, enforcement, sizes, domains, backlog and
    /// TLS (certificate files re-read). New connections use them; open
    /// sessions finish with theirs. Nothing changes when the TLS
    /// configuration cannot be built.
    pub fn apply(&self, cfg: &Config) -> Result<(), ServerError> {
        let tls = match &self.tls {
            Some(_) => {
                let built = tls::build(cfg)?;
                // At start an unusable certificate falls back to a
                // self-signed one; a running server keeps the one it has.
                let acme = tls::acme::default_cert_file(&cfg.data_dir);
                let configured = cfg
                    .tls_cert_file
                    .as_ref()
                    .or(cfg.tls_key_file.as_ref())
                    .or(acme.exists().then_some(&acme));
                if let (CertSource::SelfSigned { reason }, Some(path)) = (&built.source, configured)
                {
                    return Err(ServerError::Tls(TlsError::File {
                        path: path.clone(),
                        reason: format!("{reason}; the certificates in use stay"),
                    }));
                }
                log_tls_source(&built, cfg);
                Some(built.config)
            }
            None => None,
        };
        let live = Live::from_config(cfg, &self.fixed);
        self.bans.set_policy(ban_policy(&live.admission));
        self.live.store(live);
        if let (Some(snapshot), Some(config)) = (&self.tls, tls) {
            snapshot.store(config);
        }
        Ok(())
    }
}

/// The ban service's policy from the admission settings.
fn ban_policy(a: &AdmissionSettings) -> Policy {
    Policy {
        threshold: a.ban_threshold,
        window: a.ban_window,
        duration: a.ban_duration,
        limit_every: a.rate_window,
    }
}

/// Builds the TLS configuration and logs where its certificate came from.
fn build_tls(cfg: &Config) -> Result<tls::Built, TlsError> {
    let built = tls::build(cfg)?;
    log_tls_source(&built, cfg);
    Ok(built)
}

fn log_tls_source(built: &tls::Built, cfg: &Config) {
    match &built.source {
        CertSource::Files => {
            tracing::info!(certificates = built.certificates, "TLS certificates loaded")
        }
        CertSource::SelfSigned { reason } => tracing::warn!(
            %reason,
            dir = %cfg.data_dir.join("tls").display(),
            hostname = %cfg.mail_hostname,
            "using a self-signed TLS certificate; set tls_cert_file and tls_key_file"
        ),
    }
}

impl Server {
    /// Starts the shards on `cfg` and returns once every shard listens.
    pub fn start(cfg: &Config) -> Result<Server, ServerError> {
        let lock = lock_data_dir(&cfg.data_dir)?;
        let tls = if cfg.tls_enabled && (cfg.starttls_enabled || !cfg.smtps_listen.is_empty()) {
            Some(Snapshot::new(build_tls(cfg)?.config))
        } else {
            None
        };
        let webhook = WebhookSettings::from_config(cfg)?;
        let auth = AuthSettings::from_config(cfg);
        let dns = if auth.any() {
            Some(Arc::new(
                DnsRuntime::start(&cfg.dns_servers, cfg.dns_timeout).map_err(ServerError::Dns)?,
            ))
        } else {
            None
        };
        let plain = shards::probe_addresses(&cfg.smtp_listen)?;
        let implicit = if tls.is_some() {
            shards::probe_addresses(&cfg.smtps_listen)?
        } else {
            Vec::new()
        };
        let count = cfg.shards;
        // Every shard's listeners, bound here in shard order so that the
        // steering program's index is the shard's id (shards::steer).
        let mut per_shard: Vec<ShardListeners> = (0..count).map(|_| Vec::new()).collect();
        for (addr, implicit) in plain
            .iter()
            .map(|a| (*a, false))
            .chain(implicit.iter().map(|a| (*a, true)))
        {
            for (i, sock) in shards::steer::bind_group(addr, count)?
                .into_iter()
                .enumerate()
            {
                per_shard[i].push((sock, implicit));
            }
        }
        let listeners: Arc<std::sync::Mutex<Vec<Option<ShardListeners>>>> = Arc::new(
            std::sync::Mutex::new(per_shard.into_iter().map(Some).collect()),
        );
        let fixed = Fixed {
            hostname: cfg.mail_hostname.clone(),
            starttls: tls.is_some() && cfg.starttls_enabled,
            checks: (auth.spf, auth.dkim, auth.dmarc),
            shards: count,
        };
        let live = Snapshot::new(Live::from_config(cfg, &fixed));
        let (bans, reporter) = Bans::start(&cfg.data_dir, ban_policy(&live.load().admission))?;
        let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ban_list = bans.list();
        let (ready_tx, ready_rx) = async_channel::unbounded::<(usize, Result<(), String>)>();
        let data_dir = cfg.data_dir.clone();
        let hostname = cfg.mail_hostname.clone();
        let shard_tls = tls.clone();
        let shard_dns = dns.clone();
        let shard_webhook = webhook.clone();
        let shard_live = live.clone();
        let pool = ShardPool::spawn(
            &PoolConfig {
                shards: count,
                cpu_pinning: cfg.cpu_pinning,
                name: "shard".into(),
            },
            move |ctx: ShardContext<Control>| {
                let live = shard_live.clone();
                let data_dir = data_dir.clone();
                let hostname = hostname.clone();
                let listen = listeners.lock().expect("listeners")[ctx.id]
                    .take()
                    .unwrap_or_default();
                let ready = ready_tx.clone();
                let reporter = reporter.clone();
                let total = total.clone();
                let ban_list = ban_list.clone();
                let tls = shard_tls.clone();
                let dns = shard_dns.clone();
                let webhook = shard_webhook.clone();
                async move {
                    let setup = ShardSetup {
                        live,
                        hostname,
                        data_dir,
                        listen,
                        reporter,
                        total,
                        bans: ban_list,
                        tls,
                        dns,
                        webhook,
                    };
                    run_shard(ctx, setup, ready).await;
                }
            },
        )?;
        let mut failure = None;
        for _ in 0..count {
            match ready_rx.recv_blocking() {
                Ok((_, Ok(()))) => {}
                Ok((shard, Err(reason))) => {
                    failure.get_or_insert(ServerError::ShardStart { shard, reason });
                }
                Err(_) => {
                    failure.get_or_insert(ServerError::ShardStart {
                        shard: 0,
                        reason: "a shard stopped during start-up".into(),
                    });
                    break;
                }
            }
        }
        let server = Server {
            pool,
            smtp_addrs: plain,
            smtps_addrs: implicit,
            handle: ReloadHandle {
                tls,
                live,
                fixed,
                bans,
            },
            _dns: dns,
            _lock: lock,
        };
        if let Some(e) = failure {
            let _ = server.shutdown();
            return Err(e);
        }
        Ok(server)
    }

    /// The SMTP addresses the shards listen on (port 0 resolved).
    pub fn smtp_addrs(&self) -> &[SocketAddr] {
        &self.smtp_addrs
    }

    /// The implicit-TLS addresses (`smtps_listen`), if TLS is enabled.
    pub fn smtps_addrs(&self) -> &[SocketAddr] {
        &self.smtps_addrs
    }

    /// A handle that applies a reloaded configuration (see
    /// [`ReloadHandle::apply`]).
    pub fn reload_handle(&self) -> ReloadHandle {
        self.handle.clone()
    }

    /// The ban service (for the control plane's ban endpoints).
    pub fn bans(&self) -> Bans {
        self.handle.bans.clone()
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.pool.len()
    }

    /// A handle for asking shards for their counters from other threads.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(self.pool.handle())
    }

    /// Every shard's counters, in shard order.
    pub fn stats(&self) -> Vec<ShardStats> {
        self.pool
            .ask(Control::Stats)
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                s.unwrap_or(ShardStats {
                    shard: i,
                    ..ShardStats::default()
                })
            })
            .collect()
    }

    /// Stops accepting, lets open transactions finish (up to
    /// [`SHUTDOWN_GRACE`]), flushes the store, and joins the shards.
    pub fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.pool.ask(Control::Shutdown);
        self.pool.join()?;
        Ok(())
    }
}

/// Asks shards for their counters from any thread (the control plane).
#[derive(Clone)]
pub struct StatsHandle(shards::PoolHandle<Control>);

impl StatsHandle {
    /// Hands dead letters to the shards, spread evenly, for re-delivery;
    /// returns how many were taken.
    pub async fn redeliver(&self, paths: Vec<PathBuf>) -> usize {
        let mut taken = 0;
        for (i, path) in paths.into_iter().enumerate() {
            if self
                .0
                .ask_one_async(i, |tx| Control::Redeliver(path, tx))
                .await
                == Some(true)
            {
                taken += 1;
            }
        }
        taken
    }

    /// Hands an API message to a shard (round robin by `n`); `None` when
    /// the shard did not answer.
    pub async fn inject(
        &self,
        n: usize,
        msg: Injected,
    ) -> Option<Result<String, crate::smtp::Reply>> {
        self.0
            .ask_one_async(n, |tx| Control::Inject(Box::new(msg), tx))
            .await
    }

    /// Every shard's counters, in shard order; `None` for a shard that did
    /// not answer.
    pub async fn ask(&self) -> Vec<Option<ShardStats>> {
        self.0.ask_async(Control::Stats).await
    }
}

fn lock_data_dir(dir: &Path) -> Result<File, ServerError> {
    let err = |source| ServerError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("gomail.lock"))
        .map_err(err)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(ServerError::Locked(dir.to_path_buf()));
    }
    Ok(file)
}

/// A shard's listening sockets, and whether each is implicit TLS.
type ShardListeners = Vec<(socket2::Socket, bool)>;

/// What a shard needs to start.
struct ShardSetup {
    live: Snapshot<Live>,
    hostname: String,
    data_dir: PathBuf,
    listen: ShardListeners,
    reporter: Reporter,
    total: Arc<std::sync::atomic::AtomicU64>,
    bans: Snapshot<BanList>,
    tls: Option<Snapshot<Arc<ServerConfig>>>,
    dns: Option<Arc<DnsRuntime>>,
    webhook: Option<WebhookSettings>,
}

async fn run_shard(
    ctx: ShardContext<Control>,
    setup: ShardSetup,
    ready: async_channel::Sender<(usize, Result<(), String>)>,
) {
    let ShardSetup {
        live,
        hostname,
        data_dir,
        listen,
        reporter,
        total,
        bans,
        tls,
        dns,
        webhook,
    } = setup;
    let webhook = webhook.map(|w| w.outbox());
    let id = ctx.id;
    // The shard polls DNS lookups itself, inside the DNS runtime's context
    // (held for the shard's whole life); see src/auth/dns.rs.
    let dns_handle = dns.as_ref().map(|d| d.handle());
    let _dns_context = dns_handle.as_ref().map(|h| h.enter());
    let shard_auth = match &dns {
        Some(d) => match d.authenticator() {
            Ok(r) => Some(ShardAuth::new(r, live.load().auth.clone())),
            Err(e) => {
                let _ = ready.send((id, Err(format!("DNS resolver: {e}")))).await;
                return;
            }
        },
        None => None,
    };
    let (spool, recovered) = match Spool::open(&data_dir, id, ctx.count).await {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send((id, Err(e.to_string()))).await;
            return;
        }
    };
    let listeners: Vec<_> = listen
        .into_iter()
        .map(|(sock, implicit)| (shards::steer::adopt(sock), implicit))
        .collect();
    let (shutdown_tx, shutdown_rx) = async_channel::bounded::<()>(1);
    let admission = live.load().admission.clone();
    let state = Rc::new(ShardState {
        id,
        live: RefCell::new(live.cache()),
        hostname,
        data_dir,
        spool,
        store: store_writer::Queue::default(),
        outbox: webhook.map(outbox::Outbox::new),
        stats: RefCell::new(ShardStats {
            shard: id,
            messages_recovered: recovered.messages.len() as u64,
            spool_corrupt_records: recovered.corrupt_records,
            spool_unreadable_segments: recovered.unreadable_segments,
            ..ShardStats::default()
        }),
        active: Cell::new(0),
        table: RefCell::new(Table::new(admission)),
        bans: RefCell::new(bans.cache()),
        log_budget: RefCell::new(admit::LogBudget::default()),
        reporter,
        total,
        read_buf: RefCell::new(vec![0; conn::READ_CHUNK]),
        tls,
        auth: shard_auth,
        shutdown: shutdown_rx,
    });
    for msg in recovered.messages {
        match &state.outbox {
            Some(o) => o.push_restored(msg, &recovered.progress),
            None => state.store.push(msg),
        }
    }
    let deliverer = glommio::spawn_local(store_writer::run(state.clone()));
    let sweeper = glommio::spawn_local(admit::sweep(state.clone()));
    let sender = glommio::spawn_local(outbox::run(state.clone()));
    let mut acceptors = Vec::new();
    for (l, implicit) in listeners {
        acceptors.push(glommio::spawn_local(conn::accept_loop(
            state.clone(),
            l,
            implicit,
        )));
    }
    tracing::debug!(shard = id, cpu = ?ctx.cpu, "shard listening");
    let _ = ready.send((id, Ok(()))).await;
    while let Ok(msg) = ctx.inbox.recv().await {
        match msg {
            Control::Stats(reply) => {
                let mut s = state.stats.borrow().clone();
                s.connections_active = state.active.get();
                s.store_backlog = state.spool.outstanding() as u64;
                s.spool_bytes = state.spool.disk_bytes();
                if let Some(e) = state.store.failing() {
                    s.store_failing = 1;
                    s.store_error = e;
                }
                if let Some(a) = &state.auth {
                    (s.dns_cache_hits, s.dns_cache_misses) = a.cache_counts();
                    s.dns_lookup_latency = a.dns_lookup_latency();
                }
                if let Some(o) = &state.outbox {
                    let (open, disabled) = o.health();
                    s.webhook_circuit_open = u64::from(open);
                    s.webhook_disabled = u64::from(disabled);
                    let (pending, held) = o.backlog();
                    s.webhook_pending = pending as u64;
                    s.webhook_held_bytes = held as u64;
                }
                let _ = reply.send(s).await;
            }
            Control::Redeliver(path, reply) => {
                let taken = match (&state.outbox, std::fs::read(&path)) {
                    (Some(o), Ok(bytes)) => match serde_json::from_slice(&bytes) {
                        Ok(doc) => {
                            o.push_dead(path, doc);
                            true
                        }
                        Err(_) => false,
                    },
                    _ => false,
                };
                let _ = reply.send(taken).await;
            }
            Control::Inject(msg, reply) => {
                let st = state.clone();
                glommio::spawn_local(async move {
                    let r = accept::inject(&st, *msg).await;
                    let _ = reply.send(r).await;
                })
                .detach();
            }
            Control::Shutdown(reply) => {
                drop(shutdown_tx);
                for a in acceptors.drain(..) {
                    a.cancel().await;
                }
                let start = std::time::Instant::now();
                while (state.active.get() > 0
                    || !state.store.is_idle()
                    || state.outbox.as_ref().is_some_and(|o| !o.is_idle())
                    || state.spool.preparing())
                    && start.elapsed() < SHUTDOWN_GRACE
                {
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
                // Done records waiting for a retry (a failed write) get a
                // last write now, within the same deadline: without them
                // the restart would deliver those messages again.
                let left = SHUTDOWN_GRACE.saturating_sub(start.elapsed());
                let flushed = futures_lite::future::or(
                    async { Some(state.spool.flush_done().await) },
                    async {
                        glommio::timer::sleep(left).await;
                        None
                    },
                )
                .await;
                if flushed != Some(true) {
                    tracing::warn!(
                        shard = state.id,
                        "done records not written at shutdown: the next start delivers their messages again (at least once)"
                    );
                }
                // That write may have moved to the spare segment and begun
                // zero-filling the next one on the blocking pool, which
                // must finish before the shard goes (see Spool::preparing).
                while state.spool.preparing() && start.elapsed() < SHUTDOWN_GRACE {
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
                state.store.close();
                if let Some(o) = &state.outbox {
                    o.close();
                }
                sender.cancel().await;
                deliverer.cancel().await;
                sweeper.cancel().await;
                let _ = reply.send(()).await;
                break;
            }
        }
    }
}
