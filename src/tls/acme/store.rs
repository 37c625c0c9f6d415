//! What ACME keeps in `data_dir/acme/` (directory 0700): the account for
//! each directory URL (0600, reused across runs) and the renewal state
//! (last attempt, last error, failures in a row, next renewal); and the
//! atomic replacement of the certificate and key files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::AcmeError;
use crate::fsutil::{replace_file, sync_dir, write_synced};

/// `data_dir/acme`.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("acme")
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AcmeError + 'a {
    move |source| AcmeError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `data_dir/acme` readable by the owner only.
fn ensure_dir(data_dir: &Path) -> Result<PathBuf, AcmeError> {
    let d = dir(data_dir);
    std::fs::create_dir_all(&d).map_err(io("create", &d))?;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
        .map_err(io("chmod", &d))?;
    Ok(d)
}

/// The account file for `directory`: `account-<host>.json`, so that an
/// account with the staging CA and one with production live side by side.
pub fn account_path(data_dir: &Path, directory: &str) -> PathBuf {
    let host: String = directory
        .split("://")
        .nth(1)
        .unwrap_or(directory)
        .split('/')
        .next()
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir(data_dir).join(format!("account-{host}.json"))
}

/// A stored account.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredAccount {
    /// The directory URL it was made with.
    pub(crate) directory: String,
    /// Its contact address.
    pub(crate) email: String,
    /// instant-acme's credentials (the account key: a secret).
    pub(crate) credentials: instant_acme::AccountCredentials,
}

/// Reads the account for `directory`, if one was made.
pub(crate) fn load_account(
    data_dir: &Path,
    directory: &str,
) -> Result<Option<StoredAccount>, AcmeError> {
    let p = account_path(data_dir, directory);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", &p)(e)),
    };
    let a: StoredAccount = serde_json::from_slice(&bytes).map_err(|e| AcmeError::Io {
        op: "parse",
        path: p.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok((a.directory == directory).then_some(a))
}

/// Stores an account (0600).
pub(crate) fn save_account(data_dir: &Path, a: &StoredAccount) -> Result<(), AcmeError> {
    let d = ensure_dir(data_dir)?;
    let p = account_path(data_dir, &a.directory);
    let json = serde_json::to_vec_pretty(a).expect("account serializes");
    replace_file(&p, &json, 0o600).map_err(io("write", &p))?;
    sync_dir(&d).map_err(io("sync", &d))
}

/// The renewal state, shared by the server and the command line.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// When the last issuance attempt ended (Unix seconds).
    pub last_attempt: Option<i64>,
    /// When a certificate was last obtained.
    pub last_success: Option<i64>,
    /// Why the last attempt failed (none after a success).
    pub last_error: Option<String>,
    /// Failed attempts since the last success.
    pub failures: u32,
    /// When the renewal loop will try next (Unix seconds).
    pub next_renewal: Option<i64>,
}

fn state_path(data_dir: &Path) -> PathBuf {
    dir(data_dir).join("state.json")
}

/// Reads the renewal state (empty when there is none).
pub fn load_state(data_dir: &Path) -> State {
    std::fs::read(state_path(data_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Writes the renewal state.
pub fn save_state(data_dir: &Path, s: &State) -> Result<(), AcmeError> {
    ensure_dir(data_dir)?;
    let p = state_path(data_dir);
    let json = serde_json::to_vec_pretty(s).expect("state serializes");
    replace_file(&p, &json, 0o600).map_err(io("write", &p))
}

/// Replaces the certificate chain and its key so that each file is only
/// ever the old one or the whole new one: both are written and synced under
/// temporary names first, then renamed (key, then chain) one right after
/// the other. The key is 0600.
pub(crate) fn write_pair(
    cert: &Path,
    key: &Path,
    chain_pem: &str,
    key_pem: &str,
) -> Result<(), AcmeError> {
    for p in [cert, key] {
        if let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
    }
    let cert_tmp = cert.with_extension("acme-tmp");
    let key_tmp = key.with_extension("acme-tmp");
    write_synced(&key_tmp, key_pem.as_bytes(), 0o600).map_err(io("write", &key_tmp))?;
    // A temporary file left by an earlier run keeps its old mode.
    std::fs::set_permissions(&key_tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(io("chmod", &key_tmp))?;
    write_synced(&cert_tmp, chain_pem.as_bytes(), 0o644).map_err(io("write", &cert_tmp))?;
    std::fs::rename(&key_tmp, key).map_err(io("rename", key))?;
    std::fs::rename(&cert_tmp, cert).map_err(io("rename", cert))?;
    for p in [cert, key] {
        if let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            sync_dir(parent).map_err(io("sync", parent))?;
        }
    }
    Ok(())
}
