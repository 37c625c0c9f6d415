//! The `gomail` command line: parses, loads the configuration, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gomail::config::{self, keys::Status, Config, Sources};
use gomail::server::Server;

#[path = "cli/api.rs"]
mod api;
#[path = "cli/dkim.rs"]
mod dkim;
#[path = "cli/signals.rs"]
mod signals;
#[path = "cli/ssl.rs"]
mod ssl;
use api::{api_call, api_of, api_request};
use signals::{block_signals, wait_signal};

// mimalloc instead of glibc malloc: the after-DATA path (DKIM parsing,
// JSON, Authentication-Results) allocates many small short-lived objects
// per message; see docs/benchmarks.md section 5 for what it changes.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gomail",
    version,
    about = "SMTP ingress engine: accept, verify, spool durably, deliver as JSON"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone, Default)]
struct ConfigArg {
    /// Config file (default: $MAIL_CONFIG, else /etc/gomail.yaml if present, else built-in defaults).
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the SMTP server.
    Server {
        #[command(flatten)]
        cfg: ConfigArg,
        /// API port (`port`).
        #[arg(long)]
        port: Option<String>,
        /// Webhook bearer token (`bearer_token`).
        #[arg(long)]
        bearer_token: Option<String>,
        /// Log level (`log_level`): debug, info, warn, error.
        #[arg(long)]
        log_level: Option<String>,
        /// Data directory (`data_dir`).
        #[arg(long)]
        data_dir: Option<String>,
        /// SMTP listen addresses, comma-separated (`smtp_listen`).
        #[arg(long)]
        smtp_listen: Option<String>,
        /// Number of shards or `auto` (`shards`).
        #[arg(long)]
        shards: Option<String>,
        /// Any key: `--set key=value` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Show, read, change or check the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigCmd,
    },
    /// Dead letters: list, show, re-drive (through the running server), purge.
    Queue {
        #[command(subcommand)]
        action: QueueCmd,
    },
    /// Bans: list, ban, unban (through the running server's API).
    Security {
        #[command(subcommand)]
        action: SecurityCmd,
    },
    /// DKIM keys for the domain's signer: make one, print its DNS record.
    Dkim {
        #[command(subcommand)]
        action: dkim::DkimCmd,
    },
    /// Check what DNS publishes for a domain: MX, SPF, DMARC, DKIM.
    Dns {
        #[command(subcommand)]
        action: dkim::DnsCmd,
    },
    /// ACME certificates: obtain, show, renew (docs/tls-acme.md).
    Ssl {
        #[command(subcommand)]
        action: ssl::SslCmd,
    },
}

#[derive(Subcommand)]
enum SecurityCmd {
    /// List the bans in force: address, reason, automatic or manual, since, expires.
    BannedIps {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Ban an address or CIDR block on every shard.
    Ban {
        /// `192.0.2.7`, `2001:db8::/48`, `198.51.100.0/24`.
        ip: String,
        /// How long (default: ban_duration), e.g. 30m, 2h, 7d.
        #[arg(long)]
        duration: Option<String>,
        /// Why (shown in `banned-ips` and the log).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Lift the ban of an address or block (exactly as listed).
    Unban {
        /// The address or block.
        ip: String,
        #[command(flatten)]
        cfg: ConfigArg,
    },
}

/// Which dead letters: ids, and/or a time range (RFC 3339 or Unix seconds).
#[derive(clap::Args, Clone, Default)]
struct Select {
    /// Queue ids (as in `250 … queued as <id>`).
    ids: Vec<String>,
    /// Received at or after this time.
    #[arg(long)]
    since: Option<String>,
    /// Received at or before this time.
    #[arg(long)]
    until: Option<String>,
    /// Every dead letter (needed when no id or time is given).
    #[arg(long)]
    all: bool,
}

#[derive(Subcommand)]
enum QueueCmd {
    /// List dead letters (oldest first).
    List {
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Print one dead letter: payload, reason, attempt log.
    Show {
        /// The queue id.
        id: String,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Deliver dead letters again; needs the server running (and admin_token).
    Retry {
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Delete dead letters.
    Purge {
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        cfg: ConfigArg,
    },
}

fn selection(s: &Select, need_some: bool) -> anyhow::Result<gomail::control::queue::Selection> {
    use gomail::control::queue::{parse_time, Selection};
    let time = |t: &Option<String>| -> anyhow::Result<Option<i64>> {
        t.as_deref()
            .map(|v| {
                parse_time(v).with_context(|| format!("`{v}` is not RFC 3339 or Unix seconds"))
            })
            .transpose()
    };
    let sel = Selection {
        ids: s.ids.clone(),
        since: time(&s.since)?,
        until: time(&s.until)?,
    };
    if need_some && sel.is_everything() && !s.all {
        anyhow::bail!("name queue ids, give --since/--until, or say --all");
    }
    Ok(sel)
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print every setting with where it came from (secrets hidden).
    Show {
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Print one setting's value.
    Get {
        /// The key, e.g. `primary_domain` or `http_timeouts.read`.
        key: String,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Change one setting in the config file (checked before it is written).
    Set {
        /// The key.
        key: String,
        /// The new value (lists comma-separated).
        value: String,
        /// Then have the running server reload its configuration.
        #[arg(long)]
        reload: bool,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Have the running server read its configuration again and apply it
    /// (as SIGHUP does); prints what changed and what needs a restart.
    Reload {
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Check the configuration and exit 0 if it is valid.
    Validate {
        #[command(flatten)]
        cfg: ConfigArg,
    },
}

fn sources(cfg: &ConfigArg, flags: Vec<(String, String)>) -> Sources {
    Sources {
        file: cfg.config.clone(),
        flags,
        env: std::env::vars().collect(),
    }
}

fn main() -> ExitCode {
    // A panic inside a connection's task is contained there: it costs that
    // connection only (the shard logs it and counts it in
    // gomail_connection_panics_total). Any other panic would leave a
    // shard's connections hanging; stop the whole process instead
    // (systemd restarts it, and the spool recovers every acknowledged
    // message).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if gomail::server::panic_is_contained() {
            tracing::error!(%info, "a connection's task panicked; only that connection is lost");
            return;
        }
        default_hook(info);
        tracing::error!(%info, "gomail panicked; exiting so that it can be restarted");
        std::process::exit(70);
    }));
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Print the cause chain, skipping causes a message already quotes.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg = format!("{msg}: {c}");
                }
            }
            eprintln!("gomail: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Server {
            cfg,
            port,
            bearer_token,
            log_level,
            data_dir,
            smtp_listen,
            shards,
            set,
        } => {
            let mut flags: Vec<(String, String)> = [
                ("port", port),
                ("bearer_token", bearer_token),
                ("log_level", log_level),
                ("data_dir", data_dir),
                ("smtp_listen", smtp_listen),
                ("shards", shards),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .collect();
            for kv in set {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--set {kv}: expected KEY=VALUE"))?;
                flags.push((k.to_string(), v.to_string()));
            }
            let sources = sources(&cfg, flags);
            let config = config::load(&sources)?;
            serve(config, sources)
        }
        Cmd::Queue { action } => queue(action),
        Cmd::Security { action } => security(action),
        Cmd::Dkim { action } => dkim::dkim_command(action),
        Cmd::Dns { action } => dkim::dns_command(action),
        Cmd::Ssl { action } => ssl::command(action),
        Cmd::Config { action } => match action {
            ConfigCmd::Show { cfg } => {
                print!("{}", config::load(&sources(&cfg, Vec::new()))?.show());
                Ok(())
            }
            ConfigCmd::Get { key, cfg } => {
                if config::keys::find(&key).is_none() {
                    anyhow::bail!("unknown key `{key}`");
                }
                let c = config::load(&sources(&cfg, Vec::new()))?;
                println!("{}", c.get(&key).unwrap_or_default());
                Ok(())
            }
            ConfigCmd::Set {
                key,
                value,
                reload,
                cfg,
            } => {
                let path = sources(&cfg, Vec::new())
                    .config_path()
                    .unwrap_or_else(|| PathBuf::from("/etc/gomail.yaml"));
                // The running server is reached with the address and token
                // it runs with, which the change may be about to replace.
                let running = config::load(&sources(&cfg, Vec::new()));
                config::edit::set_in_file(&path, &key, &value)?;
                println!("{key} set in {}", path.display());
                if reload {
                    let running = match running {
                        Ok(c) => c,
                        Err(_) => config::load(&sources(&cfg, Vec::new()))?,
                    };
                    print_reload(&api_call(&running, "reload", "POST", "/api/v1/reload", "")?);
                }
                Ok(())
            }
            ConfigCmd::Reload { cfg } => {
                let c = config::load(&sources(&cfg, Vec::new()))?;
                print_reload(&api_call(&c, "reload", "POST", "/api/v1/reload", "")?);
                Ok(())
            }
            ConfigCmd::Validate { cfg } => {
                let c = config::load(&sources(&cfg, Vec::new()))?;
                match &c.path {
                    Some(p) => println!("{}: valid", p.display()),
                    None => println!("no config file; built-in defaults are valid"),
                }
                for (key, status, origin) in c.inactive_settings() {
                    println!("note: {key} ({origin}) {}", inactive_note(status));
                }
                Ok(())
            }
        },
    }
}

/// Prints the answer of `POST /api/v1/reload`.
fn print_reload(v: &serde_json::Value) {
    let keys = |k: &str| {
        let list: Vec<&str> = v[k]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        }
    };
    println!("reloaded; applied: {}", keys("applied"));
    if v["restart_required"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
    {
        println!("needs a restart: {}", keys("restart_required"));
    }
}

fn queue(action: QueueCmd) -> anyhow::Result<()> {
    use gomail::control::queue::select;
    let load = |cfg: &ConfigArg| config::load(&sources(cfg, Vec::new()));
    match action {
        QueueCmd::List { select: s, cfg } => {
            let c = load(&cfg)?;
            let paths = select(&c.data_dir, &selection(&s, false)?);
            for p in &paths {
                let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p)?)
                    .with_context(|| format!("{}", p.display()))?;
                // The webhook id: `show`, `retry` and `purge` take it (or
                // the bare queue id, for all of a message's recipients).
                println!(
                    "{}  {}  {} -> {}  {}",
                    v["dead_letter"]["webhook_id"]
                        .as_str()
                        .or(v["metadata"]["queue_id"].as_str())
                        .unwrap_or("?"),
                    v["received_at"].as_str().unwrap_or("?"),
                    v["sender"].as_str().unwrap_or(""),
                    v["recipient"].as_str().unwrap_or(""),
                    v["dead_letter"]["reason"].as_str().unwrap_or("")
                );
            }
            eprintln!(
                "{} dead letter(s) in {}",
                paths.len(),
                c.data_dir.join("dead").display()
            );
            Ok(())
        }
        QueueCmd::Show { id, cfg } => {
            let c = load(&cfg)?;
            let sel = gomail::control::queue::Selection {
                ids: vec![id.clone()],
                ..Default::default()
            };
            let paths = select(&c.data_dir, &sel);
            if paths.is_empty() {
                anyhow::bail!("no dead letter with id {id}");
            }
            // A bare queue id shows every recipient's dead letter.
            for path in paths {
                print!("{}", std::fs::read_to_string(&path)?);
            }
            Ok(())
        }
        QueueCmd::Purge { select: s, cfg } => {
            let c = load(&cfg)?;
            let paths = select(&c.data_dir, &selection(&s, true)?);
            let mut n = 0;
            for p in &paths {
                if std::fs::remove_file(p).is_ok() {
                    n += 1;
                }
            }
            println!("purged {n} dead letter(s)");
            Ok(())
        }
        QueueCmd::Retry { select: s, cfg } => {
            let c = load(&cfg)?;
            let sel = selection(&s, true)?;
            let (addr, token) = api_of(&c, "retry")?;
            let mut body =
                serde_json::json!({ "ids": sel.ids, "since": sel.since, "until": sel.until });
            if s.all {
                body["all"] = serde_json::Value::Bool(true);
            }
            let (status, answer) =
                api_request(addr, "POST", "/queue/retry", &token, &body.to_string())
                    .with_context(|| format!("is gomail running? (API {addr})"))?;
            if status != 200 {
                anyhow::bail!("the server answered {status}: {answer}");
            }
            println!("{answer}");
            let matched = serde_json::from_str::<serde_json::Value>(&answer)
                .ok()
                .and_then(|v| v["matched"].as_u64());
            if matched == Some(0) {
                anyhow::bail!("no dead letter matched");
            }
            Ok(())
        }
    }
}

fn security(action: SecurityCmd) -> anyhow::Result<()> {
    let load = |cfg: &ConfigArg| config::load(&sources(cfg, Vec::new()));
    let line = |b: &serde_json::Value| {
        format!(
            "{:<24} {:<6} since {}  expires {}  {}",
            b["ip"].as_str().unwrap_or("?"),
            b["source"].as_str().unwrap_or("?"),
            b["since"].as_str().unwrap_or("?"),
            b["expires"].as_str().unwrap_or("?"),
            b["reason"].as_str().unwrap_or("")
        )
    };
    match action {
        SecurityCmd::BannedIps { json, cfg } => {
            let v = api_call(&load(&cfg)?, "banned-ips", "GET", "/api/v1/bans", "")?;
            if json {
                println!("{v}");
                return Ok(());
            }
            let bans = v["bans"].as_array().cloned().unwrap_or_default();
            for b in &bans {
                println!("{}", line(b));
            }
            eprintln!("{} ban(s) in force", bans.len());
            Ok(())
        }
        SecurityCmd::Ban {
            ip,
            duration,
            reason,
            cfg,
        } => {
            let body = serde_json::json!({ "ip": ip, "duration": duration, "reason": reason });
            let v = api_call(
                &load(&cfg)?,
                "ban",
                "POST",
                "/api/v1/bans",
                &body.to_string(),
            )?;
            println!("banned {}", line(&v["ban"]));
            Ok(())
        }
        SecurityCmd::Unban { ip, cfg } => {
            let path = format!("/api/v1/bans/{}", ip.trim().replace('/', "%2F"));
            let v = api_call(&load(&cfg)?, "unban", "DELETE", &path, "")?;
            println!("unbanned {}", line(&v["unbanned"]));
            Ok(())
        }
    }
}

fn inactive_note(status: Status) -> &'static str {
    match status {
        Status::Pending => "is checked but not active in this version",
        _ => "is a GoMail setting gomail does not use; it is ignored",
    }
}

fn init_logging(cfg: &Config) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("GOMAIL_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("gomail={0},shards={0},warn", cfg.log_level)));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let writer: Box<dyn Fn() -> Box<dyn std::io::Write> + Send + Sync> = if cfg.log_file.is_empty()
    {
        Box::new(|| Box::new(std::io::stderr()))
    } else {
        let path = PathBuf::from(&cfg.log_file);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("log_file {}", path.display()))?;
        Box::new(move || {
            Box::new(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .expect("log file opened at start-up"),
            )
        })
    };
    if cfg.log_format == "json" {
        builder
            .event_format(gomail::logfmt::AuditJson)
            .with_writer(writer)
            .init();
    } else {
        builder.with_writer(writer).init();
    }
    Ok(())
}

fn serve(cfg: Config, sources: Sources) -> anyhow::Result<()> {
    init_logging(&cfg)?;
    for (key, status, origin) in cfg.inactive_settings() {
        tracing::warn!(%key, %origin, "{}", inactive_note(status));
    }
    let signals = block_signals();
    let server = Server::start(&cfg)?;
    let api = shards::Snapshot::new(gomail::control::ControlConfig::from_config(&cfg));
    let reloader =
        gomail::reload::Reloader::new(cfg.clone(), sources, server.reload_handle(), api.clone());
    let control = gomail::control::ControlPlane::start(
        api,
        server.stats_handle(),
        server.bans(),
        Some(reloader.clone()),
    )?;
    let mut addrs: Vec<String> = server.smtp_addrs().iter().map(|a| a.to_string()).collect();
    addrs.extend(server.smtps_addrs().iter().map(|a| format!("{a} (TLS)")));
    tracing::info!(
        smtp = %addrs.join(","),
        shards = server.shard_count(),
        data_dir = %cfg.data_dir.display(),
        domains = %cfg.domains().join(","),
        "gomail listening"
    );
    if let Err(e) = gomail::control::advertise(&cfg.data_dir, control.addrs()[0]) {
        tracing::warn!(error = %e, "cannot write data_dir/api.addr; the command line uses the config's port");
    }
    let api: Vec<String> = control.addrs().iter().map(|a| a.to_string()).collect();
    println!(
        "gomail: SMTP on {} ({} shards); API on {}; mail for {} stored as JSON under {}/inbox",
        addrs.join(", "),
        server.shard_count(),
        api.join(", "),
        cfg.domains().join(", "),
        cfg.data_dir.display()
    );
    if cfg.path.is_none() {
        println!("gomail: running on built-in defaults; next, write a gomail.yaml with primary_domain, mail_hostname and smtp_listen (see docs/configuration.md) and start with --config");
    }
    // SIGHUP (`systemctl reload`) reloads the configuration; so does a
    // change of the certificate files (checked every 2 s).
    let mut certs = gomail::tls::fingerprint(&cfg);
    let sig = loop {
        let why = match wait_signal(&signals, 2) {
            Some(libc::SIGHUP) => "SIGHUP",
            Some(sig) => break sig,
            None if gomail::tls::fingerprint(&reloader.current()) != certs => {
                "certificate files changed"
            }
            None => continue,
        };
        // The outcome (and any error) is logged by the reloader.
        let _ = reloader.reload(why);
        certs = gomail::tls::fingerprint(&reloader.current());
    };
    tracing::info!(
        signal = sig,
        "shutting down: no new connections, finishing open transactions"
    );
    control.stop();
    let stats = server.stats();
    server.shutdown()?;
    let accepted: u64 = stats.iter().map(|s| s.messages_accepted).sum();
    tracing::info!(messages_accepted = accepted, "gomail stopped");
    Ok(())
}
