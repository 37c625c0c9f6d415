//! DKIM key tooling for `gomail dkim keygen|show-record`: keys kept in
//! `data_dir/dkim/<domain>/<selector>.pem` (PKCS#8, 0600) and the TXT
//! record to publish for each. gomail itself only verifies DKIM; the keys
//! are for whatever signs the domain's outgoing mail.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::PublicKeyData;

/// Why a key could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum DkimKeyError {
    /// A key for that selector exists already.
    #[error("{0} exists; choose another --selector (rotate keys by selector) or remove it")]
    Exists(PathBuf),
    /// No key was found.
    #[error("no DKIM key at {0}; make one with `gomail dkim keygen`")]
    Missing(PathBuf),
    /// Reading or writing failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The key is not one gomail made (or is damaged).
    #[error("{path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A selector or domain that cannot be a DNS label.
    #[error("{0}")]
    Name(String),
}

/// A key algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// RSA 2048 (`k=rsa`): what every verifier understands.
    Rsa2048,
    /// Ed25519 (`k=ed25519`, RFC 8463): small, but not every verifier has it.
    Ed25519,
}

impl Algorithm {
    /// `rsa-2048` or `ed25519`.
    pub fn parse(s: &str) -> Option<Algorithm> {
        match s {
            "rsa-2048" | "rsa" => Some(Algorithm::Rsa2048),
            "ed25519" => Some(Algorithm::Ed25519),
            _ => None,
        }
    }
}

/// A DKIM key's public half.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// `k=`: `rsa` or `ed25519`.
    pub k: &'static str,
    /// `p=`: base64 of the SubjectPublicKeyInfo (RSA) or the raw 32-byte
    /// key (Ed25519, RFC 8463).
    pub p: String,
}

fn label_ok(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// Where the key of `selector` for `domain` lives.
pub fn key_path(data_dir: &Path, domain: &str, selector: &str) -> Result<PathBuf, DkimKeyError> {
    if !selector.split('.').all(label_ok) {
        return Err(DkimKeyError::Name(format!(
            "selector `{selector}` is not a DNS label (letters, digits, -)"
        )));
    }
    if !domain.contains('.') || !domain.split('.').all(label_ok) {
        return Err(DkimKeyError::Name(format!(
            "`{domain}` is not a domain name"
        )));
    }
    Ok(data_dir
        .join("dkim")
        .join(domain.to_ascii_lowercase())
        .join(format!("{selector}.pem")))
}

/// Makes a key for `selector` and `domain`; refuses to replace one.
pub fn generate(
    data_dir: &Path,
    domain: &str,
    selector: &str,
    alg: Algorithm,
) -> Result<(PathBuf, PublicKey), DkimKeyError> {
    let path = key_path(data_dir, domain, selector)?;
    if path.exists() {
        return Err(DkimKeyError::Exists(path));
    }
    let key = match alg {
        Algorithm::Rsa2048 => {
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        }
        Algorithm::Ed25519 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519),
    }
    .map_err(|e| DkimKeyError::Key {
        path: path.clone(),
        reason: format!("key generation failed: {e}"),
    })?;
    let io = |op, p: &Path| {
        let p = p.to_path_buf();
        move |source| DkimKeyError::Io {
            op,
            path: p,
            source,
        }
    };
    let dir = path.parent().expect("key path has a parent");
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io("chmod", dir))?;
    let pem = match alg {
        Algorithm::Rsa2048 => key.serialize_pem(),
        Algorithm::Ed25519 => {
            ed25519_pkcs8_v1_pem(&key.serialize_der()).ok_or_else(|| DkimKeyError::Key {
                path: path.clone(),
                reason: "the generated Ed25519 key has an unexpected encoding".into(),
            })?
        }
    };
    crate::fsutil::replace_file(&path, pem.as_bytes(), 0o600).map_err(io("write", &path))?;
    let public = public_of(&key, &path)?;
    Ok((path, public))
}

/// An Ed25519 key in PKCS#8 v1 (RFC 8410: the seed only), as PEM, from
/// the v2 document (seed and public key) the generator gives. OpenSSL 3.0
/// and Python's `cryptography` read v1 but refuse v2, and the signers
/// that use them must read this key.
fn ed25519_pkcs8_v1_pem(v2: &[u8]) -> Option<String> {
    // SEQUENCE (short length) { INTEGER 1, AlgorithmIdentifier Ed25519,
    // OCTET STRING { OCTET STRING seed }, [1] public key }.
    const V2_BODY: [u8; 14] = [
        0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ];
    const V1_HEAD: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    if v2.first() != Some(&0x30) || v2.get(1).is_none_or(|l| *l >= 0x80) {
        return None;
    }
    let seed = v2.get(2..)?.strip_prefix(&V2_BODY)?.get(..32)?;
    let der = [&V1_HEAD[..], seed].concat();
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    Some(format!(
        "-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"
    ))
}

fn public_of(key: &rcgen::KeyPair, path: &Path) -> Result<PublicKey, DkimKeyError> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    if key.algorithm() == &rcgen::PKCS_ED25519 {
        Ok(PublicKey {
            k: "ed25519",
            p: b64(key.public_key_raw()),
        })
    } else if key.algorithm() == &rcgen::PKCS_RSA_SHA256 {
        Ok(PublicKey {
            k: "rsa",
            p: b64(&key.subject_public_key_info()),
        })
    } else {
        Err(DkimKeyError::Key {
            path: path.to_path_buf(),
            reason: "not an RSA or Ed25519 key".into(),
        })
    }
}

/// Reads the key of `selector` for `domain`; its public half.
pub fn read_public(
    data_dir: &Path,
    domain: &str,
    selector: &str,
) -> Result<PublicKey, DkimKeyError> {
    let path = key_path(data_dir, domain, selector)?;
    let pem = match std::fs::read_to_string(&path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DkimKeyError::Missing(path))
        }
        Err(source) => {
            return Err(DkimKeyError::Io {
                op: "read",
                path,
                source,
            })
        }
    };
    let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| DkimKeyError::Key {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    public_of(&key, &path)
}

/// The selectors with a key for `domain`, sorted.
pub fn selectors(data_dir: &Path, domain: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(data_dir.join("dkim").join(domain))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".pem")
                .map(str::to_string)
        })
        .collect();
    out.sort();
    out
}

/// The TXT value: `v=DKIM1; k=…; p=…`.
pub fn record_value(key: &PublicKey) -> String {
    format!("v=DKIM1; k={}; p={}", key.k, key.p)
}

/// The zone-file line: `<selector>._domainkey.<domain>. IN TXT "…" "…"`,
/// the value split into strings of at most 255 octets (RFC 1035 3.3).
pub fn record_line(domain: &str, selector: &str, key: &PublicKey) -> String {
    let value = record_value(key);
    let strings: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!(
        "{selector}._domainkey.{}. IN TXT {}",
        domain.trim_end_matches('.'),
        strings.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_records_are_split_into_255_octet_strings() {
        let key = PublicKey {
            k: "rsa",
            p: "A".repeat(392),
        };
        let line = record_line("example.test", "s1", &key);
        assert!(line.starts_with("s1._domainkey.example.test. IN TXT \"v=DKIM1; k=rsa; p=AAA"));
        let strings: Vec<&str> = line
            .split_once(" IN TXT ")
            .unwrap()
            .1
            .split("\" \"")
            .collect();
        assert_eq!(strings.len(), 2);
        assert_eq!(strings[0].trim_start_matches('"').len(), 255);
        let joined: String = strings.iter().map(|s| s.trim_matches('"')).collect();
        assert_eq!(joined, record_value(&key));
    }

    #[test]
    fn ed25519_keys_are_made_read_and_never_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let (path, public) =
            generate(tmp.path(), "example.test", "ed", Algorithm::Ed25519).unwrap();
        assert_eq!(public.k, "ed25519");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&public.p)
                .unwrap()
                .len(),
            32
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            read_public(tmp.path(), "example.test", "ed").unwrap(),
            public
        );
        // PKCS#8 v1, which OpenSSL 3.0 reads (it refuses v2), and the same
        // public key as the record's.
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&path)
            .output()
            .expect("openssl runs (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&public.p)
            .unwrap();
        assert!(
            out.stdout.ends_with(&raw),
            "openssl derives another public key"
        );
        assert!(matches!(
            generate(tmp.path(), "example.test", "ed", Algorithm::Ed25519),
            Err(DkimKeyError::Exists(_))
        ));
        assert_eq!(selectors(tmp.path(), "example.test"), vec!["ed"]);
        assert!(key_path(tmp.path(), "example.test", "bad_sel").is_err());
    }
}
