//! `gomail dkim keygen|show-record` and `gomail dns check`: DKIM keys in
//! data_dir/dkim/, the records to publish, and a look at what DNS
//! publishes now (through `dns_servers` when set, else the system's
//! resolver).

use anyhow::Context;
use gomail::auth::dkim_keys::{self, Algorithm};
use gomail::config::Config;

/// How long `dns check` waits for one answer.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(clap::Subcommand)]
pub(crate) enum DkimCmd {
    /// Make a key in data_dir/dkim/<domain>/<selector>.pem and print its record.
    Keygen {
        /// rsa-2048 or ed25519.
        #[arg(long, default_value = "rsa-2048")]
        algorithm: String,
        /// The selector (a DNS label; a new one per rotation).
        #[arg(long, default_value = "default")]
        selector: String,
        /// The domain (default: primary_domain).
        #[arg(long)]
        domain: Option<String>,
        #[command(flatten)]
        cfg: super::ConfigArg,
    },
    /// Print the TXT record of each key (or of --selector) to publish.
    ShowRecord {
        /// Only this selector.
        #[arg(long)]
        selector: Option<String>,
        /// The domain (default: primary_domain).
        #[arg(long)]
        domain: Option<String>,
        #[command(flatten)]
        cfg: super::ConfigArg,
    },
}

#[derive(clap::Subcommand)]
pub(crate) enum DnsCmd {
    /// Look up MX, the mail host's address, SPF, DMARC and the DKIM keys.
    Check {
        /// The domain (default: primary_domain).
        #[arg(long)]
        domain: Option<String>,
        #[command(flatten)]
        cfg: super::ConfigArg,
    },
}

/// `gomail dkim …`.
pub(crate) fn dkim_command(action: DkimCmd) -> anyhow::Result<()> {
    let load = |cfg: &super::ConfigArg| gomail::config::load(&super::sources(cfg, Vec::new()));
    match action {
        DkimCmd::Keygen {
            algorithm,
            selector,
            domain,
            cfg,
        } => keygen(&load(&cfg)?, &algorithm, &selector, domain),
        DkimCmd::ShowRecord {
            selector,
            domain,
            cfg,
        } => show_record(&load(&cfg)?, selector, domain),
    }
}

/// `gomail dns …`.
pub(crate) fn dns_command(action: DnsCmd) -> anyhow::Result<()> {
    let DnsCmd::Check { domain, cfg } = action;
    dns_check(
        &gomail::config::load(&super::sources(&cfg, Vec::new()))?,
        domain,
    )
}

fn keygen(
    c: &Config,
    algorithm: &str,
    selector: &str,
    domain: Option<String>,
) -> anyhow::Result<()> {
    let alg = Algorithm::parse(algorithm)
        .with_context(|| format!("--algorithm {algorithm}: expected rsa-2048 or ed25519"))?;
    let domain = domain.unwrap_or_else(|| c.primary_domain.clone());
    let (path, public) = dkim_keys::generate(&c.data_dir, &domain, selector, alg)?;
    eprintln!("DKIM key written to {} (0600); publish:", path.display());
    println!("{}", dkim_keys::record_line(&domain, selector, &public));
    Ok(())
}

fn show_record(c: &Config, selector: Option<String>, domain: Option<String>) -> anyhow::Result<()> {
    let domain = domain.unwrap_or_else(|| c.primary_domain.clone());
    let selectors = match selector {
        Some(s) => vec![s],
        None => dkim_keys::selectors(&c.data_dir, &domain),
    };
    if selectors.is_empty() {
        anyhow::bail!(
            "no DKIM key for {domain} in {}; make one with `gomail dkim keygen --domain {domain}`",
            c.data_dir.join("dkim").display()
        );
    }
    for s in selectors {
        let public = dkim_keys::read_public(&c.data_dir, &domain, &s)?;
        println!("{}", dkim_keys::record_line(&domain, &s, &public));
    }
    Ok(())
}

/// One finding of `dns check`.
struct Finding {
    ok: bool,
    what: String,
    detail: String,
}

fn dns_check(c: &Config, domain: Option<String>) -> anyhow::Result<()> {
    let domain = domain.unwrap_or_else(|| c.primary_domain.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let findings = rt.block_on(check(c, &domain))?;
    let mut failed = 0;
    for f in &findings {
        if !f.ok {
            failed += 1;
        }
        println!(
            "{:<5} {:<40} {}",
            if f.ok { "ok" } else { "FAIL" },
            f.what,
            f.detail
        );
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} DNS checks failed", findings.len());
    }
    Ok(())
}

async fn check(c: &Config, domain: &str) -> anyhow::Result<Vec<Finding>> {
    use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
    use mail_auth::hickory_resolver::net::runtime::TokioRuntimeProvider;
    use mail_auth::hickory_resolver::proto::rr::RData;
    use mail_auth::hickory_resolver::TokioResolver;
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    opts.timeout = LOOKUP_TIMEOUT;
    opts.attempts = 1;
    let resolver = if c.dns_servers.is_empty() {
        TokioResolver::builder_tokio()
            .context("reading /etc/resolv.conf")?
            .with_options(opts)
            .build()?
    } else {
        let ns = c
            .dns_servers
            .iter()
            .map(|a| {
                let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                for conn in &mut ns.connections {
                    conn.port = a.port();
                }
                ns
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(ns),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()?
    };
    let txt = |name: String| {
        let r = &resolver;
        async move {
            match r.txt_lookup(name.as_str()).await {
                Ok(l) => l
                    .answers()
                    .iter()
                    .filter_map(|a| match &a.data {
                        RData::TXT(t) => Some(
                            t.txt_data
                                .iter()
                                .map(|s| String::from_utf8_lossy(s).into_owned())
                                .collect::<String>(),
                        ),
                        _ => None,
                    })
                    .collect::<Vec<String>>(),
                Err(_) => Vec::new(),
            }
        }
    };
    let mut out = Vec::new();
    let mx_name = format!("{domain}.");
    let host = c.mail_hostname.trim_end_matches('.').to_ascii_lowercase();
    match resolver.mx_lookup(mx_name.as_str()).await {
        Ok(l) => {
            let hosts: Vec<String> = l
                .answers()
                .iter()
                .filter_map(|a| match &a.data {
                    RData::MX(m) => Some(m.exchange.to_ascii().to_ascii_lowercase()),
                    _ => None,
                })
                .collect();
            let ours = hosts.iter().any(|h| h.trim_end_matches('.') == host);
            out.push(Finding {
                ok: ours,
                what: format!("MX {domain}"),
                detail: if ours {
                    hosts.join(", ")
                } else {
                    format!(
                        "{} (none is mail_hostname {host})",
                        if hosts.is_empty() {
                            "none".into()
                        } else {
                            hosts.join(", ")
                        }
                    )
                },
            });
        }
        Err(e) => out.push(Finding {
            ok: false,
            what: format!("MX {domain}"),
            detail: format!("no answer: {e}"),
        }),
    }
    let addrs = resolver.lookup_ip(format!("{host}.")).await;
    out.push(Finding {
        ok: addrs.is_ok(),
        what: format!("A/AAAA {host}"),
        detail: match addrs {
            Ok(a) => a
                .iter()
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => format!("no address: {e}"),
        },
    });
    let spf: Vec<String> = txt(format!("{domain}."))
        .await
        .into_iter()
        .filter(|t| t.starts_with("v=spf1"))
        .collect();
    out.push(Finding {
        ok: spf.len() == 1,
        what: format!("SPF {domain}"),
        detail: match spf.len() {
            0 => "no v=spf1 record".into(),
            1 => spf[0].clone(),
            n => format!("{n} v=spf1 records (RFC 7208 says exactly one)"),
        },
    });
    let dmarc: Vec<String> = txt(format!("_dmarc.{domain}."))
        .await
        .into_iter()
        .filter(|t| t.starts_with("v=DMARC1"))
        .collect();
    out.push(Finding {
        ok: dmarc.len() == 1,
        what: format!("DMARC _dmarc.{domain}"),
        detail: dmarc
            .first()
            .cloned()
            .unwrap_or_else(|| "no v=DMARC1 record".into()),
    });
    for s in dkim_keys::selectors(&c.data_dir, domain) {
        let want = dkim_keys::read_public(&c.data_dir, domain, &s)?;
        let name = format!("{s}._domainkey.{domain}");
        let published = txt(format!("{name}.")).await;
        let p_of = |t: &str| {
            t.split(';')
                .find_map(|kv| kv.trim().strip_prefix("p="))
                .map(|p| p.split_whitespace().collect::<String>())
        };
        let found = published.iter().find_map(|t| p_of(t));
        out.push(Finding {
            ok: found.as_deref() == Some(want.p.as_str()),
            what: format!("DKIM {name}"),
            detail: match found {
                Some(p) if p == want.p => format!("k={} key matches {}", want.k, dkim_keys::key_path(&c.data_dir, domain, &s)?.display()),
                Some(_) => "published p= differs from the local key (gomail dkim show-record prints the right one)".into(),
                None => "no DKIM record (gomail dkim show-record prints it)".into(),
            },
        });
    }
    Ok(out)
}
