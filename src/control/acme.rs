//! ACME in the control plane: the renewal loop, `GET /api/v1/ssl` and
//! `POST /api/v1/ssl/renew` (both behind `admin_token`), and the
//! certificate metrics. A new certificate is swapped onto every shard
//! without a restart (`Reloader::refresh_certificates`).
//!
//! Attempts run one at a time, as tasks of their own: an API request only
//! starts one (`202` with its number) and the command line follows it with
//! `GET /api/v1/ssl?wait=N` (which answers when it is finished), so `http_timeouts.handler`
//! never cuts an issuance short.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use super::{error, invalid, json, json_body, Answer, Ctx};
use crate::reload::Reloader;
use crate::tls::acme::{self, ari, certinfo, store, AcmeSettings, Outcome, Request as AcmeRequest};

/// The loop looks again at least this often (a certificate replaced by
/// hand, an account made by `ssl setup` while the server ran, the CA's
/// renewal information).
const RECHECK: Duration = Duration::from_secs(6 * 3600);

/// Attempt results kept for `GET /api/v1/ssl?wait=N`.
const RESULTS_KEPT: usize = 16;

/// How long the CA's renewal window (ARI) is believed before it is asked
/// again.
const ARI_REFRESH: i64 = 6 * 3600;

/// The CA's last answer about one certificate's renewal window.
struct AriSeen {
    id: String,
    window: Option<(i64, i64)>,
    at: i64,
}

/// After renewing on its own, the loop waits at least this long before it
/// renews again, even if the new certificate is already due (an
/// `acme_renew_before` longer than the CA's lifetime).
const MIN_GAP: i64 = 3600;

/// The control plane's ACME state.
pub(super) struct AcmeService {
    reloader: Arc<Reloader>,
    /// One attempt at a time.
    running: tokio::sync::Mutex<()>,
    /// Numbers given to attempts, and the last one finished.
    started: AtomicU64,
    finished: tokio::sync::watch::Sender<u64>,
    /// The results of the last attempts (JSON for the API), newest last.
    results: Mutex<std::collections::VecDeque<serde_json::Value>>,
    /// When the loop plans to renew (Unix seconds).
    next: Mutex<Option<i64>>,
    successes: AtomicU64,
    failures: AtomicU64,
    /// Wakes the loop (an attempt finished: plan again).
    wake: tokio::sync::Notify,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl AcmeService {
    pub(super) fn new(reloader: Arc<Reloader>) -> Arc<AcmeService> {
        Arc::new(AcmeService {
            reloader,
            running: tokio::sync::Mutex::new(()),
            started: AtomicU64::new(0),
            finished: tokio::sync::watch::Sender::new(0),
            results: Mutex::new(std::collections::VecDeque::new()),
            next: Mutex::new(None),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
        })
    }

    fn settings(&self) -> AcmeSettings {
        AcmeSettings::from_config(&self.reloader.current())
    }

    /// Starts an attempt as its own task; its number.
    pub(super) fn start(self: &Arc<Self>, req: AcmeRequest, why: &'static str) -> u64 {
        let n = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let me = self.clone();
        tokio::spawn(async move {
            me.attempt(n, req, why).await;
        });
        n
    }

    /// One attempt: issue (unless not due), record, swap, count, log.
    async fn attempt(&self, n: u64, req: AcmeRequest, why: &'static str) -> Option<Outcome> {
        let _one = self.running.lock().await;
        let s = self.settings();
        let had_valid = s
            .current()
            .is_some_and(|c| !c.self_signed && c.not_after > now());
        let result = acme::issue(&s, &req).await;
        let failures = acme::record(&s, &result);
        let answer = match &result {
            Ok(Outcome::NotDue { current, due }) => serde_json::json!({
                "attempt": n, "result": "not_due", "names": current.names,
                "due": acme::status::rfc3339(*due),
            }),
            Ok(Outcome::Issued(info)) => {
                let reloader = self.reloader.clone();
                let swapped =
                    tokio::task::spawn_blocking(move || reloader.refresh_certificates(why)).await;
                let swapped = match swapped {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                // Counted once the shards serve it (tests wait on this).
                self.successes.fetch_add(1, Ordering::Relaxed);
                serde_json::json!({
                    "attempt": n, "result": "issued", "names": info.names,
                    "not_after": acme::status::rfc3339(info.not_after),
                    "swapped": swapped.is_ok(), "swap_error": swapped.err(),
                })
            }
            Err(e) => {
                if had_valid {
                    tracing::warn!(event = "acme_renewal_failed", source = why, failures, error = %e, "ACME renewal failed; the current certificate stays");
                } else {
                    tracing::warn!(event = "acme_renewal_failed", source = why, failures, error = %e, "ACME issuance failed and there is no valid certificate: serving the self-signed fallback until it succeeds");
                }
                // Counted after the log line (tests wait on the count).
                self.failures.fetch_add(1, Ordering::Relaxed);
                serde_json::json!({ "attempt": n, "result": "failed", "error": e.to_string() })
            }
        };
        {
            let mut results = self.results.lock().expect("acme results");
            if results.len() == RESULTS_KEPT {
                results.pop_front();
            }
            results.push_back(answer);
        }
        self.finished.send_modify(|f| *f += 1);
        self.wake.notify_one();
        result.ok()
    }

    /// The result of attempt `n`, if it is finished (and among the last
    /// [`RESULTS_KEPT`]).
    fn result_of(&self, n: u64) -> Option<serde_json::Value> {
        self.results
            .lock()
            .expect("acme results")
            .iter()
            .find(|r| r["attempt"] == n)
            .cloned()
    }

    /// When the loop should next try, given the state on disk; `None`: no
    /// account, nothing to renew.
    fn plan(
        &self,
        s: &AcmeSettings,
        own_success: Option<i64>,
        tried: bool,
        ari_due: Option<i64>,
    ) -> Option<i64> {
        if !s.has_account() {
            return None;
        }
        let state = store::load_state(&s.data_dir);
        let mut at = ari_due.unwrap_or_else(|| s.due_at(now()));
        let valid = s
            .current()
            .is_some_and(|c| !c.self_signed && c.not_after > now());
        // Started without a valid certificate (serving the self-signed
        // fallback): the first try is at once, whatever failed before.
        if state.failures > 0 && (tried || valid) {
            let retry = certinfo::retry_delay(state.failures).as_secs() as i64;
            at = at.max(state.last_attempt.unwrap_or(0) + retry);
        }
        if let Some(t) = own_success {
            at = at.max(t + MIN_GAP);
        }
        Some(at)
    }

    /// When the CA's renewal window (ARI) says the certificate in place
    /// is due; `None` when the CA offers no ARI or the certificate is not
    /// one to renew (the two-thirds rule then decides).
    async fn ari_due(&self, s: &AcmeSettings, seen: &mut Option<AriSeen>) -> Option<i64> {
        let c = s
            .current()
            .filter(|c| !c.self_signed && c.covers(&s.domains))?;
        let id = c.ari_id.clone()?;
        let fresh = seen
            .as_ref()
            .is_some_and(|k| k.id == id && now() - k.at < ARI_REFRESH);
        if !fresh {
            let asked = tokio::time::timeout(
                Duration::from_secs(60),
                ari::suggested_window(&s.directory, s.ca_file.as_deref(), &id),
            )
            .await;
            let window = match asked {
                Ok(Ok(w)) => w,
                Ok(Err(e)) => {
                    tracing::info!(error = %e, "no ACME renewal information; renewing at two thirds of the lifetime");
                    None
                }
                Err(_) => None,
            };
            *seen = Some(AriSeen {
                id,
                window,
                at: now(),
            });
        }
        let (start, end) = seen.as_ref()?.window?;
        let mut at = ari::pick(start, end, c.jitter);
        if !s.renew_before.is_zero() {
            let window = i64::try_from(s.renew_before.as_secs()).unwrap_or(i64::MAX);
            at = at.min(c.not_after.saturating_sub(window));
        }
        Some(at)
    }

    /// The renewal loop: sleeps until the plan says, renews, plans again.
    pub(super) async fn run_loop(self: Arc<Self>) {
        let mut own_success: Option<i64> = None;
        let mut tried = false;
        let mut ari_seen = None;
        loop {
            let s = self.settings();
            let ari_due = if s.has_account() {
                self.ari_due(&s, &mut ari_seen).await
            } else {
                None
            };
            let plan = self.plan(&s, own_success, tried, ari_due);
            *self.next.lock().expect("acme next") = plan;
            let mut state = store::load_state(&s.data_dir);
            if state.next_renewal != plan {
                state.next_renewal = plan;
                let _ = store::save_state(&s.data_dir, &state);
            }
            let wait = match plan {
                Some(at) => Duration::from_secs((at - now()).max(0) as u64).min(RECHECK),
                None => RECHECK,
            };
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.wake.notified() => {}
                }
                continue;
            }
            tracing::info!(event = "acme_renewal_due", names = %s.domains.join(","), "certificate due: renewing");
            let n = self.started.fetch_add(1, Ordering::SeqCst) + 1;
            tried = true;
            if let Some(Outcome::Issued(_)) = self
                .attempt(
                    n,
                    // The CA's window may say "due" before the two-thirds rule.
                    AcmeRequest {
                        force: ari_due.is_some(),
                        setup: None,
                    },
                    "renewal loop",
                )
                .await
            {
                own_success = Some(now());
            }
        }
    }

    /// The metrics lines.
    pub(super) fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let s = self.settings();
        // The certificate served by default: ACME's (or tls_cert_file),
        // else the self-signed fallback.
        let served = s
            .current()
            .or_else(|| certinfo::CertInfo::read(&s.data_dir.join("tls/self-signed.crt")).ok());
        if let Some(c) = served {
            let _ = writeln!(out, "# HELP gomail_tls_certificate_expiry_seconds When the default TLS certificate expires (Unix seconds).\n# TYPE gomail_tls_certificate_expiry_seconds gauge\ngomail_tls_certificate_expiry_seconds {}", c.not_after);
        }
        let _ = writeln!(out, "# HELP gomail_acme_renewals_total ACME issuances that went to the CA, by result.\n# TYPE gomail_acme_renewals_total counter\ngomail_acme_renewals_total{{result=\"success\"}} {}\ngomail_acme_renewals_total{{result=\"failure\"}} {}",
            self.successes.load(Ordering::Relaxed), self.failures.load(Ordering::Relaxed));
    }
}

/// `GET /api/v1/ssl` and `POST /api/v1/ssl/renew`.
pub(super) async fn route(req: Request<Incoming>, ctx: &Ctx, svc: &Arc<AcmeService>) -> Answer {
    let path = req.uri().path().to_string();
    match (path.as_str(), req.method().clone()) {
        ("/api/v1/ssl", Method::GET) => {
            // `?wait=N`: answer once attempt N is finished, or shortly
            // before http_timeouts.handler, whichever comes first.
            let wait = match req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("wait=")))
                .map(|n| n.parse::<u64>())
            {
                None => None,
                Some(Ok(n)) => Some(n),
                Some(Err(_)) => {
                    return invalid("wait", "`wait` must be an attempt number (a whole number)")
                }
            };
            if let Some(n) = wait {
                let limit = ctx
                    .cfg()
                    .handler_timeout
                    .saturating_sub(Duration::from_secs(2))
                    .clamp(Duration::from_millis(100), Duration::from_secs(25));
                let mut rx = svc.finished.subscribe();
                let _ =
                    tokio::time::timeout(limit, rx.wait_for(|_| svc.result_of(n).is_some())).await;
            }
            let s = svc.settings();
            let mut state = store::load_state(&s.data_dir);
            state.next_renewal = *svc.next.lock().expect("acme next");
            let mut v = acme::status::status_json(&s, &state, now());
            v["attempts_started"] = svc.started.load(Ordering::SeqCst).into();
            v["attempts_finished"] = (*svc.finished.borrow()).into();
            let last = svc.results.lock().expect("acme results").back().cloned();
            v["last_result"] = last.unwrap_or_default();
            if let Some(n) = wait {
                v["result"] = svc.result_of(n).unwrap_or_default();
            }
            json(StatusCode::OK, v)
        }
        ("/api/v1/ssl", _) => super::method_not_allowed("GET"),
        ("/api/v1/ssl/renew", Method::POST) => {
            let v = match json_body(req, ctx).await {
                Ok(v) => v,
                Err(r) => return *r,
            };
            // A field of the wrong type is an error, not a default: a
            // script saying "force": "yes" must not get a renewal that
            // only happens if due.
            let flag = |k: &str| match &v[k] {
                serde_json::Value::Null => Ok(false),
                serde_json::Value::Bool(b) => Ok(*b),
                _ => Err(k.to_string()),
            };
            let (force, agree_tos) = match (flag("force"), flag("agree_tos")) {
                (Ok(f), Ok(a)) => (f, a),
                (Err(k), _) | (_, Err(k)) => {
                    return invalid(&k, &format!("`{k}` must be true or false"))
                }
            };
            if !(v["email"].is_null() || v["email"].is_string()) {
                return invalid("email", "`email` must be a string");
            }
            let setup = v["email"].as_str().map(|email| acme::Setup {
                email: email.to_string(),
                agree_tos,
            });
            let why = if setup.is_some() {
                "ssl setup"
            } else {
                "ssl renew"
            };
            let n = svc.start(AcmeRequest { force, setup }, why);
            json(
                StatusCode::ACCEPTED,
                serde_json::json!({ "attempt": n, "status": "started" }),
            )
        }
        ("/api/v1/ssl/renew", _) => super::method_not_allowed("POST"),
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    }
}
