//! TLS for the SMTP listeners: policy from the configuration, certificate
//! loading with SNI selection, the self-signed fallback, and hot swap.
//!
//! A rustls `ServerConfig` is built here, off the shards, and published as
//! a [`shards::Snapshot`]; each new connection loads the current one, and a
//! connection in flight keeps the one it started with. This module never
//! touches a socket.

pub mod acme;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::fsutil::replace_file;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::Config;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `tls_cipher_suites` and `tls_min_version` leave nothing to negotiate.
    #[error("tls_cipher_suites: no configured suite can be used with tls_min_version {0}")]
    NoSuites(String),
    /// The self-signed fallback could not be made or written.
    #[error("self-signed certificate in {dir}: {reason}")]
    SelfSigned {
        /// Where it was to be written.
        dir: PathBuf,
        /// What failed.
        reason: String,
    },
    /// rustls refused the settings.
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Where the certificates in use came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// `tls_cert_file` / `tls_key_file` (plus `tls_cert_dir`).
    Files,
    /// Generated (or reused) in `data_dir/tls/` because the files were
    /// absent or unusable; the reason is kept for the log.
    SelfSigned {
        /// Why the configured files were not used.
        reason: String,
    },
}

/// A built TLS configuration, ready to hand to shards.
#[derive(Debug)]
pub struct Built {
    /// The rustls configuration.
    pub config: Arc<ServerConfig>,
    /// Where the default certificate came from.
    pub source: CertSource,
    /// How many certificates are offered (default + `tls_cert_dir`).
    pub certificates: usize,
}

/// Chooses a certificate by the client's server name (SNI), falling back to
/// the default (`tls_cert_file`) when no certificate matches or no name is sent.
#[derive(Debug)]
struct SniResolver {
    by_name: Vec<Arc<CertifiedKey>>,
    /// The DNS names in each certificate's subject alternative names (lower
    /// case, wildcards as `*.example`) → indexes into `by_name`: a handshake
    /// looks at the candidates for its name only, not at every certificate.
    index: HashMap<String, Vec<usize>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn new(by_name: Vec<Arc<CertifiedKey>>, default: Arc<CertifiedKey>) -> SniResolver {
        let mut index: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, ck) in by_name.iter().enumerate() {
            let Ok(der) = ck.end_entity_cert() else {
                continue;
            };
            let Ok(ee) = webpki::EndEntityCert::try_from(der) else {
                continue;
            };
            for name in ee.valid_dns_names() {
                let slot = index.entry(name.to_ascii_lowercase()).or_default();
                if !slot.contains(&i) {
                    slot.push(i);
                }
            }
        }
        SniResolver {
            by_name,
            index,
            default,
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.index.is_empty() {
            // No tls_cert_dir (the usual set-up): nothing to choose from.
            return Some(self.default.clone());
        }
        let Some((asked, name)) = hello.server_name().and_then(|n| {
            let name = ServerName::try_from(n).ok()?;
            Some((n.to_ascii_lowercase(), name))
        }) else {
            return Some(self.default.clone());
        };
        let wildcard = asked
            .split_once('.')
            .map(|(_, parent)| format!("*.{parent}"));
        let candidates = [Some(asked.as_str()), wildcard.as_deref()]
            .into_iter()
            .flatten()
            .filter_map(|n| self.index.get(n))
            .flatten();
        // The index only narrows the choice; webpki's own check decides.
        let matches = |ck: &CertifiedKey| {
            ck.end_entity_cert().ok().is_some_and(|der| {
                webpki::EndEntityCert::try_from(der)
                    .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
            })
        };
        let found = candidates
            .map(|&i| &self.by_name[i])
            .find(|ck| matches(ck))
            .cloned();
        found.or_else(|| Some(self.default.clone()))
    }
}

/// Maps a configured suite name to rustls's name (`TLS_AES_128_GCM_SHA256`
/// is written `TLS13_AES_128_GCM_SHA256` by rustls).
fn rustls_suite_name(configured: &str) -> String {
    match configured.strip_prefix("TLS_") {
        Some(rest) if !rest.starts_with("ECDHE_") => format!("TLS13_{rest}"),
        _ => configured.to_string(),
    }
}

/// The crypto provider restricted by `tls_cipher_suites` and `tls_min_version`.
///
/// As in GoMail (Go's crypto/tls), the list restricts TLS 1.2 suites; TLS 1.3
/// suites are restricted only if the list names at least one of them.
fn provider(cfg: &Config) -> Result<CryptoProvider, TlsError> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    if !cfg.tls_cipher_suites.is_empty() {
        let want: Vec<String> = cfg
            .tls_cipher_suites
            .iter()
            .map(|s| rustls_suite_name(s))
            .collect();
        let names_13 = want.iter().any(|w| w.starts_with("TLS13_"));
        p.cipher_suites.retain(|s| {
            let name = format!("{:?}", s.suite());
            want.contains(&name) || (!names_13 && name.starts_with("TLS13_"))
        });
    }
    if cfg.tls_min_version == "1.3" {
        p.cipher_suites
            .retain(|s| s.version() == &rustls::version::TLS13);
    }
    if p.cipher_suites.is_empty() {
        return Err(TlsError::NoSuites(cfg.tls_min_version.clone()));
    }
    Ok(p)
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let file_err = |path: &Path, reason: String| TlsError::File {
        path: path.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no PEM certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e.to_string()))?;
    let ck = CertifiedKey::from_der(chain, key_der, provider).map_err(|e| {
        file_err(
            key,
            format!("does not match the certificate or is unusable: {e}"),
        )
    })?;
    Ok(ck)
}

/// Files in `tls_cert_dir`: each `NAME.pem` holds a chain and its key, or
/// `NAME.crt` pairs with `NAME.key`.
fn dir_pairs(dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>, TlsError> {
    let rd = std::fs::read_dir(dir).map_err(|e| TlsError::File {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut out: Vec<(PathBuf, PathBuf)> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| match p.extension().and_then(|x| x.to_str()) {
            Some("pem") => Some((p.clone(), p)),
            Some("crt") => {
                let k = p.with_extension("key");
                k.exists().then_some((p, k))
            }
            _ => None,
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Makes (or reuses) `data_dir/tls/self-signed.{crt,key}` for `hostname`.
fn self_signed(dir: &Path, hostname: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let err = |reason: String| TlsError::SelfSigned {
        dir: dir.to_path_buf(),
        reason,
    };
    let crt = dir.join("self-signed.crt");
    let key = dir.join("self-signed.key");
    let stamp = dir.join("self-signed.name");
    if crt.exists()
        && key.exists()
        && std::fs::read_to_string(&stamp).ok().as_deref() == Some(hostname)
    {
        return Ok((crt, key));
    }
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let made = rcgen::generate_simple_self_signed(vec![hostname.to_string()])
        .map_err(|e| err(e.to_string()))?;
    replace_file(&key, made.signing_key.serialize_pem().as_bytes(), 0o600)
        .map_err(|e| err(e.to_string()))?;
    replace_file(&crt, made.cert.pem().as_bytes(), 0o644).map_err(|e| err(e.to_string()))?;
    replace_file(&stamp, hostname.as_bytes(), 0o644).map_err(|e| err(e.to_string()))?;
    Ok((crt, key))
}

/// Builds the TLS configuration from `cfg`. Falls back to a self-signed
/// certificate for `mail_hostname` when `tls_cert_file`/`tls_key_file` are
/// unset or unusable (the caller logs [`CertSource::SelfSigned`]'s reason).
pub fn build(cfg: &Config) -> Result<Built, TlsError> {
    let provider = provider(cfg)?;
    let configured = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(c), Some(k)) => load_pair(c, k, &provider).map_err(|e| e.to_string()),
        // Where ACME writes when the TLS keys are not set.
        (None, None) => match acme_files(cfg) {
            Some((c, k)) => load_pair(&c, &k, &provider).map_err(|e| e.to_string()),
            None => Err("tls_cert_file and tls_key_file are not set".to_string()),
        },
        _ => Err("only one of tls_cert_file and tls_key_file is set".to_string()),
    };
    let (default, source) = match configured {
        Ok(ck) => (ck, CertSource::Files),
        Err(reason) => {
            let (c, k) = self_signed(&cfg.data_dir.join("tls"), &cfg.mail_hostname)?;
            (
                load_pair(&c, &k, &provider)?,
                CertSource::SelfSigned { reason },
            )
        }
    };
    let mut by_name = Vec::new();
    if let Some(dir) = &cfg.tls_cert_dir {
        for (c, k) in dir_pairs(dir)? {
            by_name.push(Arc::new(load_pair(&c, &k, &provider)?));
        }
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if cfg.tls_min_version == "1.3" {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let certificates = 1 + by_name.len();
    let config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver::new(by_name, Arc::new(default))));
    Ok(Built {
        config: Arc::new(config),
        source,
        certificates,
    })
}

/// `data_dir/acme/cert.pem` and `key.pem` when `tls_cert_file` and
/// `tls_key_file` are unset and ACME has written them.
pub fn acme_files(cfg: &Config) -> Option<(PathBuf, PathBuf)> {
    if cfg.tls_cert_file.is_some() || cfg.tls_key_file.is_some() {
        return None;
    }
    let c = acme::default_cert_file(&cfg.data_dir);
    let k = acme::default_key_file(&cfg.data_dir);
    (c.exists() && k.exists()).then_some((c, k))
}

/// A cheap fingerprint of the certificate files (paths and modification
/// times), to notice when they change on disk.
pub fn fingerprint(cfg: &Config) -> Vec<(PathBuf, Option<SystemTime>)> {
    let mut paths: Vec<PathBuf> = [&cfg.tls_cert_file, &cfg.tls_key_file]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    if let Some((c, k)) = acme_files(cfg) {
        paths.push(c);
        paths.push(k);
    }
    if let Some(dir) = &cfg.tls_cert_dir {
        if let Ok(pairs) = dir_pairs(dir) {
            for (c, k) in pairs {
                paths.push(c);
                paths.push(k);
            }
        }
        paths.push(dir.clone());
    }
    paths
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            (p, m)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_names_map_to_rustls() {
        assert_eq!(
            rustls_suite_name("TLS_AES_128_GCM_SHA256"),
            "TLS13_AES_128_GCM_SHA256"
        );
        assert_eq!(
            rustls_suite_name("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"
        );
        // Every suite the configuration allows exists in the provider.
        let names: Vec<String> = rustls::crypto::aws_lc_rs::default_provider()
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        for allowed in crate::config::ALLOWED_SUITES {
            assert!(
                names.contains(&rustls_suite_name(allowed)),
                "{allowed} not in {names:?}"
            );
        }
    }
}
