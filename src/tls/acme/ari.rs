//! ACME Renewal Information (ARI, RFC 9773): when the CA offers a
//! `renewalInfo` URL in its directory, its suggested window decides when
//! the certificate is renewed (a CA can then move renewals forward, e.g.
//! before a mass revocation). Without it, the two-thirds rule applies.

use std::path::Path;

use base64::Engine;

use super::http::Http;
use super::AcmeError;

/// The certificate's ARI identifier (RFC 9773 section 4.1):
/// base64url(keyIdentifier of its Authority Key Identifier) "."
/// base64url(its serial number's DER content octets), unpadded.
pub(crate) fn encode_id(aki: &[u8], serial: &[u8]) -> String {
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!("{}.{}", b.encode(aki), b.encode(serial))
}

/// The ARI identifier of a DER certificate, if it has an AKI key id.
pub(crate) fn cert_id(der: &[u8]) -> Option<String> {
    use x509_parser::extensions::ParsedExtension;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0),
            _ => None,
        })?;
    Some(encode_id(aki, cert.raw_serial()))
}

/// A moment in the window `start..end` fixed by `jitter` (0..1), as the RFC
/// asks (a random time in the window, not its start).
pub fn pick(start: i64, end: i64, jitter: f64) -> i64 {
    let span = (end - start).max(0);
    start + (span as f64 * jitter.clamp(0.0, 1.0)) as i64
}

/// The CA's suggested window for certificate `id` (Unix seconds), or
/// `None` when its directory has no `renewalInfo`.
pub(crate) async fn suggested_window(
    directory: &str,
    ca_file: Option<&Path>,
    id: &str,
) -> Result<Option<(i64, i64)>, AcmeError> {
    let http = Http::new(ca_file).map_err(AcmeError::Settings)?;
    let get = |url: String| {
        let http = &http;
        async move {
            let (status, body) = http
                .request(hyper::Method::GET, &url, None, None)
                .await
                .map_err(|detail| AcmeError::Acme {
                    step: "renewal information",
                    detail,
                })?;
            if status != 200 {
                return Err(AcmeError::Acme {
                    step: "renewal information",
                    detail: format!("{url}: status {status}"),
                });
            }
            Ok::<serde_json::Value, AcmeError>(
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            )
        }
    };
    let dir = get(directory.to_string()).await?;
    let Some(base) = dir["renewalInfo"].as_str() else {
        return Ok(None);
    };
    let info = get(format!("{}/{id}", base.trim_end_matches('/'))).await?;
    let at = |k: &str| {
        info["suggestedWindow"][k]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp())
    };
    match (at("start"), at("end")) {
        (Some(s), Some(e)) if s <= e => Ok(Some((s, e))),
        _ => Err(AcmeError::Acme {
            step: "renewal information",
            detail: "no usable suggestedWindow in the CA's answer".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identifier_is_the_rfc_9773_example() {
        // RFC 9773 section 4.1: keyIdentifier 69:88:5B:…:D4, serial 00:87:65:43:21.
        let aki = [
            0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3, 0x7B, 0x84, 0x7B, 0xA0,
            0xAE, 0x2C, 0xDE, 0x01, 0xC8, 0xD4,
        ];
        assert_eq!(
            encode_id(&aki, &[0x00, 0x87, 0x65, 0x43, 0x21]),
            "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
        );
    }

    #[test]
    fn a_ca_signed_certificate_has_an_identifier() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(ca, &ca_key);
        let mut leaf = rcgen::CertificateParams::new(vec!["mx.example.test".into()]).unwrap();
        leaf.use_authority_key_identifier_extension = true;
        leaf.serial_number = Some(rcgen::SerialNumber::from_slice(&[
            0x00, 0x87, 0x65, 0x43, 0x21,
        ]));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let id = cert_id(cert.der()).unwrap();
        assert!(id.ends_with(".AIdlQyE"), "{id}");
    }

    #[test]
    fn the_renewal_moment_is_inside_the_window() {
        assert_eq!(pick(100, 200, 0.0), 100);
        assert_eq!(pick(100, 200, 1.0), 200);
        assert_eq!(pick(100, 200, 0.25), 125);
        assert_eq!(pick(200, 100, 0.5), 200);
    }

    #[test]
    fn the_window_comes_from_the_directory_s_renewal_info() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", l.local_addr().unwrap());
            let dir = serde_json::json!({ "renewalInfo": format!("{base}/ari") }).to_string();
            let info = r#"{"suggestedWindow":{"start":"2030-01-01T00:00:00Z","end":"2030-01-03T00:00:00Z"}}"#;
            let server = tokio::spawn(async move {
                let mut paths = Vec::new();
                for _ in 0..2 {
                    let (mut s, _) = l.accept().await.unwrap();
                    let mut req = vec![0; 4096];
                    let n = s.read(&mut req).await.unwrap();
                    let head = String::from_utf8_lossy(&req[..n]).to_string();
                    let path = head.split_whitespace().nth(1).unwrap().to_string();
                    let body = if path == "/dir" { dir.clone() } else { info.to_string() };
                    paths.push(path);
                    let rsp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    s.write_all(rsp.as_bytes()).await.unwrap();
                }
                paths
            });
            let w = suggested_window(&format!("{base}/dir"), None, "abc.AIdlQyE")
                .await
                .unwrap();
            assert_eq!(w, Some((1_893_456_000, 1_893_628_800)));
            assert_eq!(server.await.unwrap(), ["/dir", "/ari/abc.AIdlQyE"]);
        });
    }
}
