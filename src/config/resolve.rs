//! From checked settings to a [`Config`]: values that need more than a
//! type check (addresses, domains, ranges, combinations of keys).

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use super::keys::{self, Kind};
use super::{parse_bool, Config, ConfigError, Origin, Value};

/// The least `spool_max_bytes` per shard: two 32 MiB segments.
const SPOOL_BYTES_MIN: u64 = 64 << 20;

pub(super) fn resolve(
    path: Option<PathBuf>,
    settings: BTreeMap<&'static str, (Value, Origin)>,
) -> Result<Config, ConfigError> {
    let get = |k: &str| settings.get(k).map(|(v, _)| v.text()).unwrap_or_default();
    let invalid = |k: &str, reason: String| ConfigError::Invalid {
        key: k.to_string(),
        origin: settings
            .get(k)
            .map(|(_, o)| o.clone())
            .unwrap_or(Origin::Default),
        reason,
    };
    let list = |k: &str| match settings.get(k) {
        Some((Value::List(l), _)) => l.clone(),
        Some((v, _)) => Value::from_text(&v.text(), Kind::List).text_list(),
        None => Vec::new(),
    };
    let int = |k: &str| get(k).parse::<u64>().unwrap_or(0);
    let listen_list = |k: &str| -> Result<Vec<SocketAddr>, ConfigError> {
        list(k)
            .iter()
            .map(|a| {
                parse_listen(a)
                    .ok_or_else(|| invalid(k, format!("`{a}` is not a host:port listen address")))
            })
            .collect()
    };

    let smtp_listen = listen_list("smtp_listen")?;
    if smtp_listen.is_empty() {
        return Err(invalid(
            "smtp_listen",
            "at least one address is needed".into(),
        ));
    }
    let shards = match get("shards").as_str() {
        "auto" => shards::auto_shard_count(),
        n => n.parse().unwrap_or(1),
    };
    if shards > 1024 {
        return Err(invalid(
            "shards",
            format!("{shards} shards is more than the 1024 supported"),
        ));
    }
    let primary_domain = get("primary_domain").trim().to_ascii_lowercase();
    if !is_domain(&primary_domain) {
        return Err(invalid(
            "primary_domain",
            format!("`{primary_domain}` is not a domain name"),
        ));
    }
    let mut additional_domains = Vec::new();
    for d in list("additional_domains") {
        let d = d.trim().to_ascii_lowercase();
        if !is_domain(&d) {
            return Err(invalid(
                "additional_domains",
                format!("`{d}` is not a domain name"),
            ));
        }
        additional_domains.push(d);
    }
    let mail_hostname = match settings.get("mail_hostname") {
        Some((v, _)) => v.text(),
        None => system_hostname().unwrap_or_else(|| primary_domain.clone()),
    };
    if !is_domain(&mail_hostname) {
        return Err(invalid(
            "mail_hostname",
            format!("`{mail_hostname}` is not a host name"),
        ));
    }
    let max_message_size = keys::parse_size(&get("max_message_size")).unwrap_or(0);
    if !(1024..=(2u64 << 30)).contains(&max_message_size) {
        return Err(invalid(
            "max_message_size",
            format!("{max_message_size} is outside 1024 bytes .. 2 GiB"),
        ));
    }
    let max_recipients = int("max_recipients") as usize;
    if !(1..=100_000).contains(&max_recipients) {
        return Err(invalid(
            "max_recipients",
            format!("{max_recipients} is outside 1 .. 100000"),
        ));
    }
    let max_total_connections = int("max_total_connections") as usize;
    if max_total_connections == 0 {
        return Err(invalid(
            "max_total_connections",
            "must be at least 1".into(),
        ));
    }
    let port = int("port");
    if port > 65535 {
        return Err(invalid("port", format!("{port} is not a TCP port")));
    }
    let metrics_port = int("metrics_port");
    if metrics_port > 65535 {
        return Err(invalid(
            "metrics_port",
            format!("{metrics_port} is not a TCP port"),
        ));
    }
    let api_host = get("api_host");
    let api_listen = parse_listen(&format!("{api_host}:{port}"))
        .or_else(|| parse_listen(&format!("[{api_host}]:{port}")))
        .ok_or_else(|| {
            invalid(
                "api_host",
                format!("`{api_host}` is not an address to listen on"),
            )
        })?;
    let metrics_listen = (metrics_port != 0 && metrics_port != port)
        .then(|| SocketAddr::new(api_listen.ip(), metrics_port as u16));
    let metrics_path = get("metrics_path");
    if !metrics_path.starts_with('/') || metrics_path == "/health" {
        return Err(invalid(
            "metrics_path",
            format!("`{metrics_path}` must start with / and not be /health"),
        ));
    }
    let mut dns_servers = Vec::new();
    for a in list("dns_servers") {
        let addr = parse_listen(&a)
            .or_else(|| {
                a.parse::<std::net::IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            })
            .ok_or_else(|| invalid("dns_servers", format!("`{a}` is not an ip:port address")))?;
        dns_servers.push(addr);
    }
    for entry in list("dnsbl") {
        if parse_dnsbl(&entry).is_none() {
            return Err(invalid(
                "dnsbl",
                format!("`{entry}` is not `zone` or `zone*weight` (weight a whole number, negative for an allow-list)"),
            ));
        }
    }
    let mut tls_cipher_suites = Vec::new();
    for suite in list("tls_cipher_suites") {
        let suite = go_suite_name(&suite).to_string();
        if !ALLOWED_SUITES.contains(&suite.as_str()) {
            return Err(invalid(
                "tls_cipher_suites",
                format!(
                    "`{suite}` is unknown or not forward-secret AEAD; allowed: {}",
                    ALLOWED_SUITES.join(", ")
                ),
            ));
        }
        tls_cipher_suites.push(suite);
    }
    let smtps_listen = listen_list("smtps_listen")?;
    for a in &smtps_listen {
        if a.port() != 0 && smtp_listen.contains(a) {
            return Err(invalid(
                "smtps_listen",
                format!("{a} is also in smtp_listen"),
            ));
        }
    }
    let path_of = |k: &str| {
        settings
            .get(k)
            .map(|(v, _)| v.text())
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    };
    let endpoint = get("api_endpoint");
    let authority = endpoint
        .split_once("://")
        .map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""));
    if authority.contains('@') {
        // Credentials in the URL would go nowhere (and be shown with it):
        // the receiver authenticates gomail by bearer_token and the
        // signature.
        return Err(invalid(
            "api_endpoint",
            "a user or password in the URL is not supported (use bearer_token; value not shown)"
                .into(),
        ));
    }
    if !endpoint.is_empty() && crate::delivery::webhook::Endpoint::parse(&endpoint).is_none() {
        return Err(invalid(
            "api_endpoint",
            format!("`{endpoint}` is not an http:// or https:// URL"),
        ));
    }
    let secret = get("webhook_secret");
    if !secret.is_empty() && crate::delivery::sign::Secret::parse_all(&secret).is_none() {
        return Err(invalid(
            "webhook_secret",
            "expected whsec_<base64> secrets, separated by spaces (value not shown)".into(),
        ));
    }
    let key = get("webhook_signing_key");
    if !key.is_empty() && crate::delivery::sign::SigningKey::parse(&key).is_none() {
        return Err(invalid(
            "webhook_signing_key",
            "expected whsk_<base64 of a 32-byte Ed25519 seed> (value not shown)".into(),
        ));
    }
    if get("store_mode") == "never" && endpoint.is_empty() {
        return Err(invalid(
            "store_mode",
            "`never` needs api_endpoint, or mail would go nowhere".into(),
        ));
    }
    let mut trusted_networks = crate::admission::Networks::default();
    for n in list("trusted_networks") {
        trusted_networks
            .0
            .push(n.parse().map_err(|e| invalid("trusted_networks", e))?);
    }
    let mut trusted_proxies = crate::admission::Networks::default();
    for n in list("trusted_proxies") {
        trusted_proxies
            .0
            .push(n.parse().map_err(|e| invalid("trusted_proxies", e))?);
    }
    if let (Some(a), Some(b)) = (settings.get("admin_token"), settings.get("bearer_token")) {
        if a.0.text() == b.0.text() {
            return Err(invalid(
                "admin_token",
                "must differ from bearer_token: the webhook receiver is sent bearer_token and must not be able to manage the server (value not shown)".into(),
            ));
        }
    }
    if let (Some(a), Some(b)) = (
        settings.get("do_api_token"),
        settings.get("digitalocean_token"),
    ) {
        if a.0.text() != b.0.text() {
            return Err(invalid(
                "do_api_token",
                "differs from digitalocean_token, its older name: set one of them (values not shown)".into(),
            ));
        }
    }
    if keys::parse_duration(&get("ban_duration"))
        .is_some_and(|d| d.is_zero() || d > crate::admission::bans::MAX_BAN)
    {
        return Err(invalid(
            "ban_duration",
            "must be longer than 0s and at most 10 years (3650d)".into(),
        ));
    }
    for k in [
        "http_timeouts.handler",
        "http_timeouts.write",
        "http_timeouts.idle",
        "smtp_rate_window",
        "ban_window",
        "smtp_write_timeout",
        "smtp_session_timeout",
        "webhook_timeout",
    ] {
        if keys::parse_duration(&get(k)).is_some_and(|d| d.is_zero()) {
            return Err(invalid(k, "must be longer than 0s".into()));
        }
    }
    // The spool grows by preallocated 32 MiB segments, and a shard needs
    // room for its active segment and the next: less, and every message
    // would be deferred while the spool is empty.
    if let Some(max) = keys::parse_size(&get("spool_max_bytes")) {
        let per_shard = max / shards.max(1) as u64;
        if per_shard < SPOOL_BYTES_MIN {
            return Err(invalid(
                "spool_max_bytes",
                format!(
                    "{max} octets over {shards} shard(s) is {per_shard} per shard; each shard needs at least 64 MiB (two 32 MiB spool segments): set at least {}",
                    SPOOL_BYTES_MIN * shards.max(1) as u64
                ),
            ));
        }
    }
    super::acme::check(&get, &list, &invalid, is_domain)?;
    let data_dir = PathBuf::from(get("data_dir"));
    if data_dir.as_os_str().is_empty() {
        return Err(invalid("data_dir", "must not be empty".into()));
    }
    Ok(Config {
        path,
        smtp_listen,
        shards,
        cpu_pinning: parse_bool(&get("cpu_pinning")).unwrap_or(false),
        primary_domain,
        additional_domains,
        mail_hostname,
        max_message_size,
        max_recipients,
        max_total_connections,
        trusted_networks,
        trusted_proxies,
        data_dir,
        log_level: get("log_level"),
        log_format: get("log_format"),
        log_file: get("log_file"),
        // Keys with a default always have a checked value here: no
        // fallback repeats the table's defaults.
        tls_enabled: parse_bool(&get("tls_enabled")).expect("checked at load"),
        starttls_enabled: parse_bool(&get("starttls_enabled")).expect("checked at load"),
        smtps_listen,
        tls_cert_file: path_of("tls_cert_file"),
        tls_key_file: path_of("tls_key_file"),
        tls_cert_dir: path_of("tls_cert_dir"),
        tls_min_version: get("tls_min_version"),
        tls_cipher_suites,
        api_listen,
        metrics_listen,
        metrics_enabled: parse_bool(&get("metrics_enabled")).expect("checked at load"),
        metrics_path,
        http_read_timeout: keys::parse_duration(&get("http_timeouts.read"))
            .expect("checked at load"),
        dns_servers,
        dns_timeout: keys::parse_duration(&get("dns_timeout")).expect("checked at load"),
        settings,
    })
}

/// The cipher suites `tls_cipher_suites` may name: ECDHE with AES-GCM or
/// ChaCha20-Poly1305 (TLS 1.2), and the TLS 1.3 suites.
pub const ALLOWED_SUITES: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// The IANA name of a suite GoMail's Go also knows by a shorter name
/// (crypto/tls keeps `TLS_ECDHE_*_WITH_CHACHA20_POLY1305` as aliases).
fn go_suite_name(name: &str) -> &str {
    match name {
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        other => other,
    }
}

/// Parses a `dnsbl` entry: `zone` (weight 1) or `zone*weight`.
pub fn parse_dnsbl(entry: &str) -> Option<(String, i64)> {
    let (zone, weight) = match entry.split_once('*') {
        Some((z, w)) => (z.trim(), w.trim().parse().ok()?),
        None => (entry.trim(), 1),
    };
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    is_domain(&zone).then_some((zone, weight))
}

fn parse_listen(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    if let Some(port) = s.strip_prefix(':') {
        return format!("0.0.0.0:{port}").parse().ok();
    }
    if let Ok(a) = s.parse() {
        return Some(a);
    }
    s.to_socket_addrs().ok()?.next()
}

fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn system_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8(buf[..end].to_vec()).ok()?;
    is_domain(&name).then_some(name)
}
