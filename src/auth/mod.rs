//! Inline sender authentication: SPF at MAIL FROM, DKIM and DMARC after the
//! message, on the shard that holds the connection, while the client waits.
//!
//! Results become an `Authentication-Results` header (RFC 8601, authserv-id
//! `mail_hostname`), GoMail's `authentication` JSON object, and, when the
//! enforcement settings say so, the SMTP reply. A DNS failure that a
//! decision depends on is a temporary error (`451`), never a silent pass.
//! This module never touches a socket: the driver calls it and turns its
//! verdicts into session completions.

pub mod dns;

use std::cell::{Cell, RefCell};

use futures_util::StreamExt;
use std::net::IpAddr;
use std::sync::Arc;

use mail_auth::common::crypto::Algorithm;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::{Alignment, Policy};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput,
    DmarcResult, IprevOutput, IprevResult, MessageAuthenticator, ReceivedSpf, SpfOutput, SpfResult,
};
use serde::Serialize;

use crate::config::Config;
use crate::smtp::Reply;
use crate::spool::RawJson;
use dns::ShardDns;

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
            spf: cfg.flag("spf_enabled"),
            spf_enforcement: match cfg.text("spf_enforcement").as_deref() {
                Some("strict") => SpfEnforcement::Strict,
                Some("soft") => SpfEnforcement::Soft,
                _ => SpfEnforcement::None,
            },
            dkim: cfg.flag("dkim_enabled"),
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
    /// The `Authentication-Results` header (CRLF-terminated) to prepend.
    pub header: String,
    /// GoMail's `authentication` object, serialized.
    pub json: RawJson,
}

/// One shard's checker: its own resolver sockets and caches.
pub struct ShardAuth {
    resolver: MessageAuthenticator,
    dns: ShardDns,
    settings: Arc<AuthSettings>,
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dkim_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

fn dmarc_word(r: &DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

fn policy_word(p: Policy) -> &'static str {
    match p {
        Policy::Reject => "reject",
        Policy::Quarantine => "quarantine",
        _ => "none",
    }
}

impl ShardAuth {
    /// A checker using `resolver` (one per shard) and fresh caches.
    pub fn new(resolver: MessageAuthenticator, settings: Arc<AuthSettings>) -> ShardAuth {
        ShardAuth {
            resolver,
            dns: ShardDns::default(),
            settings,
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

    /// DNS blocklists, postscreen-style: each zone that lists `ip` (an A
    /// record in 127.0.0.0/8 for the reversed address) adds its weight;
    /// at or above `dnsbl_threshold` the client is refused. All zones are
    /// asked at once, and `dnsbl_timeout` bounds the whole check: a zone
    /// that has not answered by then counts as not listing the client, so a
    /// slow zone neither holds the connection longer nor hides the answers
    /// of the others. Once the score is at the threshold and every
    /// allow-list zone has answered, the zones still out cannot change the
    /// outcome and are not waited for. Returns the zones that listed it (in
    /// configured order) when the score reaches the threshold.
    pub async fn dnsbl(&self, ip: IpAddr) -> Option<Vec<String>> {
        let s = &*self.settings;
        if s.dnsbl.is_empty() {
            return None;
        }
        let reversed = reverse_name(ip);
        let score = Cell::new(0);
        let hits = RefCell::new(Vec::new());
        let mut checks: futures_util::stream::FuturesUnordered<_> = s
            .dnsbl
            .iter()
            .enumerate()
            .map(|(i, (zone, weight))| {
                let reversed = &reversed;
                async move {
                    let name = format!("{reversed}.{zone}.");
                    let listed = self
                        .resolver
                        .ipv4_lookup(name.as_str(), Some(self.dns.ipv4()))
                        .await
                        .ok()
                        .is_some_and(|set| set.rrset.iter().any(|a| a.octets()[0] == 127));
                    // Not listed is NXDOMAIN, never cached by mail-auth: time it here.
                    self.dns.settle_ipv4(&name);
                    (i, *weight, listed)
                }
            })
            .collect();
        // Allow-list zones (negative weights) not answered yet: until they
        // have, a score at the threshold could still come down.
        let mut allow_left = s.dnsbl.iter().filter(|(_, w)| *w < 0).count();
        let all = async {
            while let Some((i, weight, listed)) = checks.next().await {
                if weight < 0 {
                    allow_left -= 1;
                }
                if listed {
                    score.set(score.get() + weight);
                    if weight > 0 {
                        hits.borrow_mut().push(i);
                    }
                }
                // Refused whatever the zones still out say: no need to wait.
                if score.get() >= s.dnsbl_threshold && !hits.borrow().is_empty() && allow_left == 0
                {
                    break;
                }
            }
        };
        let deadline = async {
            glommio::timer::sleep(s.dnsbl_timeout).await;
            tracing::debug!(%ip, "DNSBL deadline reached; zones that have not answered count as not listing");
        };
        futures_lite::future::or(all, deadline).await;
        let mut hits = hits.into_inner();
        if score.get() < s.dnsbl_threshold || hits.is_empty() {
            return None;
        }
        hits.sort_unstable();
        Some(hits.into_iter().map(|i| s.dnsbl[i].0.clone()).collect())
    }

    /// SPF for the MAIL FROM identity (the HELO identity for `<>`).
    pub async fn check_sender(&self, ip: IpAddr, helo: &str, mail_from: &str) -> SenderCheck {
        let mut check = SenderCheck {
            ip,
            helo: helo.to_string(),
            mail_from: mail_from.to_string(),
            spf: None,
            refusal: None,
        };
        if !self.settings.spf {
            return check;
        }
        let host = self.settings.hostname.as_str();
        let params = if mail_from.is_empty() {
            SpfParameters::verify_ehlo(ip, helo, host)
        } else {
            SpfParameters::verify_mail_from(ip, helo, host, mail_from)
        };
        let out = self.resolver.verify_spf(self.dns.params(params)).await;
        if self.settings.spf_enforcement == SpfEnforcement::Strict {
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
        let s = &*self.settings;
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
        let message = limit_signatures(message);
        let parsed = AuthenticatedMessage::parse(&message);
        let from_header = parsed
            .as_ref()
            .map(|m| m.from().to_string())
            .unwrap_or_default();
        let from_domain = domain_of(&from_header).to_ascii_lowercase();
        let dkim: Vec<DkimOutput<'_>> = match (&parsed, s.dkim || s.dmarc) {
            (Some(m), true) => self.resolver.verify_dkim(self.dns.params(m)).await,
            _ => Vec::new(),
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

        let (refusal, quarantine) = self.enforce_dmarc(dmarc.as_ref(), &dkim, spf, &from_domain);
        let json = self.json(
            sender,
            &dkim,
            dmarc.as_ref(),
            arc.as_ref(),
            iprev,
            &from_header,
            &from_domain,
            &header,
            quarantine,
        );
        MessageVerdict {
            refusal,
            quarantine,
            header,
            json,
        }
    }

    /// Applies `dmarc_enforcement` to a DMARC result.
    fn enforce_dmarc(
        &self,
        dmarc: Option<&DmarcOutput>,
        dkim: &[DkimOutput<'_>],
        spf: &SpfOutput,
        from_domain: &str,
    ) -> (Option<Reply>, bool) {
        let Some(d) = dmarc else { return (None, false) };
        let passed = match self.settings.dmarc_enforcement {
            DmarcEnforcement::None => return (None, false),
            DmarcEnforcement::Relaxed => match d.result() {
                DmarcResult::Pass | DmarcResult::None | DmarcResult::PermError(_) => true,
                DmarcResult::TempError(_) => return (Some(dmarc_temp(d.domain())), false),
                DmarcResult::Fail(_) => false,
            },
            DmarcEnforcement::Strict => {
                if d.dmarc_record().is_none() {
                    true
                } else if matches!(d.result(), DmarcResult::TempError(_)) {
                    return (Some(dmarc_temp(d.domain())), false);
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
        if passed {
            return (None, false);
        }
        match d.policy() {
            Policy::Reject => (
                Some(Reply::new(
                    550,
                    "5.7.1",
                    format!(
                        "Message rejected: DMARC policy of {} (p=reject) is not met",
                        d.domain()
                    ),
                )),
                false,
            ),
            Policy::Quarantine => (None, true),
            _ => (None, false),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn json(
        &self,
        sender: &SenderCheck,
        dkim: &[DkimOutput<'_>],
        dmarc: Option<&DmarcOutput>,
        arc: Option<&ArcOutput<'_>>,
        iprev: &IprevOutput,
        from_header: &str,
        from_domain: &str,
        header: &str,
        quarantine: bool,
    ) -> RawJson {
        let s = &*self.settings;
        let received_spf;
        let spf = match &sender.spf {
            Some(out) => {
                received_spf =
                    ReceivedSpf::new(out, sender.ip, &sender.helo, &sender.mail_from, &s.hostname)
                        .to_header();
                Some(SpfJson {
                    client_ip: sender.ip,
                    domain: out.domain(),
                    helo_domain: &sender.helo,
                    mail_from: &sender.mail_from,
                    received_spf_header: received_spf
                        .trim_end()
                        .trim_start_matches("Received-SPF: "),
                    result: spf_word(out.result()),
                })
            }
            None => None,
        };
        let passed = |o: &&DkimOutput<'_>| o.result() == &DkimResult::Pass;
        let dkim_json = s.dkim.then(|| DkimJson {
            from_domain,
            result: if dkim.iter().any(|o| passed(&o)) {
                "pass"
            } else {
                dkim.first().map_or("none", |o| dkim_word(o.result()))
            },
            signatures: dkim
                .iter()
                .filter_map(|o| {
                    let sig = o.signature()?;
                    Some(SignatureJson {
                        algorithm: match sig.a {
                            Algorithm::RsaSha1 => "rsa-sha1",
                            Algorithm::RsaSha256 => "rsa-sha256",
                            Algorithm::Ed25519Sha256 => "ed25519-sha256",
                        },
                        domain: &sig.d,
                        result: dkim_word(o.result()),
                        selector: &sig.s,
                        valid: o.result() == &DkimResult::Pass,
                    })
                })
                .collect(),
            signed_by: dkim
                .iter()
                .filter(passed)
                .filter_map(|o| o.signature().map(|sig| sig.d.as_str()))
                .collect(),
        });
        let strict = s.dmarc_enforcement == DmarcEnforcement::Strict;
        let align = |a: Option<&Alignment>| match (strict, a) {
            (true, _) | (false, Some(Alignment::Strict)) => "strict",
            _ => "relaxed",
        };
        let dmarc_json = dmarc.map(|d| {
            let rec = d.dmarc_record();
            DmarcJson {
                authentication_results: header
                    .trim_end()
                    .trim_start_matches("Authentication-Results: "),
                dkim_aligned: dmarc_word(d.dkim_result()),
                dkim_alignment: align(rec.map(|r| &r.adkim)),
                domain: d.domain(),
                from_header,
                policy: policy_word(d.policy()),
                result: dmarc_word(&d.result()),
                return_path: &sender.mail_from,
                spf_aligned: dmarc_word(d.spf_result()),
                spf_alignment: align(rec.map(|r| &r.aspf)),
            }
        });
        RawJson::new(&AuthJson {
            arc: arc.map(|a| ArcJson {
                chain_length: a.sets().len(),
                result: dkim_word(a.result()),
            }),
            dkim: dkim_json,
            dmarc: dmarc_json,
            iprev: IprevJson {
                client_ip: sender.ip,
                ptr: iprev.ptr.as_deref(),
                result: match &iprev.result {
                    IprevResult::Pass => "pass",
                    IprevResult::Fail(_) => "fail",
                    IprevResult::TempError(_) => "temperror",
                    IprevResult::PermError(_) => "permerror",
                    IprevResult::None => "none",
                },
            },
            quarantine,
            spf,
        })
    }
}

// GoMail's `authentication` object, written straight from the results
// (fields in alphabetical order, as GoMail's JSON has them).

#[derive(Serialize)]
struct AuthJson<'a> {
    arc: Option<ArcJson>,
    dkim: Option<DkimJson<'a>>,
    dmarc: Option<DmarcJson<'a>>,
    iprev: IprevJson<'a>,
    quarantine: bool,
    spf: Option<SpfJson<'a>>,
}

#[derive(Serialize)]
struct ArcJson {
    chain_length: usize,
    result: &'static str,
}

#[derive(Serialize)]
struct SpfJson<'a> {
    client_ip: IpAddr,
    domain: &'a str,
    helo_domain: &'a str,
    mail_from: &'a str,
    received_spf_header: &'a str,
    result: &'static str,
}

#[derive(Serialize)]
struct DkimJson<'a> {
    from_domain: &'a str,
    result: &'static str,
    signatures: Vec<SignatureJson<'a>>,
    signed_by: Vec<&'a str>,
}

#[derive(Serialize)]
struct SignatureJson<'a> {
    algorithm: &'static str,
    domain: &'a str,
    result: &'static str,
    selector: &'a str,
    valid: bool,
}

#[derive(Serialize)]
struct DmarcJson<'a> {
    authentication_results: &'a str,
    dkim_aligned: &'static str,
    dkim_alignment: &'static str,
    domain: &'a str,
    from_header: &'a str,
    policy: &'static str,
    result: &'static str,
    return_path: &'a str,
    spf_aligned: &'static str,
    spf_alignment: &'static str,
}

#[derive(Serialize)]
struct IprevJson<'a> {
    client_ip: IpAddr,
    ptr: Option<&'a [Box<str>]>,
    result: &'static str,
}

/// At most this many DKIM signatures per message are verified, the first
/// ones in header order (the most recently added); further ones are
/// ignored, as RFC 6376 section 6.1 allows (OpenDKIM's default is 3).
/// Each signature can make the verifier hash the body again (with its own
/// `l=`) and ask DNS for a key: without a limit, one message could carry
/// thousands of them.
pub const DKIM_MAX_SIGNATURES: usize = 5;

/// At most this many fields of each ARC kind: RFC 8617 allows 50 sets.
const ARC_MAX_SETS: usize = 50;

/// `message`, without the DKIM signatures and ARC fields past the limits
/// (borrowed as it is when it has none too many).
fn limit_signatures(message: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const LIMITED: [(&[u8], usize); 4] = [
        (b"dkim-signature", DKIM_MAX_SIGNATURES),
        (b"arc-seal", ARC_MAX_SETS),
        (b"arc-message-signature", ARC_MAX_SETS),
        (b"arc-authentication-results", ARC_MAX_SETS),
    ];
    let head_end = memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 2);
    let mut seen = [0usize; LIMITED.len()];
    let mut dropped: Vec<std::ops::Range<usize>> = Vec::new();
    let mut at = 0;
    while at < head_end {
        // A field: its line and the folded lines that continue it.
        let mut end = at;
        loop {
            end = match memchr::memmem::find(&message[end..head_end], b"\r\n") {
                Some(i) => end + i + 2,
                None => head_end,
            };
            if end >= head_end || !matches!(message[end], b' ' | b'\t') {
                break;
            }
        }
        let field = &message[at..end];
        let name = field
            .iter()
            .position(|&b| b == b':')
            .map_or(&field[..0], |i| field[..i].trim_ascii());
        if let Some(k) = LIMITED
            .iter()
            .position(|(n, _)| name.eq_ignore_ascii_case(n))
        {
            seen[k] += 1;
            if seen[k] > LIMITED[k].1 {
                dropped.push(at..end);
            }
        }
        at = end;
    }
    if dropped.is_empty() {
        return std::borrow::Cow::Borrowed(message);
    }
    tracing::debug!(
        dkim_signatures = seen[0],
        "message carries more signature fields than are verified; the first ones are kept"
    );
    let mut kept = Vec::with_capacity(message.len());
    let mut from = 0;
    for r in dropped {
        kept.extend_from_slice(&message[from..r.start]);
        from = r.end;
    }
    kept.extend_from_slice(&message[from..]);
    std::borrow::Cow::Owned(kept)
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

/// The DNSBL query label for an address: reversed octets (IPv4) or
/// nibbles (IPv6).
fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => v6
            .octets()
            .iter()
            .rev()
            .flat_map(|b| [b & 0x0f, b >> 4])
            .map(|n| format!("{n:x}"))
            .collect::<Vec<_>>()
            .join("."),
    }
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

#[cfg(test)]
mod tests {
    use super::{limit_signatures, DKIM_MAX_SIGNATURES};

    fn sig(i: usize) -> String {
        format!("DKIM-Signature: v=1; d=d{i}.example;\r\n\tb=abc{i}\r\n")
    }

    /// Messages made of signature-field fragments, odd bytes and broken
    /// folding: dropping fields and parsing must never panic (a panic would
    /// take the shard down with every connection on it).
    #[test]
    fn scrambled_signature_fields_never_panic() {
        const PARTS: [&[u8]; 16] = [
            b"DKIM-Signature: v=1; a=rsa-sha256; d=",
            b"ARC-Seal: i=",
            b"ARC-Message-Signature: i=1; a=ed25519-sha256; l=",
            b"ARC-Authentication-Results: i=",
            b"From: <a@",
            b"\r\n",
            b"\r\n\t",
            b"\n",
            b"\r",
            b";",
            b"=",
            b"h=from:to; bh=",
            b"b=AAAA",
            b"99999999999999999999",
            b"\xff\xfe\x00",
            b"\r\n\r\n",
        ];
        let mut rng = fastrand::Rng::with_seed(4);
        for _ in 0..20_000 {
            let mut m = Vec::new();
            for _ in 0..rng.usize(1..60) {
                m.extend_from_slice(PARTS[rng.usize(..PARTS.len())]);
            }
            let kept = limit_signatures(&m);
            assert!(kept.len() <= m.len());
            let _ = mail_auth::AuthenticatedMessage::parse(&kept);
        }
    }

    #[test]
    fn signatures_past_the_limit_are_dropped_and_the_rest_kept() {
        let body = "From: a@b.example\r\nSubject: x\r\n\r\nDKIM-Signature: in the body stays\r\n";
        let few: String = (0..DKIM_MAX_SIGNATURES).map(sig).collect::<String>() + body;
        assert!(matches!(
            limit_signatures(few.as_bytes()),
            std::borrow::Cow::Borrowed(_)
        ));

        // The third field's name in lower case: names match in any case.
        let sigs = |n: usize| -> String {
            (0..n)
                .map(|i| {
                    if i == 2 {
                        sig(i).to_lowercase()
                    } else {
                        sig(i)
                    }
                })
                .collect()
        };
        let many = sigs(DKIM_MAX_SIGNATURES + 3) + body;
        let kept = limit_signatures(many.as_bytes());
        let kept = std::str::from_utf8(&kept).unwrap();
        let want = sigs(DKIM_MAX_SIGNATURES) + body;
        assert_eq!(kept, want);
    }
}
