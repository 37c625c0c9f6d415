//! GoMail's `authentication` object, written straight from the results.

use std::net::IpAddr;

use mail_auth::common::crypto::Algorithm;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::{Alignment, Policy};
use mail_auth::{
    ArcOutput, DkimOutput, DkimResult, DmarcOutput, DmarcResult, IprevOutput, IprevResult,
    ReceivedSpf, SpfResult,
};
use serde::Serialize;

use super::{DmarcEnforcement, Enforced, SenderCheck, ShardAuth};
use crate::spool::RawJson;

impl ShardAuth {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn json(
        &self,
        sender: &SenderCheck,
        dkim: &[DkimOutput<'_>],
        dmarc: Option<&DmarcOutput>,
        arc: Option<&ArcOutput<'_>>,
        iprev: &IprevOutput,
        from_header: &str,
        from_domain: &str,
        header: &str,
        enforced: &Enforced,
        spf_failed: bool,
    ) -> RawJson {
        let settings = self.settings();
        let s = &*settings;
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
                action: enforced.action(),
                dkim_aligned: dmarc_word(d.dkim_result()),
                dkim_alignment: align(rec.map(|r| &r.adkim)),
                domain: d.domain(),
                enforced_result: enforced.result,
                enforcement: match s.dmarc_enforcement {
                    DmarcEnforcement::None => "none",
                    DmarcEnforcement::Relaxed => "relaxed",
                    DmarcEnforcement::Strict => "strict",
                },
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
            quarantine: enforced.quarantine,
            spf,
            spf_failed,
        })
    }
}

pub(super) fn spf_word(r: SpfResult) -> &'static str {
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

pub(super) fn dkim_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

pub(super) fn dmarc_word(r: &DmarcResult) -> &'static str {
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
    /// `spf_enforcement: soft` marked an SPF failure.
    spf_failed: bool,
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
    /// What enforcement did: `none`, `quarantine` or `reject`.
    action: &'static str,
    authentication_results: &'a str,
    dkim_aligned: &'static str,
    dkim_alignment: &'static str,
    domain: &'a str,
    /// The result under the alignment enforcement applied (`result` is
    /// the RFC's, with the domain's published alignment).
    enforced_result: &'static str,
    /// `dmarc_enforcement`.
    enforcement: &'static str,
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
