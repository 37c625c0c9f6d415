//! A small HTTPS client for the DigitalOcean API and the ACME directory's
//! terms of service (instant-acme has its own for the ACME protocol).
//! Every request has a deadline and every answer a size bound.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// How long one request may take, from connecting to the last octet.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// The largest answer read; the API's answers are a few KiB.
const ANSWER_LIMIT: usize = 1 << 20;

/// The client: system roots, plus `acme_ca_file` when set.
pub(crate) struct Http {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// The HTTPS connector: the system's roots plus every certificate in
/// `extra_roots` (PEM).
fn connector(
    extra_roots: Option<&Path>,
) -> Result<hyper_rustls::HttpsConnector<HttpConnector>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    if let Some(p) = extra_roots {
        for c in CertificateDer::pem_file_iter(p)
            .map_err(|e| format!("acme_ca_file {}: {e}", p.display()))?
        {
            let c = c.map_err(|e| format!("acme_ca_file {}: {e}", p.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("acme_ca_file {}: {e}", p.display()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build())
}

/// instant-acme's client, with the same trust as [`Http`] (its own
/// `builder_with_root` would trust one certificate and no system root).
pub(crate) fn acme_client(
    extra_roots: Option<&Path>,
) -> Result<Box<dyn instant_acme::HttpClient>, String> {
    let client: Client<_, instant_acme::BodyWrapper<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector(extra_roots)?);
    Ok(Box::new(client))
}

impl Http {
    /// A client trusting the system's roots and the certificates in
    /// `extra_roots` (PEM).
    pub(crate) fn new(extra_roots: Option<&Path>) -> Result<Http, String> {
        Ok(Http {
            client: Client::builder(TokioExecutor::new()).build(connector(extra_roots)?),
        })
    }

    /// One request; the status and the body. `bearer` goes in
    /// `Authorization` (never into an error text).
    pub(crate) async fn request(
        &self,
        method: hyper::Method,
        url: &str,
        bearer: Option<&str>,
        json: Option<String>,
    ) -> Result<(u16, Vec<u8>), String> {
        let mut req = hyper::Request::builder()
            .method(method.clone())
            .uri(url)
            .header("user-agent", concat!("gomail/", env!("CARGO_PKG_VERSION")));
        if let Some(t) = bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match json {
            Some(j) => {
                req = req.header("content-type", "application/json");
                Full::new(Bytes::from(j))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).map_err(|e| format!("{method} {url}: {e}"))?;
        let work = async {
            let rsp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{method} {url}: {}", error_chain(&e)))?;
            let status = rsp.status().as_u16();
            let body = Limited::new(rsp.into_body(), ANSWER_LIMIT)
                .collect()
                .await
                .map_err(|e| format!("{method} {url}: reading the answer: {e}"))?
                .to_bytes();
            Ok((status, body.to_vec()))
        };
        match tokio::time::timeout(REQUEST_DEADLINE, work).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "{method} {url}: no answer within {}s",
                REQUEST_DEADLINE.as_secs()
            )),
        }
    }
}

/// An error with its causes, for messages ("connection refused" is a cause
/// of hyper-util's "client error (Connect)").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !s.contains(&t) {
            s = format!("{s}: {t}");
        }
        cause = c.source();
    }
    s
}
