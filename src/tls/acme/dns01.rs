//! DNS-01 through DigitalOcean's records API: one TXT record per
//! authorization, created with `POST /v2/domains/{zone}/records` and
//! deleted by the id DigitalOcean returned (a name and its wildcard share
//! `_acme-challenge.<name>`, so neither may overwrite the other); then a
//! wait until every value is visible in DNS before the CA is asked to look.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::net::runtime::TokioRuntimeProvider;
use mail_auth::hickory_resolver::proto::rr::RData;
use mail_auth::hickory_resolver::TokioResolver;

use super::http::Http;
use super::AcmeError;

/// The TTL of the challenge records: DigitalOcean's smallest is 30 s; a
/// minute keeps resolvers from caching a stale value for long.
const RECORD_TTL: u32 = 60;

/// How often DNS is asked again while a value is not yet visible.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// A TXT record created for one authorization.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    /// The DigitalOcean domain (zone) it is in.
    pub(crate) zone: String,
    /// DigitalOcean's id for it.
    pub(crate) id: u64,
    /// `_acme-challenge.<name>.`
    pub(crate) fqdn: String,
    /// The key authorization's digest.
    pub(crate) value: String,
}

/// The DigitalOcean API with one token.
pub(crate) struct DigitalOcean<'a> {
    pub(crate) http: &'a Http,
    /// `digitalocean_api_url`, without a trailing slash.
    pub(crate) base: String,
    /// `do_api_token`.
    pub(crate) token: String,
    /// Zones already found, by name.
    pub(crate) zones: HashMap<String, String>,
}

impl DigitalOcean<'_> {
    async fn call(
        &self,
        method: hyper::Method,
        path: &str,
        json: Option<String>,
    ) -> Result<(u16, serde_json::Value), AcmeError> {
        let url = format!("{}{path}", self.base);
        let (status, body) = self
            .http
            .request(method, &url, Some(&self.token), json)
            .await
            .map_err(AcmeError::DigitalOcean)?;
        if status == 401 || status == 403 {
            return Err(AcmeError::DigitalOcean(format!(
                "{url}: {status}: DigitalOcean refused do_api_token (is it valid, with write access to the domain?)"
            )));
        }
        let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        Ok((status, v))
    }

    /// The DigitalOcean domain that holds `name`: its longest suffix
    /// (of two labels or more) that the account has.
    pub(crate) async fn zone_for(&mut self, name: &str) -> Result<String, AcmeError> {
        if let Some(z) = self.zones.get(name) {
            return Ok(z.clone());
        }
        let labels: Vec<&str> = name.split('.').collect();
        for i in 0..labels.len().saturating_sub(1) {
            let candidate = labels[i..].join(".");
            let (status, v) = self
                .call(
                    hyper::Method::GET,
                    &format!("/v2/domains/{candidate}"),
                    None,
                )
                .await?;
            match status {
                200 => {
                    self.zones.insert(name.to_string(), candidate.clone());
                    return Ok(candidate);
                }
                404 => continue,
                _ => {
                    return Err(AcmeError::DigitalOcean(format!(
                        "GET /v2/domains/{candidate}: {status}: {}",
                        api_message(&v)
                    )))
                }
            }
        }
        Err(AcmeError::DigitalOcean(format!(
            "no domain in the DigitalOcean account holds {name} (add its zone under Networking → Domains)"
        )))
    }

    /// Creates the TXT record `_acme-challenge.<name>` = `value`.
    pub(crate) async fn create(&mut self, name: &str, value: &str) -> Result<Record, AcmeError> {
        let zone = self.zone_for(name).await?;
        let relative = match name.strip_suffix(&zone) {
            Some("") => "_acme-challenge".to_string(),
            Some(sub) => format!("_acme-challenge.{}", sub.trim_end_matches('.')),
            None => format!("_acme-challenge.{name}."),
        };
        let body = serde_json::json!({
            "type": "TXT", "name": relative, "data": value, "ttl": RECORD_TTL,
        });
        let path = format!("/v2/domains/{zone}/records");
        let (status, v) = self
            .call(hyper::Method::POST, &path, Some(body.to_string()))
            .await?;
        let id = v["domain_record"]["id"].as_u64();
        match (status, id) {
            (200 | 201, Some(id)) => Ok(Record {
                zone,
                id,
                fqdn: format!("_acme-challenge.{name}."),
                value: value.to_string(),
            }),
            _ => Err(AcmeError::DigitalOcean(format!(
                "POST {path}: {status}: {}",
                api_message(&v)
            ))),
        }
    }

    /// Deletes a record made by [`DigitalOcean::create`]; one that is
    /// already gone counts as deleted.
    pub(crate) async fn delete(&self, r: &Record) -> Result<(), AcmeError> {
        let path = format!("/v2/domains/{}/records/{}", r.zone, r.id);
        let (status, v) = self.call(hyper::Method::DELETE, &path, None).await?;
        match status {
            200 | 202 | 204 | 404 => Ok(()),
            _ => Err(AcmeError::DigitalOcean(format!(
                "DELETE {path}: {status}: {}",
                api_message(&v)
            ))),
        }
    }
}

/// DigitalOcean's error text (`{"id":…,"message":…}`), without the rest.
fn api_message(v: &serde_json::Value) -> String {
    v["message"]
        .as_str()
        .map(|m| m.chars().take(300).collect())
        .unwrap_or_else(|| "unexpected answer".into())
}

fn resolver(servers: &[SocketAddr], timeout: Duration) -> Result<TokioResolver, AcmeError> {
    let ns = crate::auth::dns::name_servers(servers);
    let mut opts = ResolverOpts::default();
    // Each poll must see what the server has now.
    opts.cache_size = 0;
    opts.timeout = timeout;
    opts.attempts = 1;
    TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(ns),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .map_err(|e| AcmeError::Dns(format!("resolver: {e}")))
}

/// The servers to ask: `dns_servers` when set, else the zone's
/// authoritative servers (found through the system's resolver), so that
/// no resolver's cache of an older answer delays validation.
async fn servers_for(zone: &str, dns_servers: &[SocketAddr]) -> Result<Vec<SocketAddr>, AcmeError> {
    if !dns_servers.is_empty() {
        return Ok(dns_servers.to_vec());
    }
    let system = TokioResolver::builder_tokio()
        .map_err(|e| AcmeError::Dns(format!("reading /etc/resolv.conf: {e}")))?
        .build()
        .map_err(|e| AcmeError::Dns(format!("resolver: {e}")))?;
    let ns = system
        .ns_lookup(format!("{zone}."))
        .await
        .map_err(|e| AcmeError::Dns(format!("NS {zone}: {e}")))?;
    let mut out = Vec::new();
    for r in ns.answers() {
        if let RData::NS(name) = &r.data {
            if let Ok(ips) = system.lookup_ip(name.0.clone()).await {
                out.extend(ips.iter().map(|ip| SocketAddr::new(ip, 53)));
            }
        }
    }
    if out.is_empty() {
        return Err(AcmeError::Dns(format!(
            "no address for the name servers of {zone}; set dns_servers"
        )));
    }
    Ok(out)
}

/// Waits until every record's value is in DNS, asking `dns_servers` (or
/// each zone's authoritative servers) every half second, for at most
/// `timeout` (`acme_dns_timeout`).
pub(crate) async fn wait_visible(
    records: &[Record],
    dns_servers: &[SocketAddr],
    timeout: Duration,
) -> Result<(), AcmeError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut resolvers: HashMap<String, TokioResolver> = HashMap::new();
    for r in records {
        if !resolvers.contains_key(&r.zone) {
            let servers = tokio::time::timeout_at(deadline, servers_for(&r.zone, dns_servers))
                .await
                .map_err(|_| {
                    AcmeError::Dns(format!("finding the name servers of {}: timed out", r.zone))
                })??;
            resolvers.insert(r.zone.clone(), resolver(&servers, Duration::from_secs(3))?);
        }
    }
    let mut missing: Vec<&Record> = records.iter().collect();
    loop {
        let mut still = Vec::new();
        for r in missing {
            let seen = match resolvers[&r.zone].txt_lookup(r.fqdn.as_str()).await {
                Ok(l) => l.answers().iter().any(|a| match &a.data {
                    RData::TXT(t) => {
                        let joined: Vec<u8> =
                            t.txt_data.iter().flat_map(|s| s.iter().copied()).collect();
                        joined == r.value.as_bytes()
                    }
                    _ => false,
                }),
                Err(_) => false,
            };
            if !seen {
                still.push(r);
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() + POLL_EVERY > deadline {
            return Err(AcmeError::DnsTimeout {
                name: still[0].fqdn.clone(),
                waited: timeout,
            });
        }
        missing = still;
        tokio::time::sleep(POLL_EVERY).await;
    }
}
