//! Standard Webhooks (v1) signatures, so receivers can trust the payload.
//!
//! `webhook-signature` carries one `v1,<base64 HMAC-SHA256>` entry per
//! configured secret (space-separated), computed over
//! `"{webhook-id}.{webhook-timestamp}.{body}"` with the base64-decoded part
//! of each `whsec_…` secret. Several secrets at once let an operator rotate
//! without downtime: configure the new one beside the old, move receivers
//! over, then drop the old one.
//!
//! With `webhook_signing_key` (`whsk_<base64 seed>`), an Ed25519 signature
//! of the same content is added as `v1a,<base64>`: receivers then verify
//! with the public key (logged at start-up as `whpk_…`) and hold no shared
//! secret.

use aws_lc_rs::hmac;

/// A webhook signing key (the decoded bytes of a `whsec_…` secret).
#[derive(Clone)]
pub struct Secret(hmac::Key);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(********)")
    }
}

impl Secret {
    /// Parses `whsec_<base64>` (or bare base64).
    pub fn parse(s: &str) -> Option<Secret> {
        let b64 = s.trim().strip_prefix("whsec_").unwrap_or(s.trim());
        let key = base64_decode(b64)?;
        (!key.is_empty()).then(|| Secret(hmac::Key::new(hmac::HMAC_SHA256, &key)))
    }

    /// Parses a `webhook_secret` setting: one or more secrets, separated by
    /// spaces or commas.
    pub fn parse_all(setting: &str) -> Option<Vec<Secret>> {
        setting
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(Secret::parse)
            .collect()
    }
}

/// An Ed25519 webhook signing key (`whsk_<base64 32-byte seed>`).
pub struct SigningKey(aws_lc_rs::signature::Ed25519KeyPair);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(********)")
    }
}

impl SigningKey {
    /// Parses `whsk_<base64>`: a 32-byte seed (or 64 bytes, seed first).
    pub fn parse(s: &str) -> Option<SigningKey> {
        let raw = base64_decode(s.trim().strip_prefix("whsk_")?)?;
        let seed = raw
            .get(..32)
            .filter(|_| raw.len() == 32 || raw.len() == 64)?;
        aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(seed)
            .ok()
            .map(SigningKey)
    }

    /// The public key, `whpk_<base64>`, for receivers.
    pub fn public(&self) -> String {
        use aws_lc_rs::signature::KeyPair;
        format!("whpk_{}", base64_encode(self.0.public_key().as_ref()))
    }
}

/// The `webhook-signature` header value for a delivery: `v1,` per HMAC
/// secret, then `v1a,` for the Ed25519 key if any.
pub fn signature_header_all(
    secrets: &[Secret],
    key: Option<&SigningKey>,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    // The signed content, `<id>.<timestamp>.<body>`, is the same for every
    // scheme: built once.
    let mut signed = Vec::with_capacity(id.len() + 24 + body.len());
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(timestamp.to_string().as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    let mut parts: Vec<String> = secrets
        .iter()
        .map(|s| format!("v1,{}", base64_encode(hmac::sign(&s.0, &signed).as_ref())))
        .collect();
    if let Some(k) = key {
        parts.push(format!("v1a,{}", base64_encode(k.0.sign(&signed).as_ref())));
    }
    parts.join(" ")
}

/// The HMAC (`v1`) part of the `webhook-signature` header.
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    signature_header_all(secrets, None, id, timestamp, body)
}

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Standard base64, padding optional; `None` on any other character.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::engine::{general_purpose, DecodePaddingMode, GeneralPurposeConfig};
    use base64::Engine;
    const LENIENT: general_purpose::GeneralPurpose = general_purpose::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    LENIENT.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification.
        let s = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature_header(&[s], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn several_secrets_give_several_signatures_and_bad_ones_are_refused() {
        let all =
            Secret::parse_all("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_c2Vjb25k").unwrap();
        let h = signature_header(&all, "id", 1, b"{}");
        assert_eq!(h.split(' ').count(), 2);
        assert!(h.split(' ').all(|p| p.starts_with("v1,")));
        assert!(Secret::parse_all("whsec_not*base64").is_none());
        assert_eq!(format!("{:?}", all[0]), "Secret(********)");
        assert_eq!(
            base64_decode(&base64_encode(b"any bytes\x00\xff")).unwrap(),
            b"any bytes\x00\xff"
        );
        assert_eq!(base64_decode("YWI").unwrap(), b"ab", "padding is optional");
        assert!(base64_decode("YW*=").is_none());
    }

    #[test]
    fn ed25519_keys_parse_and_sign() {
        let key = SigningKey::parse(&format!("whsk_{}", base64_encode(&[7u8; 32]))).unwrap();
        assert!(key.public().starts_with("whpk_"));
        let h = signature_header_all(&[], Some(&key), "id", 1, b"{}");
        assert!(h.starts_with("v1a,") && !h.contains(' '), "{h}");
        assert!(SigningKey::parse("whsk_c2hvcnQ=").is_none());
        assert!(SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_none());
    }
}
