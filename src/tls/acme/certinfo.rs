//! What `gomail ssl status` and the renewal schedule need to know about a
//! certificate file, and when a certificate is due for renewal. Pure: the
//! clock and the randomness are passed in.

use std::path::Path;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::Serialize;

/// The end-entity certificate of a PEM chain, as far as renewal and status
/// care.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CertInfo {
    /// The issuer's distinguished name (RFC 4514 text).
    pub issuer: String,
    /// The DNS names in the subject alternative names (the CN when none).
    pub names: Vec<String>,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// Issuer and subject are the same name (gomail's fallback, or any
    /// other self-signed certificate).
    pub self_signed: bool,
    /// A number in 0..1 fixed by the certificate's bytes: the renewal
    /// jitter, so that the schedule of one certificate is stable across
    /// restarts while many servers' renewals spread out.
    #[serde(skip)]
    pub jitter: f64,
    /// Its ARI identifier (RFC 9773), when it names its issuer's key.
    #[serde(skip)]
    pub ari_id: Option<String>,
}

impl CertInfo {
    /// Reads the first certificate of the PEM file at `path`.
    pub fn read(path: &Path) -> Result<CertInfo, String> {
        let der = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .next()
            .ok_or_else(|| format!("{}: no PEM certificate in the file", path.display()))?
            .map_err(|e| format!("{}: {e}", path.display()))?;
        CertInfo::from_der(&der).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses one DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertInfo, String> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let mut names: Vec<String> = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        if names.is_empty() {
            names.extend(
                cert.subject()
                    .iter_common_name()
                    .filter_map(|cn| cn.as_str().ok().map(str::to_string)),
            );
        }
        let v = cert.validity();
        Ok(CertInfo {
            issuer: cert.issuer().to_string(),
            names,
            not_before: v.not_before.timestamp(),
            not_after: v.not_after.timestamp(),
            self_signed: cert.issuer().as_raw() == cert.subject().as_raw(),
            jitter: f64::from(crc32fast::hash(der)) / f64::from(u32::MAX),
            ari_id: super::ari::cert_id(der),
        })
    }

    /// True when every name in `wanted` is covered exactly by one of the
    /// certificate's names (a wildcard only by the same wildcard).
    pub fn covers(&self, wanted: &[String]) -> bool {
        wanted
            .iter()
            .all(|w| self.names.iter().any(|n| n.eq_ignore_ascii_case(w)))
    }

    /// When this certificate should be renewed (Unix seconds); see
    /// [`renewal_due`].
    pub fn renewal_due(&self, renew_before: Duration) -> i64 {
        renewal_due(self.not_before, self.not_after, renew_before, self.jitter)
    }
}

/// When a certificate valid from `not_before` to `not_after` is due:
/// two thirds into its lifetime, brought forward by up to a thirtieth of
/// the lifetime (`jitter` in 0..1: three days at most for a 90-day
/// certificate); and no later than `renew_before` ahead of its expiry when
/// that is set (not zero).
pub fn renewal_due(not_before: i64, not_after: i64, renew_before: Duration, jitter: f64) -> i64 {
    let life = (not_after - not_before).max(0);
    let spread = (life as f64 / 30.0 * jitter.clamp(0.0, 1.0)) as i64;
    let two_thirds = not_before + life / 3 * 2 - spread;
    if renew_before.is_zero() {
        return two_thirds;
    }
    let window = i64::try_from(renew_before.as_secs()).unwrap_or(i64::MAX);
    two_thirds.min(not_after.saturating_sub(window))
}

/// How long to wait before trying again after `failures` failed attempts
/// in a row: 1 minute, doubling, at most 6 hours.
pub fn retry_delay(failures: u32) -> Duration {
    let step = failures.saturating_sub(1).min(16);
    Duration::from_secs((60u64 << step).min(6 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn a_90_day_certificate_is_due_after_60_days_less_jitter() {
        let nb = 1_000_000;
        let na = nb + 90 * DAY;
        assert_eq!(renewal_due(nb, na, Duration::ZERO, 0.0), nb + 60 * DAY);
        assert_eq!(renewal_due(nb, na, Duration::ZERO, 1.0), nb + 57 * DAY);
        let mid = renewal_due(nb, na, Duration::ZERO, 0.5);
        assert!(mid > nb + 57 * DAY && mid < nb + 60 * DAY);
    }

    #[test]
    fn renew_before_brings_the_date_forward_but_never_back() {
        let nb = 0;
        let na = 5 * 365 * DAY;
        let window = Duration::from_secs(3650 * DAY as u64);
        assert!(renewal_due(nb, na, window, 0.0) < nb);
        let small = Duration::from_secs(7 * DAY as u64);
        assert_eq!(
            renewal_due(nb, na, small, 0.0),
            renewal_due(nb, na, Duration::ZERO, 0.0)
        );
    }

    #[test]
    fn retries_back_off_to_six_hours() {
        assert_eq!(retry_delay(1), Duration::from_secs(60));
        assert_eq!(retry_delay(2), Duration::from_secs(120));
        assert_eq!(retry_delay(4), Duration::from_secs(480));
        assert_eq!(retry_delay(40), Duration::from_secs(6 * 3600));
    }

    #[test]
    fn the_self_signed_fallback_reads_as_self_signed() {
        let made = rcgen::generate_simple_self_signed(vec!["mx.example.test".into()]).unwrap();
        let info = CertInfo::from_der(made.cert.der()).unwrap();
        assert!(info.self_signed);
        assert_eq!(info.names, vec!["mx.example.test".to_string()]);
        assert!(info.covers(&["MX.example.test".into()]));
        assert!(!info.covers(&["*.example.test".into()]));
        assert!(info.not_after > info.not_before);
    }
}
