//! The control plane: HTTP on its own thread (a current-thread tokio
//! runtime with hyper), never on the per-message path.
//!
//! Serves `GET /health` and `GET /metrics` (Prometheus) on `api_host:port`,
//! and the metrics alone on `api_host:metrics_port` when that is set. It
//! reads shard counters by message ([`StatsHandle`]); it never touches a
//! shard's state. Behind the bearer token: `POST /queue/retry` and the
//! ban endpoints (`GET|POST /api/v1/bans`, `DELETE /api/v1/bans/<ip>`).

mod bans;
pub mod metrics;
pub mod queue;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::server::{ShardStats, StatsHandle};

/// Where and how the control plane listens.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// `api_host:port`: health and metrics.
    pub api: SocketAddr,
    /// `api_host:metrics_port`, when metrics are also served apart.
    pub metrics: Option<SocketAddr>,
    /// `metrics_enabled`.
    pub metrics_enabled: bool,
    /// `metrics_path`.
    pub metrics_path: String,
    /// `http_timeouts.read`: time allowed for a request's headers.
    pub read_timeout: Duration,
    /// `bearer_token`: required by the API's write endpoints.
    pub bearer_token: Option<String>,
    /// `data_dir` (dead letters for `/queue/retry`).
    pub data_dir: std::path::PathBuf,
    /// `trusted_networks`: bans of these are refused (they would not apply).
    pub trusted: crate::admission::Networks,
}

struct Ctx {
    cfg: ControlConfig,
    stats: StatsHandle,
    bans: crate::admission::service::Bans,
    started: Instant,
}

/// The running control plane.
pub struct ControlPlane {
    addrs: Vec<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlPlane {
    /// Binds the listeners (errors name the address) and starts serving.
    pub fn start(
        cfg: ControlConfig,
        stats: StatsHandle,
        bans: crate::admission::service::Bans,
    ) -> std::io::Result<ControlPlane> {
        let mut listeners = Vec::new();
        for (addr, metrics_only) in
            std::iter::once((cfg.api, false)).chain(cfg.metrics.map(|m| (m, true)))
        {
            let l = std::net::TcpListener::bind(addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr} (API): {e}"))
            })?;
            l.set_nonblocking(true)?;
            listeners.push((l, metrics_only));
        }
        let addrs = listeners
            .iter()
            .map(|(l, _)| l.local_addr())
            .collect::<std::io::Result<Vec<_>>>()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ctx = Arc::new(Ctx {
            cfg,
            stats,
            bans,
            started: Instant::now(),
        });
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                rt.block_on(async move {
                    let mut tasks = Vec::new();
                    for (l, metrics_only) in listeners {
                        let ctx = ctx.clone();
                        tasks.push(tokio::spawn(async move {
                            match tokio::net::TcpListener::from_std(l) {
                                Ok(l) => serve(l, ctx, metrics_only).await,
                                Err(e) => {
                                    tracing::error!(error = %e, "control plane listener failed")
                                }
                            }
                        }));
                    }
                    let _ = stop_rx.await;
                    for t in tasks {
                        t.abort();
                    }
                });
            })?;
        Ok(ControlPlane {
            addrs,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The bound addresses: the API first, then the metrics-only one.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops serving and joins the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn serve(listener: tokio::net::TcpListener, ctx: Arc<Ctx>, metrics_only: bool) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control plane accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        let read_timeout = ctx.cfg.read_timeout;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(route(req, &ctx, metrics_only).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(read_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("static header"),
    );
    r
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({ "error": kind, "message": message }),
    )
}

/// Checks `Authorization: Bearer <bearer_token>`; `Some(refusal)` when
/// the request may not go on.
fn refuse_unauthorized(req: &Request<Incoming>, ctx: &Ctx) -> Option<Response<Full<Bytes>>> {
    let Some(token) = ctx.cfg.bearer_token.as_deref() else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "set bearer_token to use the API",
        ));
    };
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Constant time: the comparison does not reveal where the token differs.
    if aws_lc_rs::constant_time::verify_slices_are_equal(presented.as_bytes(), token.as_bytes())
        .is_err()
    {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Invalid or missing bearer token",
        ));
    }
    None
}

/// Reads a JSON request body of at most 64 KiB.
async fn json_body(
    req: Request<Incoming>,
) -> Result<serde_json::Value, Box<Response<Full<Bytes>>>> {
    use http_body_util::BodyExt;
    let Ok(body) = http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
    else {
        return Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body over 64 KiB",
        )));
    };
    serde_json::from_slice(&body.to_bytes()).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "validation_error",
            &format!("body is not JSON: {e}"),
        ))
    })
}

/// `POST /queue/retry`: re-drive dead letters by id or time range.
async fn queue_retry(req: Request<Incoming>, ctx: &Ctx) -> Response<Full<Bytes>> {
    if let Some(r) = refuse_unauthorized(&req, ctx) {
        return r;
    }
    let v = match json_body(req).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let time = |k: &str| -> Result<Option<i64>, String> {
        match &v[k] {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::String(s) => queue::parse_time(s)
                .map(Some)
                .ok_or(format!("`{k}`: not RFC 3339 or Unix seconds")),
            serde_json::Value::Number(n) => n
                .as_i64()
                .map(Some)
                .ok_or(format!("`{k}`: not a whole number")),
            _ => Err(format!("`{k}`: expected a time")),
        }
    };
    let ids = match &v["ids"] {
        serde_json::Value::Null => Vec::new(),
        serde_json::Value::Array(a) if a.iter().all(|x| x.is_string()) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "validation_error",
                "`ids`: expected a list of queue ids",
            )
        }
    };
    let (since, until) = match (time("since"), time("until")) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, "validation_error", &e),
    };
    let sel = queue::Selection { ids, since, until };
    if sel.is_everything() && v["all"] != serde_json::Value::Bool(true) {
        return error(
            StatusCode::BAD_REQUEST,
            "validation_error",
            "give `ids`, `since`/`until`, or `\"all\": true`",
        );
    }
    let paths = queue::select(&ctx.cfg.data_dir, &sel);
    let matched = paths.len();
    let queued = ctx.stats.redeliver(paths).await;
    json(
        StatusCode::OK,
        serde_json::json!({ "matched": matched, "queued": queued }),
    )
}

async fn route(req: Request<Incoming>, ctx: &Ctx, metrics_only: bool) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !metrics_only && (path == "/api/v1/bans" || path.starts_with("/api/v1/bans/")) {
        if let Some(r) = refuse_unauthorized(&req, ctx) {
            return r;
        }
        return bans::route(req, ctx).await;
    }
    if !metrics_only && path == "/queue/retry" {
        if req.method() != Method::POST {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use POST",
            );
        }
        return queue_retry(req, ctx).await;
    }
    let is_metrics = ctx.cfg.metrics_enabled && path == ctx.cfg.metrics_path;
    let is_health = !metrics_only && path == "/health";
    if !is_metrics && !is_health {
        return error(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET",
        );
    }
    let answers = ctx.stats.ask().await;
    let silent: Vec<String> = answers
        .iter()
        .enumerate()
        .filter(|(_, a)| a.is_none())
        .map(|(i, _)| format!("shard {i} is not answering"))
        .collect();
    let stats: Vec<ShardStats> = answers
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            a.unwrap_or(ShardStats {
                shard: i,
                ..ShardStats::default()
            })
        })
        .collect();
    let uptime = ctx.started.elapsed().as_secs();
    if is_metrics {
        let mut r = Response::new(Full::new(Bytes::from(metrics::render(&stats, uptime, {
            let (active, made) = ctx.bans.counts();
            metrics::BanCounts { active, made }
        }))));
        r.headers_mut().insert(
            "content-type",
            "text/plain; version=0.0.4; charset=utf-8"
                .parse()
                .expect("static header"),
        );
        return r;
    }
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if silent.is_empty() {
        json(
            StatusCode::OK,
            serde_json::json!({
                "status": "healthy",
                "timestamp": now,
                "version": env!("CARGO_PKG_VERSION"),
                "uptime": uptime,
                "shards": stats.len(),
            }),
        )
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "unhealthy", "timestamp": now, "errors": silent }),
        )
    }
}
