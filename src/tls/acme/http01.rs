//! HTTP-01: `GET /.well-known/acme-challenge/<token>` answered on
//! `acme_http_listen` for the length of one order only (the port is bound
//! when the order starts and closed when it ends, so nothing listens on
//! port 80 between renewals). Everything else is 404.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};

use super::AcmeError;

/// Connections served at once; the CA needs a handful.
const MAX_CONNECTIONS: usize = 64;

/// How long one connection may take in all (a CA fetch takes milliseconds).
const CONNECTION_DEADLINE: Duration = Duration::from_secs(20);

const PREFIX: &str = "/.well-known/acme-challenge/";

/// The running responder; dropping it closes the listener.
pub(crate) struct Responder {
    tokens: Arc<Mutex<HashMap<String, String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Responder {
    /// Binds `addr` and starts answering.
    pub(crate) async fn start(addr: SocketAddr) -> Result<Responder, AcmeError> {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            AcmeError::Settings(format!(
                "acme_http_listen: cannot listen on {addr} for the http-01 challenge: {e}"
            ))
        })?;
        let tokens: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let served = tokens.clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue; // over the bound: dropped, the CA retries
                };
                let tokens = served.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let service = hyper::service::service_fn(move |req| {
                        let answer = answer(&tokens, req.method(), req.uri().path());
                        async move { Ok::<_, Infallible>(answer) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = tokio::time::timeout(CONNECTION_DEADLINE, conn).await;
                });
            }
        });
        Ok(Responder { tokens, task })
    }

    /// Answers `token` with `key_authorization` from now on.
    pub(crate) fn add(&self, token: &str, key_authorization: &str) {
        self.tokens
            .lock()
            .expect("http-01 tokens")
            .insert(token.to_string(), key_authorization.to_string());
    }
}

fn answer(
    tokens: &Mutex<HashMap<String, String>>,
    method: &hyper::Method,
    path: &str,
) -> hyper::Response<Full<Bytes>> {
    let found = (method == hyper::Method::GET || method == hyper::Method::HEAD)
        .then(|| path.strip_prefix(PREFIX))
        .flatten()
        .and_then(|t| tokens.lock().expect("http-01 tokens").get(t).cloned());
    let mut r = match found {
        Some(ka) => hyper::Response::new(Full::new(Bytes::from(ka))),
        None => {
            let mut r = hyper::Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *r.status_mut() = hyper::StatusCode::NOT_FOUND;
            r
        }
    };
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    r
}
