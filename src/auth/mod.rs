//! Inline sender authentication: SPF at MAIL FROM, DKIM and DMARC after the
//! message, on the shard that holds the connection, while the client waits.
//!
//! Results become an `Authentication-Results` header (RFC 8601, authserv-id
//! `mail_hostname`), GoMail's `authentication` JSON object, and, when the
//! enforcement settings say so, the SMTP reply. A DNS failure that a
//! decision depends on is a temporary error (`451`), never a silent pass.
//! This module never touches a socket: the driver calls it and turns its
//! verdicts into session completions.

pub mod dkim_keys;
pub mod dns;
mod dnsbl;
mod json;
// Reachable crate-wide for the message check in `crate::fuzzing`.
pub(crate) mod limits;

pub use limits::DKIM_MAX_SIGNATURES;

use std::net::IpAddr;
use std::sync::Arc;

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput,
    DmarcResult, IprevOutput, MessageAuthenticator, SpfOutput, SpfResult,
};

use crate::config::Config;
use crate::smtp::Reply;
use crate::spool::RawJson;
use dns::ShardDns;
use limits::limit_signatures;

/// `spf_enforcement`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfEnforcement {
    /// Check and record only.
    None,
    /// Record failures and accept.
    Soft,
    /// Refuse SPF `fail` with `550 5.7.23`.
    Strict,
}

/// `dmarc_enforcement`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcEnforcement {
    /// Monitor only.
    None,
    /// Apply the published policy with the domain's own alignment modes.
    Relaxed,
    /// Apply the published policy, requiring exact domain alignment.
    Strict,
}

/// What to check and what to enforce (from the configuration).
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `spf_enabled`.
    pub spf: bool,
    /// `spf_enforcement`.
    pub spf_enforcement: SpfEnforcement,
    /// `dkim_enabled`.
    pub dkim: bool,
    /// `dmarc_enabled`.
    pub dmarc: bool,
    /// `dmarc_enforcement`.
    pub dmarc_enforcement: DmarcEnforcement,
    /// `mail_hostname`: the authserv-id.
    pub hostname: String,
    /// `dnsbl`: zones and weights (negative: allow-list).
    pub dnsbl: Vec<(String, i64)>,
    /// `dnsbl_threshold`: refuse at or above this score.
    pub dnsbl_threshold: i64,
    /// `dnsbl_timeout`: the most a connection waits for blocklists.
    pub dnsbl_timeout: std::time::Duration,
}

impl AuthSettings {
    /// Reads the settings from the configuration.
    pub fn from_config(cfg: &Config) -> AuthSettings {
        AuthSettings {
            spf: cfg.flag("spf_enabled") && cfg.flag("validation.check_spf"),
            spf_enforcement: match cfg.text("spf_enforcement").as_deref() {
                Some("strict") => SpfEnforcement::Strict,
                Some("soft") => SpfEnforcement::Soft,
                _ => SpfEnforcement::None,
            },
            dkim: cfg.flag("dkim_enabled") && cfg.flag("validation.check_dkim"),
            dmarc: cfg.flag("dmarc_enabled"),
            dmarc_enforcement: match cfg.text("dmarc_enforcement").as_deref() {
                Some("strict") => DmarcEnforcement::Strict,
                Some("relaxed") => DmarcEnforcement::Relaxed,
                _ => DmarcEnforcement::None,
            },
            hostname: cfg.mail_hostname.clone(),
            dnsbl: cfg
                .list("dnsbl")
                .iter()
                .filter_map(|e| crate::config::parse_dnsbl(e))
                .collect(),
            dnsbl_threshold: i64::try_from(cfg.number("dnsbl_threshold")).unwrap_or(i64::MAX),
            dnsbl_timeout: cfg.duration("dnsbl_timeout"),
        }
    }

    /// True when any check is on (so a DNS resolver is needed).
    pub fn any(&self) -> bool {
        self.spf || self.dkim || self.dmarc || !self.dnsbl.is_empty()
    }
}

/// The result of the MAIL FROM check, kept for the rest of the transaction.
#[derive(Debug, Clone)]
pub struct SenderCheck {
    ip: IpAddr,
    helo: String,
    mail_from: String,
    spf: Option<SpfOutput>,
    /// The reply that refuses MAIL FROM, if enforcement says so.
    pub refusal: Option<Reply>,
}

/// What the checks after DATA decided.
#[derive(Debug, Clone)]
pub struct MessageVerdict {
    /// The reply that refuses the message, if enforcement says so.
    pub refusal: Option<Reply>,
    /// DMARC `p=quarantine` applied: accepted and marked.
    pub quarantine: bool,
    /// `spf_enforcement: soft` and SPF failed (`fail` or `softfail`): the
    /// message is accepted and marked (header and JSON), the SPF result word.
    pub spf_failed: Option<&'static str>,
    /// The `Authentication-Results` header (CRLF-terminated) to prepend.
    pub header: String,
    /// GoMail's `authentication` object, serialized.
    pub json: RawJson,
    /// The results behind GoMail's per-result counters.
    pub tally: Tally,
}

/// One message's results as GoMail's counters name them
/// (`gomail_spf_pass_total`, …): `None` where the check did not run or its
/// result has no counter (temperror, permerror).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// `pass`, `fail`, `softfail`, `neutral` or `none`.
    pub spf: Option<&'static str>,
    /// `pass` (a signature passed), `fail` (none did) or `none` (unsigned).
    pub dkim: Option<&'static str>,
    /// `pass`, `fail` or `none`.
    pub dmarc: Option<&'static str>,
}

impl Tally {
    /// The counters this message adds to, as `"<check>_<result>"`.
    pub fn keys(&self) -> impl Iterator<Item = &'static str> {
        [
            self.spf.map(|r| match r {
                "pass" => "spf_pass",
                "fail" => "spf_fail",
                "softfail" => "spf_softfail",
                "neutral" => "spf_neutral",
                _ => "spf_none",
            }),
            self.dkim.map(|r| match r {
                "pass" => "dkim_pass",
                "fail" => "dkim_fail",
                _ => "dkim_none",
            }),
            self.dmarc.map(|r| match r {
                "pass" => "dmarc_pass",
                "fail" => "dmarc_fail",
                _ => "dmarc_none",
            }),
        ]
        .into_iter()
        .flatten()
    }

    /// Every counter name, in exposition order.
    pub const KEYS: [&'static str; 11] = [
        "spf_pass",
        "spf_fail",
        "spf_softfail",
        "spf_neutral",
        "spf_none",
        "dkim_pass",
        "dkim_fail",
        "dkim_none",
        "dmarc_pass",
        "dmarc_fail",
        "dmarc_none",
    ];
}

/// One shard's checker: its own resolver sockets and caches.
pub struct ShardAuth {
    resolver: MessageAuthenticator,
    dns: ShardDns,
    /// Replaced by a reload ([`ShardAuth::use_settings`]).
    settings: std::cell::RefCell<Arc<AuthSettings>>,
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

impl ShardAuth {
    /// A checker using `resolver` (one per shard) and fresh caches.
    pub fn new(resolver: MessageAuthenticator, settings: Arc<AuthSettings>) -> ShardAuth {
        ShardAuth {
            resolver,
            dns: ShardDns::default(),
            settings: std::cell::RefCell::new(settings),
        }
    }

    /// The settings in force.
    pub(crate) fn settings(&self) -> Arc<AuthSettings> {
        self.settings.borrow().clone()
    }

    /// Takes `settings` (a reload) unless they are the ones in force.
    pub fn use_settings(&self, settings: &Arc<AuthSettings>) {
        if !Arc::ptr_eq(&self.settings.borrow(), settings) {
            *self.settings.borrow_mut() = settings.clone();
        }
    }

    /// DNS cache (hits, misses) on this shard.
    pub fn cache_counts(&self) -> (u64, u64) {
        self.dns.counts()
    }

    /// How long this shard's DNS lookups took (those behind cache misses).
    pub fn dns_lookup_latency(&self) -> crate::server::LatencyHistogram {
        self.dns.lookup_latency()
    }

    /// SPF for the MAIL FROM identity (the HELO identity for `<>`).
    /// A sender check that did not run (mail injected through the API
    /// without a client address): SPF counts as not evaluated.
    pub fn unchecked_sender(ip: IpAddr, helo: &str, mail_from: &str) -> SenderCheck {
        SenderCheck {
            ip,
            helo: helo.to_string(),
            mail_from: mail_from.to_string(),
            spf: None,
            refusal: None,
        }
    }

    pub async fn check_sender(&self, ip: IpAddr, helo: &str, mail_from: &str) -> SenderCheck {
        let mut check = SenderCheck {
            ip,
            helo: helo.to_string(),
            mail_from: mail_from.to_string(),
            spf: None,
            refusal: None,
        };
        let settings = self.settings();
        if !settings.spf {
            return check;
        }
        let host = settings.hostname.as_str();
        let params = if mail_from.is_empty() {
            SpfParameters::verify_ehlo(ip, helo, host)
        } else {
            SpfParameters::verify_mail_from(ip, helo, host, mail_from)
        };
        let out = self.resolver.verify_spf(self.dns.params(params)).await;
        if settings.spf_enforcement == SpfEnforcement::Strict {
            check.refusal = match out.result() {
                SpfResult::Fail => Some(Reply::new(
                    550,
                    "5.7.23",
                    format!(
                        "SPF validation failed: {} does not permit {ip} to send",
                        out.domain()
                    ),
                )),
                SpfResult::TempError => Some(Reply::new(
                    451,
                    "4.7.24",
                    format!(
                        "SPF validation error (DNS) for {}, try again later",
                        out.domain()
                    ),
                )),
                _ => None,
            };
        }
        check.spf = Some(out);
        check
    }

    /// iprev (RFC 8601 section 3): forward-confirmed reverse DNS of the
    /// client. It depends only on the address, so the driver asks once per
    /// connection and passes the answer to every `verify_message`.
    pub async fn iprev(&self, ip: IpAddr) -> IprevOutput {
        self.resolver.verify_iprev(self.dns.params(ip)).await
    }

    /// DKIM and DMARC for a complete message, then enforcement; `iprev` is
    /// the connection's answer from [`ShardAuth::iprev`].
    pub async fn verify_message(
        &self,
        message: &[u8],
        sender: &SenderCheck,
        iprev: &IprevOutput,
    ) -> MessageVerdict {
        let settings = self.settings();
        let s = &*settings;
        let helo_domain = sender.helo.as_str();
        let mail_from_domain = match domain_of(&sender.mail_from) {
            "" => helo_domain,
            d => d,
        };
        // DMARC needs an SPF result; "none" when SPF did not run.
        let spf_none;
        let spf = match &sender.spf {
            Some(out) => out,
            None => {
                spf_none = SpfOutput::new(mail_from_domain.to_string());
                &spf_none
            }
        };
        // Parsed (and its body hashed per signature) only for DKIM and DMARC.
        let limited = (s.dkim || s.dmarc).then(|| limit_signatures(message));
        let parsed = limited.as_deref().and_then(AuthenticatedMessage::parse);
        let from_header = parsed
            .as_ref()
            .map(|m| m.from().to_string())
            .unwrap_or_default();
        let from_domain = domain_of(&from_header).to_ascii_lowercase();
        // Every author the reader sees, and their distinct domains: DMARC
        // judges the From domain, and a message naming several (two From
        // fields, or one with two addresses) or none is one mail-auth does
        // not judge at all (RFC 7489 section 6.6.1 leaves it to us).
        let from_all = parsed
            .as_ref()
            .map(|m| m.from.join(", "))
            .unwrap_or_default();
        let mut authors: Vec<String> = parsed
            .as_ref()
            .map(|m| {
                m.from
                    .iter()
                    .map(|a| domain_of(a).trim_end_matches('.').to_ascii_lowercase())
                    .filter(|d| !d.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        authors.sort();
        authors.dedup();
        let dkim: Vec<DkimOutput<'_>> = match &parsed {
            Some(m) => self.resolver.verify_dkim(self.dns.params(m)).await,
            None => Vec::new(),
        };
        // ARC (RFC 8617) and iprev (RFC 8601 section 3) are reported, never enforced.
        let arc = match (&parsed, s.dkim) {
            (Some(m), true) => Some(arc_result(
                self.resolver.verify_arc(self.dns.params(m)).await,
            )),
            _ => None,
        };
        let dmarc: Option<DmarcOutput> = match (&parsed, s.dmarc) {
            (Some(m), true) => Some(
                self.resolver
                    .verify_dmarc(self.dns.params(DmarcParameters::new(
                        m,
                        &dkim,
                        mail_from_domain,
                        spf,
                    )))
                    .await,
            ),
            _ => None,
        };
        if let Some(d) = dmarc.as_ref().filter(|d| !is_temp(&d.result())) {
            self.dns
                .learn_dmarc_absences(&self.resolver, d.domain())
                .await;
        }

        let mut ar = AuthenticationResults::new(&s.hostname);
        if s.dkim {
            ar = ar.with_dkim_results(&dkim, &from_header);
        }
        if let Some(out) = &sender.spf {
            ar = if sender.mail_from.is_empty() {
                ar.with_spf_ehlo_result(out, sender.ip, helo_domain)
            } else {
                ar.with_spf_mailfrom_result(out, sender.ip, &sender.mail_from, helo_domain)
            };
        }
        if let Some(d) = &dmarc {
            ar = ar.with_dmarc_result(d);
        }
        if let Some(a) = &arc {
            ar = ar.with_arc_result(a, sender.ip);
        }
        ar = ar.with_iprev_result(iprev, sender.ip);
        let header = ar.to_header();

        let enforced = match (&parsed, s.dmarc, s.dmarc_enforcement) {
            (Some(_), true, DmarcEnforcement::Strict) if authors.len() != 1 => Enforced {
                refusal: Some(Reply::new(
                    550,
                    "5.7.1",
                    format!(
                        "Message rejected: DMARC needs exactly one author domain in From, this message has {}",
                        if authors.is_empty() { "none".to_string() } else { authors.join(", ") }
                    ),
                )),
                quarantine: false,
                result: "fail",
            },
            (Some(m), true, DmarcEnforcement::Relaxed) if authors.len() > 1 => {
                // Judged as if each author had sent it alone: refused when
                // any of them publishes p=reject and fails.
                let mut verdict = Enforced {
                    result: "none",
                    ..Enforced::default()
                };
                for author in &authors {
                    let mut alone = m.clone();
                    alone.from = vec![format!("author@{author}")];
                    let d = self
                        .resolver
                        .verify_dmarc(self.dns.params(DmarcParameters::new(
                            &alone,
                            &dkim,
                            mail_from_domain,
                            spf,
                        )))
                        .await;
                    let one = self.enforce_dmarc(Some(&d), &dkim, spf, author);
                    verdict.quarantine |= one.quarantine;
                    // The worst of the authors' results.
                    if one.result == "fail" || (one.result == "pass" && verdict.result == "none") {
                        verdict.result = one.result;
                    }
                    if one.refusal.is_some() {
                        verdict.refusal = one.refusal;
                        break;
                    }
                }
                verdict
            }
            _ => self.enforce_dmarc(dmarc.as_ref(), &dkim, spf, &from_domain),
        };
        let spf_failed = (s.spf_enforcement == SpfEnforcement::Soft)
            .then_some(tally_spf(sender))
            .flatten()
            .filter(|w| matches!(*w, "fail" | "softfail"));
        let tally = Tally {
            spf: tally_spf(sender),
            dkim: s.dkim.then(|| {
                if dkim.is_empty() {
                    "none"
                } else if dkim
                    .iter()
                    .any(|o| o.result() == &mail_auth::DkimResult::Pass)
                {
                    "pass"
                } else {
                    "fail"
                }
            }),
            dmarc: dmarc
                .as_ref()
                .map(|d| json::dmarc_word(&d.result()))
                .filter(|w| !w.ends_with("error")),
        };
        // Audit events, at info under their own target so that an
        // operator can turn them down (GOMAIL_LOG=gomail::auth_events=warn).
        for (check, failed) in [
            ("spf_failed", matches!(tally.spf, Some("fail" | "softfail"))),
            ("dkim_failed", tally.dkim == Some("fail")),
            ("dmarc_failed", tally.dmarc == Some("fail")),
        ] {
            if failed {
                tracing::info!(target: "gomail::auth_events", event = check, domain = %mail_from_domain, from_domain = %from_domain, ip = %sender.ip, spf = tally.spf.unwrap_or(""), dkim = tally.dkim.unwrap_or(""), dmarc = tally.dmarc.unwrap_or(""), "authentication check failed");
            }
        }
        let json = self.json(
            sender,
            &dkim,
            dmarc.as_ref(),
            arc.as_ref(),
            iprev,
            &from_all,
            &from_domain,
            &header,
            &enforced,
            spf_failed.is_some(),
        );
        MessageVerdict {
            refusal: enforced.refusal,
            quarantine: enforced.quarantine,
            spf_failed,
            header,
            json,
            tally,
        }
    }

    /// Applies `dmarc_enforcement` to a DMARC result.
    fn enforce_dmarc(
        &self,
        dmarc: Option<&DmarcOutput>,
        dkim: &[DkimOutput<'_>],
        spf: &SpfOutput,
        from_domain: &str,
    ) -> Enforced {
        let Some(d) = dmarc else {
            return Enforced::default();
        };
        let rfc = json::dmarc_word(&d.result());
        let temp = || Enforced {
            refusal: Some(dmarc_temp(d.domain())),
            quarantine: false,
            result: "temperror",
        };
        let passed = match self.settings().dmarc_enforcement {
            DmarcEnforcement::None => {
                return Enforced {
                    result: rfc,
                    ..Enforced::default()
                }
            }
            DmarcEnforcement::Relaxed => match d.result() {
                DmarcResult::Pass | DmarcResult::None | DmarcResult::PermError(_) => true,
                DmarcResult::TempError(_) => return temp(),
                DmarcResult::Fail(_) => false,
            },
            DmarcEnforcement::Strict => {
                if d.dmarc_record().is_none() {
                    true
                } else if matches!(d.result(), DmarcResult::TempError(_)) {
                    return temp();
                } else {
                    // Exact domain match, whatever adkim/aspf say.
                    let spf_ok = spf.result() == SpfResult::Pass
                        && spf.domain().eq_ignore_ascii_case(from_domain);
                    let dkim_ok = dkim.iter().any(|o| {
                        o.result() == &DkimResult::Pass
                            && o.signature()
                                .is_some_and(|sig| sig.d.eq_ignore_ascii_case(from_domain))
                    });
                    spf_ok || dkim_ok
                }
            }
        };
        let result = match (passed, d.dmarc_record().is_some()) {
            (true, false) => rfc,
            (true, true) => "pass",
            (false, _) => "fail",
        };
        if passed {
            return Enforced {
                result,
                ..Enforced::default()
            };
        }
        match d.policy() {
            Policy::Reject => Enforced {
                refusal: Some(Reply::new(
                    550,
                    "5.7.1",
                    format!(
                        "Message rejected: DMARC policy of {} (p=reject) is not met",
                        d.domain()
                    ),
                )),
                quarantine: false,
                result,
            },
            Policy::Quarantine => Enforced {
                refusal: None,
                quarantine: true,
                result,
            },
            _ => Enforced {
                result,
                ..Enforced::default()
            },
        }
    }
}

/// What `dmarc_enforcement` did with a message.
#[derive(Debug, Clone, Default)]
pub(crate) struct Enforced {
    /// The refusal, when the policy says reject.
    pub(crate) refusal: Option<Reply>,
    /// `p=quarantine` applied.
    pub(crate) quarantine: bool,
    /// The DMARC result under the alignment that was applied (`strict`
    /// enforcement can fail what the RFC's relaxed alignment passes).
    pub(crate) result: &'static str,
}

impl Enforced {
    /// `none`, `quarantine` or `reject`.
    pub(crate) fn action(&self) -> &'static str {
        match (&self.refusal, self.quarantine) {
            (Some(r), _) if r.code >= 500 => "reject",
            (_, true) => "quarantine",
            _ => "none",
        }
    }
}

/// RFC 8617 knows three chain results: none, pass and fail. mail-auth words
/// some broken chains as `neutral` (an ARC-Message-Signature whose body hash
/// does not match) or `permerror` (a malformed set); both are a chain that
/// does not validate, so they are reported as `fail`, with mail-auth's
/// reason kept in the header comment. A DNS failure stays `temperror`.
fn arc_result(out: ArcOutput<'_>) -> ArcOutput<'_> {
    match out.result() {
        DkimResult::Neutral(e) | DkimResult::PermError(e) => {
            let e = e.clone();
            out.with_result(DkimResult::Fail(e))
        }
        _ => out,
    }
}

/// The SPF result word for the counters (`None`: not run, or an error).
fn tally_spf(sender: &SenderCheck) -> Option<&'static str> {
    sender
        .spf
        .as_ref()
        .map(|o| json::spf_word(o.result()))
        .filter(|w| !w.ends_with("error"))
}

fn is_temp(r: &DmarcResult) -> bool {
    matches!(r, DmarcResult::TempError(_))
}

fn dmarc_temp(domain: &str) -> Reply {
    Reply::new(
        451,
        "4.7.5",
        format!("Temporary error evaluating DMARC for {domain} (DNS), try again later"),
    )
}
