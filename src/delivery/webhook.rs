//! The webhook client: one per shard, HTTP/1.1 with keep-alive, over plain
//! TCP or TLS (rustls with the system's roots plus `webhook_ca_file`).
//!
//! It sends one POST and reports what happened; retry policy, dead letters
//! and bookkeeping belong to the delivery engine.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use http_body_util::{BodyExt, Full};
use hyper::body::{Buf, Bytes};
use hyper::client::conn::http1::SendRequest;
use shards::http::HyperIo;

use super::sign::{signature_header_all, Secret, SigningKey};

/// The most of a receiver's answer gomail reads. Only its start is kept
/// ([`DETAIL_MAX`]); past this, gomail stops reading and closes the
/// connection instead of reusing it, so a receiver answering without end
/// costs neither memory nor time.
pub const MAX_ANSWER: usize = 64 * 1024;

/// How much of the receiver's answer is kept, for logs, dead letters and
/// the SMTP reply in sync mode.
pub const DETAIL_MAX: usize = 512;

/// Where and how to deliver.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `https` or not.
    pub tls: bool,
    /// Host name or address, as written in the URL.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Path and query.
    pub path: String,
}

impl Endpoint {
    /// Parses `http://host[:port]/path` or `https://…`.
    pub fn parse(url: &str) -> Option<Endpoint> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            (false, url.strip_prefix("http://")?)
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse().ok()?,
            ),
            _ => (authority, if tls { 443 } else { 80 }),
        };
        (!host.is_empty()).then(|| Endpoint {
            tls,
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
}

/// Why an attempt got no HTTP answer: what the retry policy decides on
/// (`retry::classify`), while [`Attempt::detail`] says it in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The host of `api_endpoint` did not resolve, refused or reset the
    /// connection, or closed it during the TLS handshake.
    Connect,
    /// No complete answer within `webhook_timeout`.
    Timeout,
    /// TLS failed: the receiver's certificate is not trusted (see
    /// `webhook_ca_file`), is not valid for the host in `api_endpoint`, or
    /// the handshake was refused. Retrying does not fix it.
    Tls,
    /// The connection broke or HTTP went wrong after it was set up.
    Protocol,
}

impl Failure {
    /// Its name in dead letters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Tls => "tls",
            Failure::Protocol => "protocol",
        }
    }
}

/// A failure and its words, on the way up to [`Attempt`].
#[derive(Debug)]
struct Failed(Failure, String);

impl Failed {
    fn connect(detail: String) -> Failed {
        Failed(Failure::Connect, detail)
    }

    fn protocol(detail: String) -> Failed {
        Failed(Failure::Protocol, detail)
    }
}

/// What one attempt produced: either a `status` or a `failure`.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// When it started (Unix milliseconds).
    pub at_ms: i64,
    /// The HTTP status, if the receiver answered.
    pub status: Option<u16>,
    /// Why there was no answer.
    pub failure: Option<Failure>,
    /// The wait `Retry-After` asked for (seconds, or an HTTP-date as seen
    /// when the answer came).
    pub retry_after: Option<Duration>,
    /// How long the attempt took.
    pub latency: Duration,
    /// Why there was no answer, or the start of the receiver's error body.
    pub detail: String,
}

/// A shard's webhook client.
pub struct Webhook {
    endpoint: Endpoint,
    bearer: Option<String>,
    secrets: Vec<Secret>,
    signing_key: Option<Arc<SigningKey>>,
    timeout: Duration,
    tls: Option<futures_rustls::TlsConnector>,
    idle: RefCell<Vec<SendRequest<Full<Bytes>>>>,
}

impl Webhook {
    /// A client for `endpoint`.
    pub fn new(
        endpoint: Endpoint,
        bearer: Option<String>,
        secrets: Vec<Secret>,
        signing_key: Option<Arc<SigningKey>>,
        timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Webhook {
        Webhook {
            endpoint,
            bearer,
            secrets,
            signing_key,
            timeout,
            tls: tls.map(futures_rustls::TlsConnector::from),
            idle: RefCell::new(Vec::new()),
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Failed> {
        let (host, port) = (self.endpoint.host.clone(), self.endpoint.port);
        // Name resolution is blocking in std: done off the shard's loop.
        let addrs: Vec<SocketAddr> = glommio::executor()
            .spawn_blocking(move || {
                use std::net::ToSocketAddrs;
                (host.as_str(), port).to_socket_addrs().map(|a| a.collect())
            })
            .await
            .map_err(|e| Failed::connect(format!("resolving {}: {e}", self.endpoint.host)))?;
        let addr = *addrs
            .first()
            .ok_or_else(|| Failed::connect("no address for the webhook host".into()))?;
        let tcp = glommio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| Failed::connect(format!("connecting to {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        // The timeout is applied around the whole exchange (see `post`).
        let builder = hyper::client::conn::http1::Builder::new();
        match &self.tls {
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from(self.endpoint.host.clone())
                    .map_err(|e| Failed(Failure::Tls, format!("TLS server name: {e}")))?;
                let stream = connector.connect(name, tcp).await.map_err(|e| {
                    Failed(
                        handshake_failure(&e),
                        format!("TLS handshake with {addr}: {e}"),
                    )
                })?;
                start_connection(builder, stream).await
            }
            None => start_connection(builder, tcp).await,
        }
    }

    /// POSTs `body` once, signed, with `id` as `webhook-id`.
    pub async fn post(&self, id: &str, body: Bytes) -> Attempt {
        let started = Instant::now();
        let at_ms = chrono::Utc::now().timestamp_millis();
        let outcome = future::or(self.exchange(id, body), async {
            glommio::timer::sleep(self.timeout).await;
            Err(Failed(
                Failure::Timeout,
                format!("no answer within {:?}", self.timeout),
            ))
        })
        .await;
        let latency = started.elapsed();
        match outcome {
            Ok((status, retry_after, detail)) => Attempt {
                at_ms,
                status: Some(status),
                failure: None,
                retry_after,
                latency,
                detail,
            },
            Err(Failed(failure, detail)) => Attempt {
                at_ms,
                status: None,
                failure: Some(failure),
                retry_after: None,
                latency,
                detail,
            },
        }
    }

    async fn exchange(
        &self,
        id: &str,
        body: Bytes,
    ) -> Result<(u16, Option<Duration>, String), Failed> {
        let reused = loop {
            let candidate = self.idle.borrow_mut().pop();
            match candidate {
                Some(s) if !s.is_closed() => break Some(s),
                Some(_) => continue,
                None => break None,
            }
        };
        let mut sender = match reused {
            Some(s) => s,
            None => self.connect().await?,
        };
        future::poll_fn(|cx| sender.poll_ready(cx))
            .await
            .map_err(|e| Failed::protocol(format!("connection: {e}")))?;
        let ts = chrono::Utc::now().timestamp();
        let mut req = hyper::Request::post(self.endpoint.path.as_str())
            .header("host", self.host_header())
            .header("content-type", "application/json")
            .header("user-agent", concat!("gomail/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", id)
            .header("webhook-timestamp", ts)
            .header("x-request-id", id);
        if !self.secrets.is_empty() || self.signing_key.is_some() {
            req = req.header(
                "webhook-signature",
                signature_header_all(&self.secrets, self.signing_key.as_deref(), id, ts, &body),
            );
        }
        if let Some(token) = &self.bearer {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| Failed::protocol(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| Failed::protocol(format!("request: {e}")))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| super::retry::parse_retry_after(v, chrono::Utc::now()));
        let (kept, whole) = read_answer(resp.into_body(), MAX_ANSWER, DETAIL_MAX).await;
        let detail = String::from_utf8_lossy(&kept).into_owned();
        // An answer read only in part (too long, or broken) leaves the
        // connection mid-message: it is dropped, not reused.
        if whole && !sender.is_closed() {
            self.idle.borrow_mut().push(sender);
        }
        Ok((status, retry_after, detail))
    }

    fn host_header(&self) -> String {
        let default = if self.endpoint.tls { 443 } else { 80 };
        if self.endpoint.port == default {
            self.endpoint.host.clone()
        } else {
            format!("{}:{}", self.endpoint.host, self.endpoint.port)
        }
    }
}

/// Reads an answer's body up to `limit` bytes and keeps its first `keep`.
/// The flag is true when the body ended within the limit; false when it
/// was longer (reading stopped there) or broke.
async fn read_answer<B>(mut body: B, limit: usize, keep: usize) -> (Vec<u8>, bool)
where
    B: hyper::body::Body + Unpin,
{
    let mut kept = Vec::new();
    let mut read = 0usize;
    loop {
        let Some(frame) = body.frame().await else {
            return (kept, true);
        };
        let Ok(frame) = frame else {
            return (kept, false);
        };
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers
        };
        read = read.saturating_add(data.remaining());
        while kept.len() < keep && data.has_remaining() {
            let chunk = data.chunk();
            let n = chunk.len().min(keep - kept.len());
            kept.extend_from_slice(&chunk[..n]);
            data.advance(n);
        }
        if read > limit {
            return (kept, false);
        }
    }
}

/// Runs the HTTP/1.1 handshake on `io` and drives the connection on the
/// shard in the background.
async fn start_connection<T>(
    builder: hyper::client::conn::http1::Builder,
    io: T,
) -> Result<SendRequest<Full<Bytes>>, Failed>
where
    T: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    let (sender, conn) = builder
        .handshake(HyperIo(io))
        .await
        .map_err(|e| Failed::protocol(e.to_string()))?;
    glommio::spawn_local(async move {
        let _ = conn.await;
    })
    .detach();
    Ok(sender)
}

/// What a failed TLS handshake was. rustls's own errors (an untrusted or
/// expired certificate, a name it is not valid for, an alert from the
/// receiver) come wrapped in the `io::Error`; any other error is the
/// connection's (reset, closed mid-handshake) and is worth another try.
fn handshake_failure(e: &std::io::Error) -> Failure {
    if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
        Failure::Tls
    } else {
        Failure::Connect
    }
}

/// The TLS client configuration for HTTPS webhooks: the system's roots,
/// plus the certificates in `ca_file` if given.
pub fn tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("webhook_ca_file {}: {e}", path.display()))?;
        for c in certs {
            let c = c.map_err(|e| format!("webhook_ca_file {}: {e}", path.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("webhook_ca_file {}: {e}", path.display()))?;
        }
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("http://127.0.0.1:8080/hook?x=1").unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.path.as_str()),
            (false, "127.0.0.1", 8080, "/hook?x=1")
        );
        let e = Endpoint::parse("https://app.example/webhook").unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.path.as_str()),
            (true, "app.example", 443, "/webhook")
        );
        let e = Endpoint::parse("http://[::1]:9000").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("::1", 9000, "/")
        );
        assert!(Endpoint::parse("ftp://x/").is_none());
        assert!(Endpoint::parse("http://:80/").is_none());
    }

    /// A body of `frames` frames of 1,000 bytes that counts the bytes
    /// taken from it.
    fn counted_body(
        frames: usize,
        taken: &std::rc::Rc<std::cell::Cell<usize>>,
    ) -> impl hyper::body::Body<Data = Bytes, Error = std::io::Error> + Unpin {
        use futures_lite::StreamExt;
        let taken = taken.clone();
        let frames = futures_lite::stream::repeat_with(move || {
            taken.set(taken.get() + 1000);
            Ok(hyper::body::Frame::data(Bytes::from_static(&[b'x'; 1000])))
        })
        .take(frames);
        http_body_util::StreamBody::new(frames)
    }

    #[test]
    fn a_long_answer_is_read_only_up_to_the_limit() {
        let taken = std::rc::Rc::new(std::cell::Cell::new(0));
        // 10 MB answered: gomail reads one frame past 64 KiB and stops.
        let (kept, whole) = future::block_on(read_answer(
            counted_body(10_000, &taken),
            MAX_ANSWER,
            DETAIL_MAX,
        ));
        assert!(!whole);
        assert_eq!(kept, vec![b'x'; DETAIL_MAX]);
        assert!(
            taken.get() <= MAX_ANSWER + 1000,
            "read {} bytes",
            taken.get()
        );
        // An answer within the limit is read to its end.
        let taken = std::rc::Rc::new(std::cell::Cell::new(0));
        let (kept, whole) = future::block_on(read_answer(
            counted_body(65, &taken),
            MAX_ANSWER,
            DETAIL_MAX,
        ));
        assert!(whole);
        assert_eq!((kept.len(), taken.get()), (DETAIL_MAX, 65_000));
        let (kept, whole) = future::block_on(read_answer(
            Full::new(Bytes::from_static(b"answer 503")),
            MAX_ANSWER,
            DETAIL_MAX,
        ));
        assert!(whole);
        assert_eq!(kept, b"answer 503");
    }

    #[test]
    fn handshake_errors_from_rustls_are_tls_and_others_are_the_connections() {
        use std::io::{Error, ErrorKind};
        let untrusted = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert_eq!(
            handshake_failure(&Error::new(ErrorKind::InvalidData, untrusted)),
            Failure::Tls
        );
        let wrong_name =
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName);
        assert_eq!(
            handshake_failure(&Error::new(ErrorKind::InvalidData, wrong_name)),
            Failure::Tls
        );
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure);
        assert_eq!(
            handshake_failure(&Error::new(ErrorKind::InvalidData, alert)),
            Failure::Tls
        );
        assert_eq!(
            handshake_failure(&Error::from(ErrorKind::ConnectionReset)),
            Failure::Connect
        );
        assert_eq!(
            handshake_failure(&Error::new(ErrorKind::UnexpectedEof, "tls handshake eof")),
            Failure::Connect
        );
    }
}
