//! The webhook settings `gomail server` reads once from the configuration;
//! each shard makes its delivery client from them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{outbox, ServerError, StoreMode, WebhookMode};
use crate::config::Config;

/// Webhook settings prepared once, from which each shard makes its client.
#[derive(Clone)]
pub(super) struct WebhookSettings {
    endpoint: crate::delivery::webhook::Endpoint,
    bearer: Option<String>,
    secrets: Vec<crate::delivery::sign::Secret>,
    signing_key: Option<Arc<crate::delivery::sign::SigningKey>>,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    retries: u32,
    retry_delay: Duration,
    store_mode: StoreMode,
    mode: WebhookMode,
}

impl WebhookSettings {
    pub(super) fn from_config(cfg: &Config) -> Result<Option<WebhookSettings>, ServerError> {
        let Some(url) = cfg.text("api_endpoint") else {
            return Ok(None);
        };
        let bad = |m: String| ServerError::Webhook(m);
        let endpoint = crate::delivery::webhook::Endpoint::parse(&url).ok_or_else(|| {
            bad(format!(
                "api_endpoint `{url}` is not an http:// or https:// URL"
            ))
        })?;
        let secrets = match cfg.text("webhook_secret") {
            Some(s) => crate::delivery::sign::Secret::parse_all(&s)
                .ok_or_else(|| bad("webhook_secret is not a whsec_<base64> secret".into()))?,
            None => Vec::new(),
        };
        let signing_key = match cfg.text("webhook_signing_key") {
            Some(k) => Some(Arc::new(
                crate::delivery::sign::SigningKey::parse(&k).ok_or_else(|| {
                    bad("webhook_signing_key is not a whsk_<base64> Ed25519 key".into())
                })?,
            )),
            None => None,
        };
        if let Some(k) = &signing_key {
            tracing::info!(public_key = %k.public(), "webhook Ed25519 signing on: receivers verify v1a signatures with this key");
        }
        let tls = if endpoint.tls {
            let ca = cfg.text("webhook_ca_file").map(PathBuf::from);
            Some(crate::delivery::webhook::tls_config(ca.as_deref()).map_err(bad)?)
        } else {
            None
        };
        Ok(Some(WebhookSettings {
            endpoint,
            bearer: cfg.text("bearer_token"),
            secrets,
            signing_key,
            timeout: cfg.duration("webhook_timeout"),
            tls,
            retries: u32::try_from(cfg.number("webhook_retries")).unwrap_or(u32::MAX),
            retry_delay: cfg.duration("webhook_retry_delay"),
            mode: match cfg.text("webhook_mode").as_deref() {
                Some("sync") => WebhookMode::Sync,
                Some("hybrid") => WebhookMode::Hybrid(cfg.duration("webhook_sync_deadline")),
                _ => WebhookMode::Async,
            },
            store_mode: match cfg.text("store_mode").as_deref() {
                Some("never") => StoreMode::Never,
                Some("on_failure") => StoreMode::OnFailure,
                _ => StoreMode::Always,
            },
        }))
    }

    pub(super) fn outbox(&self) -> outbox::OutboxConfig {
        outbox::OutboxConfig {
            client: crate::delivery::webhook::Webhook::new(
                self.endpoint.clone(),
                self.bearer.clone(),
                self.secrets.clone(),
                self.signing_key.clone(),
                self.timeout,
                self.tls.clone(),
            ),
            retries: self.retries,
            retry_delay: self.retry_delay,
            store_mode: self.store_mode,
            mode: self.mode,
        }
    }
}
