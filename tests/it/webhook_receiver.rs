//! The webhook tests' receiver: a real HTTP(S) server (hyper on tokio) that
//! records each POST, checks its signature independently of gomail, and
//! answers as its `Mode` says (fail, stall, refuse, 410).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// How the receiver answers.
#[derive(Clone)]
pub(crate) enum Mode {
    /// These statuses (with an optional Retry-After), then 200. [`HANG`]
    /// and [`CLOSE`] stand for no answer at all.
    Script(VecDeque<(u16, Option<u64>)>),
    /// Like `Script`, but each Retry-After is an HTTP-date that many
    /// seconds ahead (in whole seconds, so up to a second less).
    DatedScript(VecDeque<(u16, Option<u64>)>),
    /// Fails (500) this share of requests at random.
    Flaky(f64),
    /// Always this status.
    Fixed(u16),
    /// Waits this long, then answers 200.
    Slow(Duration),
    /// Waits this long, then answers this status.
    Late(Duration, u16),
    /// 503 for webhook ids ending in this, 200 for the others.
    FailIds(String),
}

/// In a script: read the request, then say nothing for [`HANG_FOR`] and close.
pub(crate) const HANG: u16 = 1;
/// In a script: read the request, then close the connection without an answer.
pub(crate) const CLOSE: u16 = 2;
/// Longer than the `webhook_timeout` that [`Receiver::config`] sets.
const HANG_FOR: Duration = Duration::from_secs(6);

#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) id: String,
    pub(crate) signature_ok: bool,
    pub(crate) authorization: Option<String>,
    pub(crate) body: serde_json::Value,
    pub(crate) raw_body: Vec<u8>,
    pub(crate) timestamp: String,
    pub(crate) signature: String,
    pub(crate) at: Instant,
    pub(crate) answered: u16,
    /// The moment a Retry-After HTTP-date it answered names.
    pub(crate) retry_at: Option<Instant>,
}

impl Received {
    /// Answered with a 2xx.
    pub(crate) fn delivered(&self) -> bool {
        (200..300).contains(&self.answered)
    }
}

pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    pub(crate) mode: Arc<Mutex<Mode>>,
    pub(crate) log: Arc<Mutex<Vec<Received>>>,
    /// Off: requests are logged without their bodies (for large backlogs).
    pub(crate) keep_bodies: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) _rt: tokio::runtime::Runtime,
}

/// Verifies a Standard Webhooks signature header, independently of gomail.
pub(crate) fn verify(secret: &str, id: &str, ts: &str, body: &[u8], header: &str) -> bool {
    let key = b64decode(secret.trim_start_matches("whsec_"));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    header.split(' ').any(|sig| {
        sig.strip_prefix("v1,")
            .map(b64decode)
            .is_some_and(|bytes| mac.clone().verify_slice(&bytes).is_ok())
    })
}

pub(crate) fn b64decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

pub(crate) fn receiver(mode: Mode) -> Receiver {
    receiver_with(mode, None)
}

/// A receiver that speaks HTTPS with `tls`.
pub(crate) fn receiver_with(mode: Mode, tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
    receiver_on("127.0.0.1:0", mode, tls)
}

/// A receiver on a given address (for one that comes back on its port).
pub(crate) fn receiver_on(
    at: &str,
    mode: Mode,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Receiver {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mode = Arc::new(Mutex::new(mode));
    let log = Arc::new(Mutex::new(Vec::new()));
    let listener = rt.block_on(tokio::net::TcpListener::bind(at)).unwrap();
    let addr = listener.local_addr().unwrap();
    let keep_bodies = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (m, l, k) = (mode.clone(), log.clone(), keep_bodies.clone());
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (m, l, k) = (m.clone(), l.clone(), k.clone());
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (m, l, k) = (m.clone(), l.clone(), k.clone());
                        async move {
                            let h = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string)
                            };
                            let (id, ts, sig, auth) = (
                                h("webhook-id"),
                                h("webhook-timestamp"),
                                h("webhook-signature"),
                                h("authorization"),
                            );
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let signature_ok = match (&id, &ts, &sig) {
                                (Some(i), Some(t), Some(s)) => verify(SECRET, i, t, &body, s),
                                _ => false,
                            };
                            let mut dated = false;
                            let (status, retry_after) = match &mut *m.lock().unwrap() {
                                Mode::Script(q) => q.pop_front().unwrap_or((200, None)),
                                Mode::DatedScript(q) => {
                                    dated = true;
                                    q.pop_front().unwrap_or((200, None))
                                }
                                Mode::Flaky(p) => {
                                    (if fastrand::f64() < *p { 500 } else { 200 }, None)
                                }
                                Mode::Fixed(s) | Mode::Late(_, s) => (*s, None),
                                Mode::Slow(_) => (200, None),
                                Mode::FailIds(suffix) => (
                                    if id.as_deref().unwrap_or("").ends_with(suffix.as_str()) {
                                        503
                                    } else {
                                        200
                                    },
                                    None,
                                ),
                            };
                            let slow = match &*m.lock().unwrap() {
                                Mode::Slow(d) | Mode::Late(d, _) => Some(*d),
                                _ => None,
                            };
                            if let Some(d) = slow {
                                tokio::time::sleep(d).await;
                            }
                            let (retry_after, retry_at) = match retry_after {
                                Some(s) if dated => {
                                    use chrono::Timelike;
                                    let now = chrono::Utc::now();
                                    let at = (now + chrono::Duration::seconds(s as i64))
                                        .with_nanosecond(0)
                                        .unwrap();
                                    let wait = (at - now).to_std().unwrap_or_default();
                                    (
                                        Some(at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()),
                                        Some(Instant::now() + wait),
                                    )
                                }
                                Some(s) => (Some(s.to_string()), None),
                                None => (None, None),
                            };
                            let body = if k.load(std::sync::atomic::Ordering::Relaxed) {
                                body
                            } else {
                                Bytes::new()
                            };
                            l.lock().unwrap().push(Received {
                                raw_body: body.to_vec(),
                                timestamp: ts.clone().unwrap_or_default(),
                                signature: sig.clone().unwrap_or_default(),
                                id: id.unwrap_or_default(),
                                signature_ok,
                                authorization: auth,
                                body: serde_json::from_slice(&body).unwrap_or_default(),
                                at: Instant::now(),
                                answered: status,
                                retry_at,
                            });
                            if status == HANG || status == CLOSE {
                                if status == HANG {
                                    tokio::time::sleep(HANG_FOR).await;
                                }
                                // A service error makes hyper drop the connection unanswered.
                                return Err(std::io::Error::other("no answer, by script"));
                            }
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(format!(
                                "answer {status}"
                            ))));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            if let Some(v) = retry_after {
                                resp.headers_mut().insert("retry-after", v.parse().unwrap());
                            }
                            Ok::<_, std::io::Error>(resp)
                        }
                    },
                );
                match tls {
                    Some(cfg) => {
                        let Ok(stream) = tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await
                        else {
                            return;
                        };
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    }
                    None => {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    }
                }
            });
        }
    });
    Receiver {
        addr,
        mode,
        log,
        keep_bodies,
        _rt: rt,
    }
}

impl Receiver {
    pub(crate) fn config(&self, extra: &str) -> String {
        format!(
            "api_endpoint: \"http://{}/hook\"\nwebhook_secret: \"{SECRET}\"\nbearer_token: \"tok-123\"\nwebhook_timeout: 2s\n{extra}",
            self.addr
        )
    }

    pub(crate) fn log(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `ids` have each been delivered (answered 2xx).
    pub(crate) fn wait_delivered(&self, ids: &[String]) {
        let t0 = Instant::now();
        loop {
            let ok: std::collections::HashSet<String> = self
                .log()
                .into_iter()
                .filter(|r| r.delivered())
                .map(|r| r.id)
                .collect();
            let missing: Vec<_> = ids.iter().filter(|i| !ok.contains(*i)).collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{} never delivered: {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
