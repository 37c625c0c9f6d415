//! ACME (RFC 8555) certificates with instant-acme: the account, one order
//! for `acme_domains` with DNS-01 through DigitalOcean (or HTTP-01 on
//! `acme_http_listen` while the order runs), and the new chain
//! and key written where the TLS settings read them.
//!
//! Runs on a tokio runtime: the control plane's in a running server, the
//! command line's own otherwise. It never touches a shard: the caller
//! hot-swaps the files it wrote (`Reloader::refresh_certificates`). It
//! never logs a secret (the DigitalOcean token, the account key, the
//! certificate key).

pub mod ari;
pub mod certinfo;
mod dns01;
mod http;
mod http01;
mod order;
pub mod status;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use instant_acme::{Account, NewAccount};

use rustls::pki_types::pem::PemObject;

pub use certinfo::CertInfo;

use crate::config::Config;

/// Let's Encrypt's production directory (`acme_directory_url: letsencrypt`).
pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`letsencrypt-staging`).
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Why no certificate was obtained.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// A setting is missing or unusable (names the key).
    #[error("{0}")]
    Settings(String),
    /// No account for this directory: `gomail ssl setup` makes one.
    #[error("no ACME account for {0} in data_dir/acme; run `gomail ssl setup --email ADDRESS --agree-tos` first")]
    NoAccount(String),
    /// `--agree-tos` was not given.
    #[error(
        "the CA's terms of service must be agreed to: read {0} and run again with --agree-tos"
    )]
    TermsNotAgreed(String),
    /// The CA refused a step, or could not be reached.
    #[error("ACME {step}: {detail}")]
    Acme {
        /// What was being done.
        step: &'static str,
        /// The CA's problem document or the transport error.
        detail: String,
    },
    /// The CA could not validate a name.
    #[error("the CA did not validate {name}: {detail}")]
    Validation {
        /// The name (`*.example.com` for a wildcard).
        name: String,
        /// The CA's reason.
        detail: String,
    },
    /// DigitalOcean's API refused or failed.
    #[error("DigitalOcean API: {0}")]
    DigitalOcean(String),
    /// A DNS lookup failed.
    #[error("DNS: {0}")]
    Dns(String),
    /// A challenge record did not become visible in time.
    #[error("DNS: {name} TXT did not show the challenge value within {}s (acme_dns_timeout); the CA was not asked to validate", waited.as_secs())]
    DnsTimeout {
        /// The record's name.
        name: String,
        /// How long was waited.
        waited: Duration,
    },
    /// A file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The issued certificate is unusable.
    #[error("the issued certificate: {0}")]
    Certificate(String),
}

fn acme(step: &'static str) -> impl FnOnce(instant_acme::Error) -> AcmeError {
    move |e| AcmeError::Acme {
        step,
        detail: http::error_chain(&e),
    }
}

/// The ACME settings of a configuration (its `Debug` hides the token).
#[derive(Clone)]
pub struct AcmeSettings {
    /// `acme_email`.
    pub email: Option<String>,
    /// `acme_directory_url`, presets resolved.
    pub directory: String,
    /// `acme_ca_file`.
    pub ca_file: Option<PathBuf>,
    /// `acme_domains`, or `mail_hostname`.
    pub domains: Vec<String>,
    /// `acme_challenge` (with `acme_http_listen` for http-01).
    pub challenge: Challenge,
    /// `do_api_token` (or `digitalocean_token`).
    pub do_token: Option<String>,
    /// `digitalocean_api_url`.
    pub do_api_url: String,
    /// `dns_servers`.
    pub dns_servers: Vec<SocketAddr>,
    /// `acme_renew_before` (zero: only the two-thirds rule).
    pub renew_before: Duration,
    /// `acme_dns_timeout`.
    pub dns_timeout: Duration,
    /// `acme_timeout`: how long the CA may take to validate and issue.
    pub timeout: Duration,
    /// Where the chain is written: `tls_cert_file`, else
    /// `data_dir/acme/cert.pem`.
    pub cert_file: PathBuf,
    /// Where the key is written: `tls_key_file`, else `data_dir/acme/key.pem`.
    pub key_file: PathBuf,
    /// `data_dir`.
    pub data_dir: PathBuf,
}

impl std::fmt::Debug for AcmeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeSettings")
            .field("directory", &self.directory)
            .field("domains", &self.domains)
            .field("do_token", &self.do_token.as_ref().map(|_| "********"))
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

/// How the CA checks that we control the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// A TXT record at `_acme-challenge.<name>` (through DigitalOcean).
    Dns01,
    /// A file under `/.well-known/acme-challenge/` on port 80 of the
    /// name, served from `acme_http_listen` while an order runs.
    Http01 {
        /// `acme_http_listen`.
        listen: SocketAddr,
    },
}

/// `acme_http_listen` as an address: `:80` listens on every IPv4 address.
pub fn parse_http_listen(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    match s.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}").parse().ok(),
        None => s.parse().ok(),
    }
}

/// The default chain file when `tls_cert_file` is not set.
pub fn default_cert_file(data_dir: &Path) -> PathBuf {
    store::dir(data_dir).join("cert.pem")
}

/// The default key file when `tls_key_file` is not set.
pub fn default_key_file(data_dir: &Path) -> PathBuf {
    store::dir(data_dir).join("key.pem")
}

impl AcmeSettings {
    /// The ACME settings in `cfg`.
    pub fn from_config(cfg: &Config) -> AcmeSettings {
        let directory = match cfg.text("acme_directory_url").as_deref() {
            None | Some("letsencrypt") => LETSENCRYPT.to_string(),
            Some("letsencrypt-staging") => LETSENCRYPT_STAGING.to_string(),
            Some(url) => url.to_string(),
        };
        let mut domains: Vec<String> = cfg
            .list("acme_domains")
            .iter()
            .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
            .collect();
        if domains.is_empty() {
            domains.push(cfg.mail_hostname.to_ascii_lowercase());
        }
        AcmeSettings {
            email: cfg.text("acme_email"),
            directory,
            ca_file: cfg.text("acme_ca_file").map(PathBuf::from),
            domains,
            challenge: match cfg.text("acme_challenge").as_deref() {
                Some("http-01") => Challenge::Http01 {
                    listen: parse_http_listen(&cfg.text("acme_http_listen").unwrap_or_default())
                        .expect("checked at load"),
                },
                _ => Challenge::Dns01,
            },
            do_token: cfg
                .text("do_api_token")
                .or_else(|| cfg.text("digitalocean_token")),
            do_api_url: cfg
                .text("digitalocean_api_url")
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_string(),
            dns_servers: cfg.dns_servers.clone(),
            renew_before: cfg.duration("acme_renew_before"),
            dns_timeout: cfg.duration("acme_dns_timeout"),
            timeout: cfg.duration("acme_timeout"),
            cert_file: cfg
                .tls_cert_file
                .clone()
                .unwrap_or_else(|| default_cert_file(&cfg.data_dir)),
            key_file: cfg
                .tls_key_file
                .clone()
                .unwrap_or_else(|| default_key_file(&cfg.data_dir)),
            data_dir: cfg.data_dir.clone(),
        }
    }

    /// True when an account for the directory exists: the renewal loop
    /// then keeps the certificate up to date.
    pub fn has_account(&self) -> bool {
        account_exists(&self.data_dir, &self.directory)
    }

    /// The certificate in place, if it reads.
    pub fn current(&self) -> Option<CertInfo> {
        CertInfo::read(&self.cert_file).ok()
    }

    /// When the certificate in place is due (Unix seconds): now when
    /// there is none, when it does not cover `acme_domains`, or when it is
    /// self-signed.
    pub fn due_at(&self, now: i64) -> i64 {
        match self.current() {
            Some(c) if !c.self_signed && c.covers(&self.domains) => {
                c.renewal_due(self.renew_before)
            }
            _ => now,
        }
    }
}

fn account_exists(data_dir: &Path, directory: &str) -> bool {
    matches!(store::load_account(data_dir, directory), Ok(Some(_)))
}

/// What was asked for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Renew even when the certificate is not due.
    pub force: bool,
    /// `ssl setup`: make the account with this address if there is none
    /// (the terms agreed to).
    pub setup: Option<Setup>,
}

/// `gomail ssl setup`'s arguments.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The account's contact.
    pub email: String,
    /// `--agree-tos`.
    pub agree_tos: bool,
}

/// What an attempt did.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A new certificate is in place.
    Issued(CertInfo),
    /// The certificate in place is not due; nothing was asked of the CA.
    NotDue {
        /// The certificate.
        current: CertInfo,
        /// When it will be (Unix seconds).
        due: i64,
    },
}

/// The terms-of-service URL in the CA's directory, if it names one.
pub async fn terms_of_service(s: &AcmeSettings) -> Result<Option<String>, AcmeError> {
    let client = http::Http::new(s.ca_file.as_deref()).map_err(AcmeError::Settings)?;
    let (status, body) = client
        .request(hyper::Method::GET, &s.directory, None, None)
        .await
        .map_err(|detail| AcmeError::Acme {
            step: "directory",
            detail,
        })?;
    if status != 200 {
        return Err(AcmeError::Acme {
            step: "directory",
            detail: format!("{}: status {status}", s.directory),
        });
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    Ok(v["meta"]["termsOfService"].as_str().map(str::to_string))
}

async fn account(s: &AcmeSettings, req: &Request) -> Result<Account, AcmeError> {
    let builder = || {
        http::acme_client(s.ca_file.as_deref())
            .map(Account::builder_with_http)
            .map_err(AcmeError::Settings)
    };
    if let Some(mut stored) = store::load_account(&s.data_dir, &s.directory)? {
        // AccountCredentials is not Clone; a copy through its own serde
        // form keeps `stored` whole for saving below.
        let credentials = serde_json::to_value(&stored.credentials)
            .and_then(serde_json::from_value)
            .map_err(|e| AcmeError::Settings(format!("the stored ACME account: {e}")))?;
        let account = builder()?
            .from_credentials(credentials)
            .await
            .map_err(acme("loading the account"))?;
        // `ssl setup` with another address: the account's contact follows.
        if let Some(setup) = req.setup.as_ref().filter(|x| x.email != stored.email) {
            let contact = format!("mailto:{}", setup.email);
            account
                .update_contacts(&[&contact])
                .await
                .map_err(acme("updating the account's contact"))?;
            stored.email = setup.email.clone();
            store::save_account(&s.data_dir, &stored)?;
            tracing::info!(event = "acme_account_updated", email = %setup.email, "ACME account contact changed");
        }
        return Ok(account);
    }
    let Some(setup) = &req.setup else {
        return Err(AcmeError::NoAccount(s.directory.clone()));
    };
    if !setup.agree_tos {
        let terms = terms_of_service(s)
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| format!("the terms in {}", s.directory));
        return Err(AcmeError::TermsNotAgreed(terms));
    }
    let contact = format!("mailto:{}", setup.email);
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &[&contact],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            s.directory.clone(),
            None,
        )
        .await
        .map_err(acme("creating the account"))?;
    store::save_account(
        &s.data_dir,
        &store::StoredAccount {
            directory: s.directory.clone(),
            email: setup.email.clone(),
            credentials,
        },
    )?;
    tracing::info!(event = "acme_account_created", directory = %s.directory, email = %setup.email, "ACME account created");
    Ok(account)
}

/// Obtains a certificate for `acme_domains` unless the one in place is not
/// due (see [`Request`]), and writes it. The challenge records are removed
/// whether it succeeds or not; on failure the files in place stay.
pub async fn issue(s: &AcmeSettings, req: &Request) -> Result<Outcome, AcmeError> {
    let now = chrono::Utc::now().timestamp();
    if !req.force && req.setup.is_none() {
        if let Some(current) = s.current() {
            let due = s.due_at(now);
            if due > now {
                return Ok(Outcome::NotDue { current, due });
            }
        }
    }
    let token = match s.challenge {
        Challenge::Dns01 => Some(s.do_token.clone().ok_or_else(|| {
            AcmeError::Settings(
                "do_api_token is not set: DNS-01 needs a DigitalOcean API token with write access to the domain".into(),
            )
        })?),
        Challenge::Http01 { .. } => None,
    };
    let account = tokio::time::timeout(s.timeout, account(s, req))
        .await
        .map_err(|_| AcmeError::Acme {
            step: "account",
            detail: format!("no answer within {}s (acme_timeout)", s.timeout.as_secs()),
        })??;
    let http = http::Http::new(None).map_err(AcmeError::Settings)?;
    let mut dns = token.map(|token| dns01::DigitalOcean {
        http: &http,
        base: s.do_api_url.clone(),
        token,
        zones: Default::default(),
    });
    let responder = match s.challenge {
        Challenge::Http01 { listen } => Some(http01::Responder::start(listen).await?),
        Challenge::Dns01 => None,
    };
    let mut records = Vec::new();
    // instant-acme's requests have no deadline of their own: the whole
    // order has one (the DNS wait, validation and issuance, plus slack).
    let deadline = s.dns_timeout + s.timeout * 2 + Duration::from_secs(120);
    let result = match tokio::time::timeout(
        deadline,
        order::run(s, &account, dns.as_mut(), responder.as_ref(), &mut records),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(AcmeError::Acme {
            step: "order",
            detail: format!(
                "not finished within {}s (acme_dns_timeout + 2 × acme_timeout + 2 min)",
                deadline.as_secs()
            ),
        }),
    };
    drop(responder);
    for r in &records {
        let Some(dns) = &dns else { break };
        if let Err(e) = dns.delete(r).await {
            tracing::warn!(event = "acme_dns_cleanup_failed", record = %r.fqdn, id = r.id, error = %e, "could not delete an ACME challenge record; delete it by hand");
        }
    }
    let (chain, key) = result?;
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(chain.as_bytes())
        .next()
        .ok_or_else(|| AcmeError::Certificate("no certificate in the CA's answer".into()))?
        .map_err(|e| AcmeError::Certificate(e.to_string()))?;
    let info = CertInfo::from_der(&der).map_err(AcmeError::Certificate)?;
    store::write_pair(&s.cert_file, &s.key_file, &chain, &key)?;
    tracing::info!(event = "acme_certificate_issued", names = %info.names.join(","), not_after = info.not_after, cert = %s.cert_file.display(), "ACME certificate obtained");
    Ok(Outcome::Issued(info))
}

/// Records an attempt's result in `data_dir/acme/state.json` (a
/// certificate that was not due is no attempt); the failures in a row.
pub fn record(s: &AcmeSettings, result: &Result<Outcome, AcmeError>) -> u32 {
    let mut state = store::load_state(&s.data_dir);
    let t = chrono::Utc::now().timestamp();
    match result {
        Ok(Outcome::NotDue { .. }) => return state.failures,
        Ok(Outcome::Issued(_)) => {
            state.last_attempt = Some(t);
            state.last_success = Some(t);
            state.last_error = None;
            state.failures = 0;
        }
        Err(e) => {
            state.last_attempt = Some(t);
            state.last_error = Some(e.to_string());
            state.failures += 1;
        }
    }
    if let Err(e) = store::save_state(&s.data_dir, &state) {
        tracing::warn!(error = %e, "cannot write data_dir/acme/state.json");
    }
    state.failures
}
