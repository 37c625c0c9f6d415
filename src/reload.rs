//! Live reload: SIGHUP, `systemctl reload`, `POST /api/v1/reload` and
//! `gomail config set … --reload` all end here.
//!
//! A reload reads the configuration again from the same sources as at
//! start (file, `MAIL_*` environment, flags). An invalid file changes
//! nothing: the error names the key and line, and the running settings
//! stay. A valid one is applied at once for the keys in [`LIVE`] (new
//! connections and requests use them; open sessions finish with theirs);
//! every other key that differs from what the process started with is
//! named as needing a restart, in the answer and in the log.

use std::sync::{Arc, Mutex};

use shards::Snapshot;

use crate::config::{self, Config, ConfigError, Sources};
use crate::control::ControlConfig;
use crate::server::{ReloadHandle, ServerError};

/// The keys a reload applies without a restart.
pub const LIVE: &[&str] = &[
    // SMTP sessions (new sessions announce the new SIZE)
    "primary_domain",
    "additional_domains",
    "max_message_size",
    "max_recipients",
    "spool_max_backlog",
    "spool_max_bytes",
    // admission
    "max_connections_per_ip",
    "max_total_connections",
    "smtp_connection_rate_limit",
    "smtp_message_rate_limit",
    "smtp_recipient_rate_limit",
    "smtp_rate_window",
    "trusted_networks",
    "ban_threshold",
    "ban_window",
    "ban_duration",
    "pregreet_wait",
    "smtp_write_timeout",
    "smtp_session_timeout",
    "validation.strict_headers",
    "validation.reject_invalid_domains",
    // authentication verdicts (the checks themselves stay as started)
    "spf_enforcement",
    "dmarc_enforcement",
    // the API
    "admin_token",
    "bearer_token",
    "rate_limit_per_minute",
    "rate_limit_burst",
    "trusted_proxies",
    "metrics_enabled",
    "metrics_path",
    "http_timeouts.read",
    "http_timeouts.write",
    "http_timeouts.idle",
    "http_timeouts.handler",
    "http_timeouts.shutdown",
    // TLS: certificate files are read again
    "tls_cert_file",
    "tls_key_file",
    "tls_cert_dir",
    "tls_min_version",
    "tls_cipher_suites",
];

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Keys whose value changed since the last reload (or start).
    pub changed: Vec<&'static str>,
    /// The changed keys that now apply.
    pub applied: Vec<&'static str>,
    /// Keys whose value in the sources differs from the running process's
    /// and that take effect only at the next start.
    pub restart_required: Vec<&'static str>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration does not load (names the key and line).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// It loads but cannot be applied (e.g. an unreadable certificate).
    #[error(transparent)]
    Apply(#[from] ServerError),
    /// The file sets nothing, where the running configuration came from
    /// it: a file being rewritten, or emptied by mistake. Reloading it
    /// would put every key back to its default (mail for `localhost`
    /// only, no `admin_token`).
    #[error("{0}: the file sets no key; not reloading every setting back to its default (restart with it if that is meant)")]
    Empty(std::path::PathBuf),
}

struct State {
    /// The configuration the process started with.
    started: Config,
    /// The configuration of the last reload that succeeded.
    current: Config,
}

/// Applies reloads to a running server and control plane; one at a time.
pub struct Reloader {
    state: Mutex<State>,
    sources: Sources,
    server: ReloadHandle,
    api: Snapshot<ControlConfig>,
}

/// Keys that apply live when the process started with a DNS runtime (an
/// authentication check or a blocklist on); without one, a restart.
const LIVE_WITH_DNS: &[&str] = &["dnsbl", "dnsbl_threshold", "dnsbl_timeout"];

/// True when a change of `key` applies live in a process started on `cfg`.
fn is_live(key: &str, cfg: &Config) -> bool {
    if LIVE_WITH_DNS.contains(&key) {
        return crate::auth::AuthSettings::from_config(cfg).any();
    }
    // bearer_token is also the webhook's credential, and the webhook
    // client is built at start.
    LIVE.contains(&key) && !(key == "bearer_token" && cfg.text("api_endpoint").is_some())
}

impl Reloader {
    /// A reloader for a process started on `started`, read from `sources`.
    pub fn new(
        started: Config,
        sources: Sources,
        server: ReloadHandle,
        api: Snapshot<ControlConfig>,
    ) -> Arc<Reloader> {
        Arc::new(Reloader {
            state: Mutex::new(State {
                current: started.clone(),
                started,
            }),
            sources,
            server,
            api,
        })
    }

    /// The configuration in force (the last one that loaded).
    pub fn current(&self) -> Config {
        self.state.lock().expect("reload state").current.clone()
    }

    /// Reads the configuration again and applies it (see the module docs);
    /// `why` (SIGHUP, API, …) goes into the log.
    pub fn reload(&self, why: &str) -> Result<Reloaded, ReloadError> {
        let mut state = self.state.lock().expect("reload state");
        let result = config::load(&self.sources)
            .map_err(ReloadError::from)
            .and_then(|new| match &new.path {
                Some(path) if new.file_settings() == 0 && state.current.file_settings() > 0 => {
                    Err(ReloadError::Empty(path.clone()))
                }
                _ => Ok(new),
            })
            .and_then(|new| {
                self.server.apply(&new)?;
                Ok(new)
            });
        let new = match result {
            Ok(new) => new,
            Err(e) => {
                tracing::error!(event = "config_reload_failed", source = why, error = %e, "configuration not reloaded; the running configuration is unchanged");
                return Err(e);
            }
        };
        let mut api = ControlConfig::from_config(&new);
        let running = self.api.load();
        // Where the control plane listens and what it reads are fixed.
        api.api = running.api;
        api.metrics = running.metrics;
        api.data_dir = running.data_dir.clone();
        if !is_live("bearer_token", &state.started) {
            api.bearer_token = running.bearer_token.clone();
        }
        self.api.store(api);
        let changed = state.current.changed_keys(&new);
        let applied: Vec<&'static str> = changed
            .iter()
            .copied()
            .filter(|k| is_live(k, &state.started))
            .collect();
        let restart_required: Vec<&'static str> = state
            .started
            .changed_keys(&new)
            .into_iter()
            .filter(|k| !is_live(k, &state.started))
            .collect();
        state.current = new;
        drop(state);
        if changed.is_empty() {
            tracing::info!(
                event = "config_changed",
                source = why,
                keys = "",
                "configuration reloaded: nothing changed"
            );
        } else {
            tracing::info!(event = "config_changed", source = why, keys = %changed.join(","), applied = %applied.join(","), "configuration reloaded");
        }
        if !restart_required.is_empty() {
            tracing::warn!(event = "config_restart_required", source = why, keys = %restart_required.join(","), "these settings differ from the running ones and take effect only after a restart");
        }
        Ok(Reloaded {
            changed,
            applied,
            restart_required,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_live_key_is_a_key() {
        for k in LIVE.iter().chain(LIVE_WITH_DNS) {
            assert!(config::keys::find(k).is_some(), "{k} is not a config key");
        }
    }
}
