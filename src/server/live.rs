//! The settings a reload changes on running shards.
//!
//! They reach shards as one [`Snapshot`] of [`Live`]: the main thread
//! stores a new value, and each shard sees it at its next connection (one
//! pointer check through its cache). A session keeps the settings it
//! started with to its end, so a reload never changes the rules of a
//! conversation half-way (the `SIZE` a client was told is the one it gets).

use std::sync::Arc;

use crate::admission::Settings as AdmissionSettings;
use crate::auth::AuthSettings;
use crate::config::Config;
use crate::smtp::{Limits, Reply, SessionConfig};

/// What a shard reads afresh for each connection.
pub(crate) struct Live {
    /// Domains, `max_message_size`, `max_recipients`, timeouts: what a
    /// session is started with.
    pub(crate) session: Arc<SessionConfig>,
    /// Limits, rates, bans and timeouts.
    pub(crate) admission: Arc<AdmissionSettings>,
    /// Enforcement and blocklists (the checks on or off stay as started:
    /// turning them on needs the DNS runtime).
    pub(crate) auth: Arc<AuthSettings>,
    /// `spool_max_backlog` for one shard: undelivered messages past which
    /// new ones are deferred with `452 4.3.1`.
    pub(crate) max_backlog: u64,
    /// `spool_max_bytes` for one shard: octets of spool segments on disk
    /// past which new messages are deferred with `452 4.3.1`.
    pub(crate) max_spool_bytes: Option<u64>,
}

/// What a running server fixed at start and a reload keeps.
#[derive(Clone)]
pub(crate) struct Fixed {
    /// `mail_hostname` (also in certificates and stored mail).
    pub(crate) hostname: String,
    /// STARTTLS is offered (TLS was set up at start).
    pub(crate) starttls: bool,
    /// The SPF, DKIM and DMARC checks that run (`*_enabled` at start).
    pub(crate) checks: (bool, bool, bool),
    /// Shards, to share `spool_max_backlog` and `spool_max_bytes`.
    pub(crate) shards: usize,
}

impl Live {
    /// Why a new message of `size` octets cannot be spooled now: the
    /// shard's undelivered backlog is full in messages or in disk.
    pub(crate) fn spool_refusal(&self, spool: &crate::spool::Spool, size: usize) -> Option<Reply> {
        if spool.outstanding() as u64 >= self.max_backlog {
            return Some(Reply::BACKLOG_FULL);
        }
        match self.max_spool_bytes {
            Some(max) if spool.disk_bytes_with(size) > max => Some(Reply::SPOOL_FULL),
            _ => None,
        }
    }

    /// The live settings of `cfg` for a server started as `fixed`.
    pub(crate) fn from_config(cfg: &Config, fixed: &Fixed) -> Live {
        let admission = Arc::new(AdmissionSettings::from_config(cfg));
        let mut auth = AuthSettings::from_config(cfg);
        (auth.spf, auth.dkim, auth.dmarc) = fixed.checks;
        auth.hostname = fixed.hostname.clone();
        let session = Arc::new(SessionConfig {
            hostname: fixed.hostname.clone(),
            domains: cfg.domains(),
            limits: Limits {
                max_message_size: cfg.max_message_size,
                max_recipients: cfg.max_recipients,
                session_timeout: admission.session_timeout,
                ..Limits::default()
            },
            starttls: fixed.starttls,
            check_sender: auth.spf,
            reject_non_fqdn_sender: cfg.flag("validation.reject_invalid_domains"),
            strict_headers: cfg.flag("validation.strict_headers"),
        });
        Live {
            session,
            admission,
            auth: Arc::new(auth),
            max_backlog: cfg
                .number("spool_max_backlog")
                .div_ceil(fixed.shards as u64)
                .max(1),
            max_spool_bytes: cfg
                .size("spool_max_bytes")
                .map(|b| b.div_ceil(fixed.shards as u64)),
        }
    }
}
