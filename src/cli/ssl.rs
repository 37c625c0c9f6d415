//! `gomail ssl setup|status|renew`: through the running server's API when
//! one runs on the data_dir (it then swaps the certificate on every
//! shard), else on the files directly.

use std::time::{Duration, Instant};

use anyhow::Context;
use gomail::config::Config;
use gomail::tls::acme::{self, status, AcmeSettings, Outcome, Request, Setup};

use super::api::{api_call, api_of};

#[derive(clap::Subcommand)]
pub(crate) enum SslCmd {
    /// Create the ACME account (if needed) and obtain a certificate for
    /// acme_domains now.
    Setup {
        /// The account's contact address (default: acme_email).
        #[arg(long)]
        email: Option<String>,
        /// Agree to the CA's terms of service (printed when missing).
        #[arg(long)]
        agree_tos: bool,
        #[command(flatten)]
        cfg: super::ConfigArg,
    },
    /// Show the certificate in use and the renewal state.
    Status {
        /// Print the JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cfg: super::ConfigArg,
    },
    /// Renew the certificate if it is due (or now, with --force).
    Renew {
        /// Renew even if it is not due.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        cfg: super::ConfigArg,
    },
}

/// `gomail ssl …`.
pub(crate) fn command(action: SslCmd) -> anyhow::Result<()> {
    let load = |cfg: &super::ConfigArg| gomail::config::load(&super::sources(cfg, Vec::new()));
    let (cfg, action) = match action {
        SslCmd::Setup {
            email,
            agree_tos,
            cfg,
        } => {
            let c = load(&cfg)?;
            let email = email
                .or_else(|| c.text("acme_email"))
                .context("--email is needed (or acme_email): the CA's contact for the account")?;
            (c, Action::Setup { email, agree_tos })
        }
        SslCmd::Status { json, cfg } => (load(&cfg)?, Action::Status { json }),
        SslCmd::Renew { force, cfg } => (load(&cfg)?, Action::Renew { force }),
    };
    run(&cfg, action)
}

/// What was asked.
enum Action {
    Setup { email: String, agree_tos: bool },
    Status { json: bool },
    Renew { force: bool },
}

/// True when a server answers at the API address it advertised in data_dir.
fn server_running(c: &Config) -> bool {
    let Some(mut addr) = gomail::control::advertised(&c.data_dir) else {
        return false;
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

fn run(c: &Config, action: Action) -> anyhow::Result<()> {
    let s = AcmeSettings::from_config(c);
    if let Action::Setup {
        agree_tos: false, ..
    } = action
    {
        let terms = runtime()?
            .block_on(acme::terms_of_service(&s))
            .ok()
            .flatten();
        match terms {
            Some(t) => anyhow::bail!(
                "the CA's terms of service are at {t}; read them and run again with --agree-tos"
            ),
            None => anyhow::bail!(
                "read the terms of service of {} and run again with --agree-tos",
                s.directory
            ),
        }
    }
    let running = server_running(c);
    if running {
        api_of(c, "ssl").context("a gomail server runs on this data_dir")?;
    }
    match action {
        Action::Status { json } => {
            let v = if running {
                api_call(c, "ssl status", "GET", "/api/v1/ssl", "")?
            } else {
                status::status_json(
                    &s,
                    &acme::store::load_state(&s.data_dir),
                    chrono::Utc::now().timestamp(),
                )
            };
            if json {
                println!("{v}");
            } else {
                print_status(&v);
            }
            Ok(())
        }
        Action::Setup { email, agree_tos } => {
            let setup = Setup { email, agree_tos };
            let req = Request {
                force: true,
                setup: Some(setup),
            };
            if running {
                through_server(c, &s, &req)
            } else {
                locally(&s, &req)
            }
        }
        Action::Renew { force } => {
            let req = Request { force, setup: None };
            if running {
                through_server(c, &s, &req)
            } else {
                locally(&s, &req)
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn locally(s: &AcmeSettings, req: &Request) -> anyhow::Result<()> {
    let result = runtime()?.block_on(acme::issue(s, req));
    acme::record(s, &result);
    match result? {
        Outcome::Issued(info) => {
            println!(
                "certificate for {} (until {}) written to {} and {}; a gomail server on this data_dir uses it from its start",
                info.names.join(", "),
                status::rfc3339(info.not_after),
                s.cert_file.display(),
                s.key_file.display()
            );
        }
        Outcome::NotDue { current, due } => {
            println!(
                "not renewed: the certificate for {} is valid until {} and due for renewal at {} (--force renews now)",
                current.names.join(", "),
                status::rfc3339(current.not_after),
                status::rfc3339(due)
            );
        }
    }
    Ok(())
}

fn through_server(c: &Config, s: &AcmeSettings, req: &Request) -> anyhow::Result<()> {
    let mut body = serde_json::json!({ "force": req.force });
    if let Some(setup) = &req.setup {
        body["email"] = setup.email.clone().into();
        body["agree_tos"] = setup.agree_tos.into();
    }
    let started = api_call(c, "ssl", "POST", "/api/v1/ssl/renew", &body.to_string())?;
    let n = started["attempt"]
        .as_u64()
        .context("the server's answer has no attempt number")?;
    // The server bounds each step (DNS by acme_dns_timeout, the CA by
    // acme_timeout, each HTTP request by 30 s); this bounds the wait.
    let deadline = Instant::now() + s.dns_timeout + s.timeout * 2 + Duration::from_secs(120);
    let last = loop {
        let v = api_call(c, "ssl status", "GET", &format!("/api/v1/ssl?wait={n}"), "")?;
        if v["result"]["attempt"] == n {
            break v["result"].clone();
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the server has not finished attempt {n}; see `gomail ssl status` and its log"
            );
        }
    };
    match last["result"].as_str() {
        Some("issued") => {
            let names: Vec<&str> = last["names"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            println!(
                "certificate for {} (until {}) written to {}",
                names.join(", "),
                last["not_after"].as_str().unwrap_or("?"),
                s.cert_file.display()
            );
            if last["swapped"] == true {
                println!("the running server now serves it on every shard");
                Ok(())
            } else {
                anyhow::bail!(
                    "the running server could not load it: {}",
                    last["swap_error"].as_str().unwrap_or("?")
                )
            }
        }
        Some("not_due") => {
            println!(
                "not renewed: the certificate is not due until {} (--force renews now)",
                last["due"].as_str().unwrap_or("?")
            );
            Ok(())
        }
        _ => anyhow::bail!(
            "{}; the certificate in use stays",
            last["error"].as_str().unwrap_or("the attempt failed")
        ),
    }
}

fn print_status(v: &serde_json::Value) {
    let t = |k: &str| v[k].as_str().unwrap_or("never").to_string();
    match v["certificate"].as_object() {
        Some(c) => {
            let names: Vec<&str> = c["names"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            println!("certificate: {}", v["cert_file"].as_str().unwrap_or("?"));
            println!("  issuer:      {}", c["issuer"].as_str().unwrap_or("?"));
            println!("  names:       {}", names.join(", "));
            println!("  not before:  {}", c["not_before"].as_str().unwrap_or("?"));
            println!("  not after:   {}", c["not_after"].as_str().unwrap_or("?"));
            println!("  days left:   {}", c["days_left"]);
            println!(
                "  self-signed: {}",
                if c["self_signed"] == true {
                    "yes"
                } else {
                    "no"
                }
            );
        }
        None => println!(
            "certificate: none at {} ({})",
            v["cert_file"].as_str().unwrap_or("?"),
            v["certificate_error"].as_str().unwrap_or("unreadable")
        ),
    }
    println!(
        "acme account: {}",
        if v["account"] == true {
            format!("yes ({})", v["directory"].as_str().unwrap_or("?"))
        } else {
            "none (gomail ssl setup --email ADDRESS --agree-tos)".into()
        }
    );
    println!("next renewal: {}", t("next_renewal"));
    println!("last attempt: {}", t("last_attempt"));
    println!("last success: {}", t("last_success"));
    println!(
        "last error:   {}",
        v["last_error"].as_str().unwrap_or("none")
    );
}
