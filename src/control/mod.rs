//! The control plane: HTTP on its own thread (a current-thread tokio
//! runtime with hyper), never on the per-message path.
//!
//! Serves `GET /health` and `GET /metrics` (Prometheus) on `api_host:port`,
//! and the metrics alone on `api_host:metrics_port` when that is set. It
//! reads shard counters by message ([`StatsHandle`]); it never touches a
//! shard's state. Behind `admin_token`: `POST /queue/retry` and the ban
//! endpoints (`GET|POST /api/v1/bans`, `DELETE /api/v1/bans/<ip>`), and
//! ACME (`GET /api/v1/ssl`, `POST /api/v1/ssl/renew`; acme.rs).
//!
//! Each connection runs under `http_timeouts` (read, write, idle: io.rs;
//! handler: [`handle`]); stopping is graceful for `http_timeouts.shutdown`.
//!
//! Every response carries a request id (`X-Request-ID`, taken from the
//! client when sane), the security headers and the client's rate-limit
//! figures; every error is GoMail's JSON shape with the request id.

mod acme;
mod bans;
mod inbound;
mod io;
mod token;
use token::{refuse_unauthorized, refuse_unless};
pub mod metrics;
pub mod queue;
pub mod ratelimit;
pub mod request;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{select, Either};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

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
    /// `http_timeouts.read`: time allowed for a request's headers (from
    /// their first octet), and for its body.
    pub read_timeout: Duration,
    /// `http_timeouts.write`: time a write may wait for the client to take
    /// any of it; then the connection is closed.
    pub write_timeout: Duration,
    /// `http_timeouts.idle`: time a keep-alive connection may wait for its
    /// next request with nothing moving; then it is closed.
    pub idle_timeout: Duration,
    /// `http_timeouts.handler`: time allowed for the server's answer.
    pub handler_timeout: Duration,
    /// `http_timeouts.shutdown`: time requests in flight at
    /// [`ControlPlane::stop`] have to finish before they are cut.
    pub shutdown_timeout: Duration,
    /// `admin_token`: required by the management endpoints. Unset: they
    /// answer 403.
    pub admin_token: Option<String>,
    /// `rate_limit_per_minute` and `rate_limit_burst`, per client.
    pub rate_limit: (u32, u32),
    /// `trusted_proxies`: peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: crate::admission::Networks,
    /// `bearer_token`: accepted (with `admin_token`) by `POST /mail/inbound`,
    /// as GoMail's API accepted it.
    pub bearer_token: Option<String>,
    /// Our domains: `/mail/inbound` recipients must be in one.
    pub domains: Vec<String>,
    /// `max_message_size`.
    pub max_message_size: u64,
    /// `data_dir` (dead letters for `/queue/retry`).
    pub data_dir: std::path::PathBuf,
    /// `trusted_networks`: bans of these are refused (they would not apply);
    /// a `/mail/inbound` `client_ip` in them exempts its sender from
    /// `reject_non_fqdn_sender`.
    pub trusted: crate::admission::Networks,
    /// `validation.reject_invalid_domains`, for `/mail/inbound` senders.
    pub reject_non_fqdn_sender: bool,
}

/// The file in `data_dir` where a running server writes its API address,
/// so that the command line reaches it even after `port` or `api_host` was
/// changed in the file (they apply at the next start).
pub fn api_address_file(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("api.addr")
}

/// Writes `addr` as the running server's API address (see
/// [`api_address_file`]).
pub fn advertise(data_dir: &std::path::Path, addr: SocketAddr) -> std::io::Result<()> {
    crate::fsutil::replace_file(
        &api_address_file(data_dir),
        addr.to_string().as_bytes(),
        0o644,
    )
}

/// The API address a server running on `data_dir` wrote, if any.
pub fn advertised(data_dir: &std::path::Path) -> Option<SocketAddr> {
    std::fs::read_to_string(api_address_file(data_dir))
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl ControlConfig {
    /// The control plane's settings in `cfg`.
    pub fn from_config(cfg: &crate::config::Config) -> ControlConfig {
        let clamp = |k| cfg.number(k).min(u64::from(u32::MAX)) as u32;
        ControlConfig {
            api: cfg.api_listen,
            metrics: cfg.metrics_listen,
            metrics_enabled: cfg.metrics_enabled,
            metrics_path: cfg.metrics_path.clone(),
            read_timeout: cfg.http_read_timeout,
            write_timeout: cfg.duration("http_timeouts.write"),
            idle_timeout: cfg.duration("http_timeouts.idle"),
            handler_timeout: cfg.duration("http_timeouts.handler"),
            shutdown_timeout: cfg.duration("http_timeouts.shutdown"),
            admin_token: cfg.text("admin_token"),
            rate_limit: (clamp("rate_limit_per_minute"), clamp("rate_limit_burst")),
            trusted_proxies: cfg.trusted_proxies.clone(),
            bearer_token: cfg.text("bearer_token"),
            domains: cfg.domains(),
            max_message_size: cfg.max_message_size,
            data_dir: cfg.data_dir.clone(),
            trusted: cfg.trusted_networks.clone(),
            reject_non_fqdn_sender: cfg.flag("validation.reject_invalid_domains"),
        }
    }
}

struct Ctx {
    /// Replaced by a reload; read once per use ([`Ctx::cfg`]).
    settings: shards::Snapshot<ControlConfig>,
    /// Applies `POST /api/v1/reload` (none: the endpoint answers 503).
    reloader: Option<Arc<crate::reload::Reloader>>,
    /// ACME issuance and renewal (with a reloader: it swaps certificates).
    acme: Option<Arc<acme::AcmeService>>,
    stats: StatsHandle,
    bans: crate::admission::service::Bans,
    limiter: std::sync::Mutex<ratelimit::Limiter>,
    http: std::sync::Mutex<metrics::HttpStats>,
    /// Spreads `/mail/inbound` over the shards.
    next_shard: std::sync::atomic::AtomicUsize,
    started: Instant,
}

impl Ctx {
    /// The settings in force.
    fn cfg(&self) -> Arc<ControlConfig> {
        self.settings.load()
    }
}

/// The response type of every handler.
type Answer = Response<Full<Bytes>>;

tokio::task_local! {
    /// The request id of the request being handled, for error bodies.
    static REQUEST_ID: String;
}

/// The running control plane.
pub struct ControlPlane {
    addrs: Vec<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlPlane {
    /// Binds the listeners (errors name the address) and starts serving.
    /// `settings` may be replaced while it runs (a reload), except for the
    /// addresses and `data_dir`; `reloader` serves `POST /api/v1/reload`.
    pub fn start(
        settings: shards::Snapshot<ControlConfig>,
        stats: StatsHandle,
        bans: crate::admission::service::Bans,
        reloader: Option<Arc<crate::reload::Reloader>>,
    ) -> std::io::Result<ControlPlane> {
        let cfg = settings.load();
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
            http: std::sync::Mutex::new(metrics::HttpStats::default()),
            next_shard: std::sync::atomic::AtomicUsize::new(0),
            limiter: std::sync::Mutex::new(ratelimit::Limiter::new(
                cfg.rate_limit.0,
                cfg.rate_limit.1,
            )),
            settings,
            acme: reloader.clone().map(acme::AcmeService::new),
            reloader,
            stats,
            bans,
            started: Instant::now(),
        });
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                rt.block_on(async move {
                    // Every listener and connection holds a receiver: the
                    // signal to stop, and the count of what is still open.
                    let (stopping, watching) = watch::channel(false);
                    let mut tasks = Vec::new();
                    for (l, metrics_only) in listeners {
                        let ctx = ctx.clone();
                        let watching = watching.clone();
                        tasks.push(tokio::spawn(async move {
                            match tokio::net::TcpListener::from_std(l) {
                                Ok(l) => serve(l, ctx, metrics_only, watching).await,
                                Err(e) => {
                                    tracing::error!(error = %e, "control plane listener failed")
                                }
                            }
                        }));
                    }
                    drop(watching);
                    let renewals = ctx.acme.clone().map(|a| tokio::spawn(a.run_loop()));
                    let _ = stop_rx.await;
                    if let Some(r) = renewals {
                        r.abort();
                    }
                    stopping.send_replace(true);
                    let grace = ctx.cfg().shutdown_timeout;
                    // The listeners close first: nothing new is accepted
                    // while the requests in flight finish.
                    for t in tasks {
                        let _ = t.await;
                    }
                    if tokio::time::timeout(grace, stopping.closed()).await.is_err() {
                        tracing::warn!(
                            connections = stopping.receiver_count(),
                            grace_s = grace.as_secs(),
                            "control plane: connections still busy after http_timeouts.shutdown are cut"
                        );
                    }
                });
                // Dropping the runtime drops whatever connection is left.
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

    /// Stops accepting at once, lets the requests in flight finish for up
    /// to `http_timeouts.shutdown` (idle connections close at once), cuts
    /// what is left, and joins the thread.
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

/// Accepts connections until the control plane stops.
async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<Ctx>,
    metrics_only: bool,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        let accepted = {
            let stop = pin!(stopping.wait_for(|s| *s));
            match select(pin!(listener.accept()), stop).await {
                Either::Left((r, _)) => r,
                Either::Right(_) => return,
            }
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control plane accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(connection(
            stream,
            peer,
            ctx.clone(),
            metrics_only,
            stopping.clone(),
        ));
    }
}

/// One HTTP/1 connection, under `http_timeouts.read`, `.write` and `.idle`
/// (io.rs). When the control plane stops, hyper's graceful shutdown lets a
/// request in flight finish and closes the connection after its answer; a
/// connection with no request closes at once.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    ctx: Arc<Ctx>,
    metrics_only: bool,
    mut stopping: watch::Receiver<bool>,
) {
    let timeouts = io::Timeouts {
        read: ctx.cfg().read_timeout,
        write: ctx.cfg().write_timeout,
        idle: ctx.cfg().idle_timeout,
    };
    let activity = io::Activity::new(tokio::time::Instant::now());
    let stream = io::TimedStream::new(stream, peer, timeouts, activity.clone());
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        let busy = activity.begin();
        async move {
            let _busy = busy;
            Ok::<_, Infallible>(handle(req, &ctx, peer, metrics_only).await)
        }
    });
    // The request head's deadline is kept by io.rs: hyper's own would also
    // run between requests, where `idle` applies instead.
    let mut conn = pin!(hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service));
    let stopped = matches!(
        select(conn.as_mut(), pin!(stopping.wait_for(|s| *s))).await,
        Either::Right(_)
    );
    if stopped {
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}

/// The five security headers every response carries.
const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("x-xss-protection", "1; mode=block"),
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    ("content-security-policy", "default-src 'none'"),
];

/// One request from the socket to the answer: request id, client address,
/// rate limit, the handler under `http_timeouts.handler`, then the headers
/// every answer carries.
async fn handle(req: Request<Incoming>, ctx: &Ctx, peer: SocketAddr, metrics_only: bool) -> Answer {
    let started = Instant::now();
    // The settings this request is handled under (a reload may replace them).
    let cfg = ctx.cfg();
    let method = metrics::method_label(req.method());
    let endpoint = metrics::endpoint_label(req.uri().path(), &cfg.metrics_path);
    let id = request::request_id(req.headers().get("x-request-id").map(|v| v.as_bytes()));
    // Every X-Forwarded-For line, in order: a proxy may add a line of its
    // own instead of extending the client's.
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let forwarded = (!forwarded.is_empty()).then(|| forwarded.join(","));
    let client = request::client_ip(peer.ip(), forwarded.as_deref(), &cfg.trusted_proxies);
    let path = req.uri().path().to_string();
    // Health checks and scrapes are counted against nobody's bucket.
    let looks = path == "/health" || path == cfg.metrics_path;
    let verdict = {
        let mut limiter = ctx.limiter.lock().expect("limiter");
        let (per_minute, burst) = cfg.rate_limit;
        limiter.configure(per_minute, burst);
        limiter.check(crate::admission::client_key(client), Instant::now(), !looks)
    };
    let call = Call {
        client,
        endpoint: path.clone(),
    };
    let mut answer = REQUEST_ID
        .scope(id.clone(), async {
            if !verdict.allowed {
                let secs = verdict.retry_after.as_secs().max(1);
                tracing::warn!(event = "rate_limit_exceeded", ip = %client, request_id = %id, endpoint = %path, limit = verdict.limit, "API client over rate_limit_per_minute");
                let mut r = error_with(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    &format!("too many requests; retry in {secs}s"),
                    serde_json::json!({ "retry_after": secs }),
                );
                r.headers_mut().insert("retry-after", secs.into());
                return r;
            }
            match tokio::time::timeout(cfg.handler_timeout, route(req, ctx, &call, metrics_only)).await {
                Ok(r) => r,
                Err(_) => error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    "the request was not answered within http_timeouts.handler",
                ),
            }
        })
        .await;
    let h = answer.headers_mut();
    for (k, v) in SECURITY_HEADERS {
        h.insert(k, hyper::header::HeaderValue::from_static(v));
    }
    if let Ok(v) = hyper::header::HeaderValue::from_str(&id) {
        h.insert("x-request-id", v);
    }
    if verdict.limit > 0 {
        let reset = chrono::Utc::now().timestamp() as u64 + verdict.reset.as_secs();
        h.insert("x-ratelimit-limit", verdict.limit.into());
        h.insert("x-ratelimit-remaining", verdict.remaining.into());
        h.insert("x-ratelimit-reset", reset.into());
    }
    ctx.http.lock().expect("http stats").record(
        method,
        endpoint,
        answer.status().as_u16(),
        started.elapsed(),
    );
    answer
}

/// Who made a request, for the audit log.
struct Call {
    client: std::net::IpAddr,
    endpoint: String,
}

fn json(status: StatusCode, body: serde_json::Value) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("static header"),
    );
    r
}

/// GoMail's error shape: `{"error","message","details","request_id"}`.
fn error_with(status: StatusCode, kind: &str, message: &str, details: serde_json::Value) -> Answer {
    let id = REQUEST_ID.try_with(String::clone).unwrap_or_default();
    json(
        status,
        serde_json::json!({ "error": kind, "message": message, "details": details, "request_id": id }),
    )
}

fn error(status: StatusCode, kind: &str, message: &str) -> Answer {
    error_with(status, kind, message, serde_json::json!({}))
}

/// A 400 `validation_error` naming the body's or query's `field`.
fn invalid(field: &str, message: &str) -> Answer {
    error_with(
        StatusCode::BAD_REQUEST,
        "validation_error",
        message,
        serde_json::json!({ "field": field }),
    )
}

/// 405 with the `Allow` header RFC 9110 asks for.
fn method_not_allowed(allow: &'static str) -> Answer {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("use {allow}"),
    );
    r.headers_mut()
        .insert("allow", hyper::header::HeaderValue::from_static(allow));
    r
}

/// Reads a JSON request body of at most 64 KiB within `http_timeouts.read`.
async fn json_body(req: Request<Incoming>, ctx: &Ctx) -> Result<serde_json::Value, Box<Answer>> {
    json_body_within(req, ctx, 64 * 1024).await
}

/// Reads a JSON request body of at most `limit` octets within
/// `http_timeouts.read`.
async fn json_body_within(
    req: Request<Incoming>,
    ctx: &Ctx,
    limit: usize,
) -> Result<serde_json::Value, Box<Answer>> {
    use http_body_util::BodyExt;
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("request body over {limit} octets"),
        )));
    }
    let collect = http_body_util::Limited::new(req.into_body(), limit).collect();
    let Ok(read) = tokio::time::timeout(ctx.cfg().read_timeout, collect).await else {
        return Err(Box::new(error(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the request body did not arrive within http_timeouts.read",
        )));
    };
    let Ok(body) = read else {
        return Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("request body over {limit} octets"),
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
async fn queue_retry(req: Request<Incoming>, ctx: &Ctx, call: &Call) -> Answer {
    if let Some(r) = refuse_unauthorized(&req, ctx, call) {
        return r;
    }
    let v = match json_body(req, ctx).await {
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
    let paths = queue::select(&ctx.cfg().data_dir, &sel);
    let matched = paths.len();
    let queued = ctx.stats.redeliver(paths).await;
    json(
        StatusCode::OK,
        serde_json::json!({ "matched": matched, "queued": queued }),
    )
}

/// `POST /api/v1/reload`: read the configuration again and apply it.
async fn reload(ctx: &Ctx) -> Answer {
    let Some(reloader) = ctx.reloader.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "this process cannot reload its configuration",
        );
    };
    // Reading files and building TLS: off the event loop.
    match tokio::task::spawn_blocking(move || reloader.reload("API")).await {
        Ok(Ok(done)) => json(
            StatusCode::OK,
            serde_json::json!({
                "status": "success",
                "message": if done.restart_required.is_empty() {
                    "configuration reloaded"
                } else {
                    "configuration reloaded; some settings take effect only after a restart"
                },
                "changed": done.changed,
                "applied": done.applied,
                "restart_required": done.restart_required,
                "request_id": REQUEST_ID.try_with(String::clone).unwrap_or_default(),
            }),
        ),
        Ok(Err(e)) => error(
            StatusCode::BAD_REQUEST,
            "validation_error",
            &format!("configuration not reloaded, nothing changed: {e}"),
        ),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the reload failed",
        ),
    }
}

async fn route(req: Request<Incoming>, ctx: &Ctx, call: &Call, metrics_only: bool) -> Answer {
    let path = req.uri().path();
    if !metrics_only && (path == "/api/v1/bans" || path.starts_with("/api/v1/bans/")) {
        if let Some(r) = refuse_unauthorized(&req, ctx, call) {
            return r;
        }
        return bans::route(req, ctx).await;
    }
    if !metrics_only && (path == "/api/v1/ssl" || path.starts_with("/api/v1/ssl/")) {
        if let Some(r) = refuse_unauthorized(&req, ctx, call) {
            return r;
        }
        let Some(svc) = ctx.acme.clone() else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "this process does not manage certificates",
            );
        };
        return acme::route(req, ctx, &svc).await;
    }
    if !metrics_only && path == "/mail/inbound" {
        if req.method() != Method::POST {
            return method_not_allowed("POST");
        }
        let cfg = ctx.cfg();
        let accepted = [cfg.bearer_token.as_deref(), cfg.admin_token.as_deref()];
        if let Some(r) = refuse_unless(
            &req,
            ctx,
            call,
            &accepted,
            "set bearer_token to inject mail through the API",
        ) {
            return r;
        }
        return inbound::post(req, ctx).await;
    }
    if !metrics_only && path == "/api/v1/reload" {
        if req.method() != Method::POST {
            return method_not_allowed("POST");
        }
        if let Some(r) = refuse_unauthorized(&req, ctx, call) {
            return r;
        }
        return reload(ctx).await;
    }
    if !metrics_only && path == "/queue/retry" {
        if req.method() != Method::POST {
            return method_not_allowed("POST");
        }
        return queue_retry(req, ctx, call).await;
    }
    let is_metrics = ctx.cfg().metrics_enabled && path == ctx.cfg().metrics_path;
    let is_health = !metrics_only && path == "/health";
    if !is_metrics && !is_health {
        return error(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return method_not_allowed("GET, HEAD");
    }
    let answers = ctx.stats.ask().await;
    let mut problems: Vec<String> = answers
        .iter()
        .enumerate()
        .filter(|(_, a)| a.is_none())
        .map(|(i, _)| format!("shard {i} is not answering"))
        .collect();
    problems.extend(
        answers
            .iter()
            .flatten()
            .filter(|s| s.store_failing == 1)
            .map(|s| {
                format!(
            "shard {}: the JSON store cannot be written ({}); new mail is deferred with 452 4.3.1",
            s.shard, s.store_error
        )
            }),
    );
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
        let (active, made, dropped) = ctx.bans.counts();
        let mut text = metrics::render(
            &stats,
            uptime,
            metrics::BanCounts {
                active,
                made,
                dropped,
            },
        );
        ctx.http.lock().expect("http stats").render(&mut text);
        if let Some(a) = &ctx.acme {
            a.render(&mut text);
        }
        let mut r = Response::new(Full::new(Bytes::from(text)));
        r.headers_mut().insert(
            "content-type",
            "text/plain; version=0.0.4; charset=utf-8"
                .parse()
                .expect("static header"),
        );
        return r;
    }
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if problems.is_empty() {
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
            serde_json::json!({ "status": "unhealthy", "timestamp": now, "errors": problems }),
        )
    }
}
