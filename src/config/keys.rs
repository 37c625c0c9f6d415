//! The table of configuration keys: name, kind, default, and whether gomail
//! acts on it yet. GoMail's keys are all here so that a GoMail config file
//! loads unchanged; keys gomail does not use are accepted and reported.

/// How a key's value is written and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Any string.
    Str,
    /// A string that must never be logged or shown by `config show`.
    Secret,
    /// `true` / `false`.
    Bool,
    /// A non-negative integer.
    Int,
    /// A byte size: `26214400`, `25MB`, `10GiB`.
    Size,
    /// A duration: `30s`, `5m`, `1h`, `7d`, or a number of seconds.
    Duration,
    /// A list of strings (YAML list; comma-separated in env and flags).
    List,
    /// One of the listed words.
    Enum(&'static [&'static str]),
    /// `auto` or a positive integer.
    AutoOrInt,
}

/// Whether gomail acts on a key in this version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Used now.
    Active,
    /// Checked and kept; the feature it configures is not in this build yet.
    Pending,
    /// A GoMail key with no meaning in gomail (it configured Postfix or a
    /// GoMail-only feature); accepted so GoMail files load, then ignored.
    Ignored,
}

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// The YAML name (dotted for nested keys).
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its default, as it would be written in YAML (`None`: unset).
    pub default: Option<&'static str>,
    /// Whether it is used.
    pub status: Status,
}

const fn k(name: &'static str, kind: Kind, default: Option<&'static str>, status: Status) -> Key {
    Key {
        name,
        kind,
        default,
        status,
    }
}

use Kind::*;
use Status::*;

/// Every key gomail accepts.
pub const KEYS: &[Key] = &[
    // SMTP engine
    k("smtp_listen", List, Some("127.0.0.1:2525"), Active),
    k("shards", AutoOrInt, Some("auto"), Active),
    k("cpu_pinning", Bool, Some("false"), Active),
    k("primary_domain", Str, Some("localhost"), Active),
    k("additional_domains", List, Some(""), Active),
    k("mail_hostname", Str, None, Active),
    k("max_message_size", Size, Some("26214400"), Active),
    k("max_recipients", Int, Some("100"), Active),
    k("data_dir", Str, Some("./data"), Active),
    // logging
    k(
        "log_level",
        Enum(&["debug", "info", "warn", "error"]),
        Some("info"),
        Active,
    ),
    k("log_format", Enum(&["text", "json"]), Some("text"), Active),
    k("log_file", Str, Some(""), Active),
    // control plane
    k("port", Int, Some("3000"), Active),
    k("api_host", Str, Some("127.0.0.1"), Active),
    k("bearer_token", Secret, None, Active),
    k("admin_token", Secret, None, Active),
    k("trusted_proxies", List, Some(""), Active),
    k("metrics_enabled", Bool, Some("true"), Active),
    k("metrics_port", Int, Some("0"), Active),
    k("metrics_path", Str, Some("/metrics"), Active),
    k("http_timeouts.read", Duration, Some("30s"), Active),
    k("http_timeouts.write", Duration, Some("30s"), Active),
    k("http_timeouts.handler", Duration, Some("60s"), Active),
    k("http_timeouts.idle", Duration, Some("120s"), Active),
    k("http_timeouts.shutdown", Duration, Some("30s"), Active),
    // webhook delivery
    k("api_endpoint", Str, None, Active),
    k("webhook_timeout", Duration, Some("30s"), Active),
    k("webhook_retries", Int, Some("3"), Active),
    k("webhook_retry_delay", Duration, Some("5s"), Active),
    k("webhook_secret", Secret, None, Active),
    k("webhook_ca_file", Str, None, Active),
    k("webhook_signing_key", Secret, None, Active),
    k(
        "webhook_mode",
        Enum(&["async", "sync", "hybrid"]),
        Some("async"),
        Active,
    ),
    k("webhook_sync_deadline", Duration, Some("5s"), Active),
    k(
        "store_mode",
        Enum(&["always", "on_failure", "never"]),
        Some("always"),
        Active,
    ),
    // TLS
    k("tls_enabled", Bool, Some("true"), Active),
    k("starttls_enabled", Bool, Some("true"), Active),
    k("smtps_listen", List, Some(""), Active),
    k("tls_cert_file", Str, None, Active),
    k("tls_key_file", Str, None, Active),
    k("tls_cert_dir", Str, None, Active),
    k(
        "tls_min_version",
        Enum(&["1.2", "1.3"]),
        Some("1.2"),
        Active,
    ),
    k("tls_cipher_suites", List, Some(""), Active),
    // authentication checks
    k("spf_enabled", Bool, Some("true"), Active),
    k(
        "spf_enforcement",
        Enum(&["none", "soft", "strict"]),
        Some("none"),
        Active,
    ),
    k("dkim_enabled", Bool, Some("true"), Active),
    k("dmarc_enabled", Bool, Some("true"), Active),
    k(
        "dmarc_enforcement",
        Enum(&["none", "relaxed", "strict"]),
        Some("none"),
        Active,
    ),
    k("dns_servers", List, Some(""), Active),
    k("dns_timeout", Duration, Some("5s"), Active),
    k("dnsbl", List, Some(""), Active),
    k("dnsbl_threshold", Int, Some("1"), Active),
    k("dnsbl_timeout", Duration, Some("2s"), Active),
    // admission
    k("rate_limit_per_minute", Int, Some("60"), Active),
    k("rate_limit_burst", Int, Some("10"), Active),
    k("max_connections_per_ip", Int, Some("10"), Active),
    k("max_total_connections", Int, Some("1000"), Active),
    k("smtp_connection_rate_limit", Int, Some("120"), Active),
    k("smtp_message_rate_limit", Int, Some("600"), Active),
    k("smtp_recipient_rate_limit", Int, Some("3000"), Active),
    k("smtp_rate_window", Duration, Some("1m"), Active),
    k("trusted_networks", List, Some("127.0.0.0/8,::1"), Active),
    k("spool_max_backlog", Int, Some("100000"), Active),
    k("spool_max_bytes", Size, None, Active),
    k("ban_threshold", Int, Some("5"), Active),
    k("ban_window", Duration, Some("10m"), Active),
    k("ban_duration", Duration, Some("1h"), Active),
    k("pregreet_wait", Duration, Some("0s"), Active),
    k("smtp_write_timeout", Duration, Some("60s"), Active),
    k("smtp_session_timeout", Duration, Some("10m"), Active),
    // GoMail's `validation:` block
    k("validation.strict_headers", Bool, Some("false"), Active),
    k(
        "validation.reject_invalid_domains",
        Bool,
        Some("true"),
        Active,
    ),
    k("validation.check_spf", Bool, Some("true"), Active),
    k("validation.check_dkim", Bool, Some("true"), Active),
    // ACME (docs/tls-acme.md); DNS-01 through DigitalOcean
    // (`digitalocean_token` is GoMail's older name for the same token)
    k("acme_email", Str, None, Active),
    k("acme_directory_url", Str, Some("letsencrypt"), Active),
    k("acme_ca_file", Str, None, Active),
    k("acme_domains", List, Some(""), Active),
    k(
        "acme_challenge",
        Enum(&["dns-01", "http-01"]),
        Some("dns-01"),
        Active,
    ),
    k("acme_http_listen", Str, Some(":80"), Active),
    k("acme_renew_before", Duration, Some("0s"), Active),
    k("acme_dns_timeout", Duration, Some("10m"), Active),
    k("acme_timeout", Duration, Some("5m"), Active),
    k("do_api_token", Secret, None, Active),
    k(
        "digitalocean_api_url",
        Str,
        Some("https://api.digitalocean.com"),
        Active,
    ),
    // GoMail keys without meaning here
    k("mode", Str, None, Ignored),
    k("storage_mode", Str, None, Ignored),
    k("connection_pool_size", Int, None, Ignored),
    k("max_storage_size", Size, None, Ignored),
    k("dkim_selector", Str, None, Ignored),
    k("dkim_private_key_path", Str, None, Ignored),
    k("dkim_sign_outbound", Bool, None, Ignored),
    k("dmarc_reporting", Bool, None, Ignored),
    k("postfix_queue_directory", Str, None, Ignored),
    k("postfix_config_directory", Str, None, Ignored),
    k("log_rotation_size", Size, None, Ignored),
    k("log_rotation_age", Duration, None, Ignored),
    k("log_retention", Duration, None, Ignored),
    k("health_check_interval", Duration, None, Ignored),
    k("cleanup_interval", Duration, None, Ignored),
    k("cleanup_age", Duration, None, Ignored),
    k("digitalocean_token", Secret, None, Active),
    k("digitalocean_domain_id", Str, None, Ignored),
    k("debug_mode", Bool, None, Ignored),
    k("panic_recovery", Bool, None, Ignored),
    k("request_id_header", Str, None, Ignored),
    k("cors_enabled", Bool, None, Ignored),
    k("cors_origins", List, None, Ignored),
];

/// Looks a key up by its YAML name.
pub fn find(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The environment variable for a key: `MAIL_` + upper case, dots to `_`.
pub fn env_name(key: &str) -> String {
    format!("MAIL_{}", key.to_ascii_uppercase().replace(['.', '-'], "_"))
}

/// Parses a byte size: a number with an optional unit (B, KB, MB, GB, KiB, MiB, GiB).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mul)
}

/// The longest duration any key takes: ten years. Longer values would
/// overflow clock arithmetic somewhere, and mean "forever" anyway.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(3650 * 86_400);

/// Parses a duration the way Go's `time.ParseDuration` does, so GoMail's
/// files keep their meaning: a sequence of decimal numbers, each with an
/// optional fraction and a unit (`ns`, `us`, `µs` (U+00B5), `μs` (U+03BC),
/// `ms`, `s`, `m`, `h`), such as `300ms`, `1h30m`, `1.5h`, `.5h`, `1.h`,
/// with an optional leading `+`. gomail adds the unit `d` (24 h) and reads
/// a bare whole number as seconds; it refuses a negative duration (a
/// leading `-`), which no key can use.
///
/// A duration too long for the clock (over about 584 years) is
/// [`std::time::Duration::MAX`], so the caller's limit (at most
/// [`MAX_DURATION`]) refuses it as too long rather than as a syntax error.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return None;
    }
    // Nanoseconds, as Go counts them, but unsigned and wide enough that
    // a sum of in-range parts cannot wrap; past `u64` it is "too long".
    let mut total: u128 = 0;
    let mut too_long = false;
    while !rest.is_empty() {
        let (whole, after) = leading_int(rest);
        let had_whole = after.len() < rest.len();
        rest = after;
        let (frac, scale, had_frac) = match rest.strip_prefix('.') {
            Some(r) => {
                let (frac, scale, after) = leading_fraction(r);
                let had = after.len() < r.len();
                rest = after;
                (frac, scale, had)
            }
            None => (0, 1.0, false),
        };
        if !had_whole && !had_frac {
            return None;
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit: u64 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        match whole {
            Some(w) => total += u128::from(w) * u128::from(unit),
            None => too_long = true,
        }
        // As Go computes it: in floating point, truncated.
        total += (frac as f64 * (unit as f64 / scale)) as u128;
    }
    if too_long || total > u128::from(u64::MAX) {
        return Some(std::time::Duration::MAX);
    }
    Some(std::time::Duration::from_nanos(total as u64))
}

/// The leading decimal digits of `s` as a number (`None` past `u64`),
/// and what follows them.
fn leading_int(s: &str) -> (Option<u64>, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n = s[..end].bytes().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    });
    (n.or((end == 0).then_some(0)), &s[end..])
}

/// The leading digits of a fraction as Go's `leadingFraction` reads them:
/// the digits that fit in 63 bits as a number and its scale (10^digits);
/// later digits are read and ignored. Then what follows them.
fn leading_fraction(s: &str) -> (u64, f64, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (mut x, mut scale, mut overflow) = (0u64, 1.0f64, false);
    for d in s[..end].bytes() {
        if overflow {
            continue;
        }
        if x > (i64::MAX as u64) / 10 {
            overflow = true;
            continue;
        }
        let y = x * 10 + u64::from(d - b'0');
        if y > i64::MAX as u64 {
            overflow = true;
            continue;
        }
        x = y;
        scale *= 10.0;
    }
    (x, scale, &s[end..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as D;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("26214400"), Some(26_214_400));
        assert_eq!(parse_size("25MB"), Some(25_000_000));
        assert_eq!(parse_size("10 GiB"), Some(10 << 30));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_duration("30s"), Some(D::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Some(D::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Some(D::from_secs(604_800)));
        assert_eq!(parse_duration("250ms"), Some(D::from_millis(250)));
        assert_eq!(parse_duration("45"), Some(D::from_secs(45)));
        assert_eq!(parse_duration("soon"), None);
        // Go's forms, as GoMail files have them.
        assert_eq!(parse_duration("1.5h"), Some(D::from_secs(5400)));
        assert_eq!(parse_duration("2h45m"), Some(D::from_secs(9900)));
        assert_eq!(parse_duration("300ms"), Some(D::from_millis(300)));
        assert_eq!(parse_duration("1m0.5s"), Some(D::from_millis(60_500)));
        assert_eq!(parse_duration("10us"), Some(D::from_micros(10)));
        for bad in ["1..5h", "h", "1x", "-1s", "1e3s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    /// Every form Go's `time.ParseDuration` accepts (its own test table),
    /// and what it refuses; gomail adds `d` and bare seconds, and refuses
    /// negative durations.
    #[test]
    fn durations_take_every_go_form() {
        let ns = D::from_nanos;
        for (text, want) in [
            ("0", D::ZERO),
            ("0s", D::ZERO),
            ("+0", D::ZERO),
            ("5s", D::from_secs(5)),
            ("+5s", D::from_secs(5)),
            ("1478s", D::from_secs(1478)),
            ("5.0s", D::from_secs(5)),
            ("5.6s", D::from_millis(5600)),
            ("5.s", D::from_secs(5)),
            (".5s", D::from_millis(500)),
            ("1.h", D::from_secs(3600)),
            (".5h", D::from_secs(1800)),
            ("1.0s", D::from_secs(1)),
            ("1.00s", D::from_secs(1)),
            ("1.004s", D::from_millis(1004)),
            ("1.0040s", D::from_millis(1004)),
            ("100.00100s", D::from_millis(100_001)),
            ("10ns", ns(10)),
            ("11us", D::from_micros(11)),
            ("12\u{b5}s", D::from_micros(12)),
            ("12\u{3bc}s", D::from_micros(12)),
            ("1\u{3bc}s", D::from_micros(1)),
            ("13ms", D::from_millis(13)),
            ("14s", D::from_secs(14)),
            ("15m", D::from_secs(900)),
            ("16h", D::from_secs(57_600)),
            ("3h30m", D::from_secs(12_600)),
            ("10.5s4m", D::from_millis(250_500)),
            ("+2m3.4s", D::from_millis(123_400)),
            ("1h1m1s1ms1us1ns", ns(3_661_001_001_001)),
            ("39h9m14.425s", D::from_millis(140_954_425)),
            ("52763797000ns", ns(52_763_797_000)),
            ("0.3333333333333333333h", D::from_secs(1200)),
            ("9007199254740993ns", ns(9_007_199_254_740_993)),
            ("9223372036854775807ns", ns(9_223_372_036_854_775_807)),
            ("9223372036854775.807us", ns(9_223_372_036_854_775_807)),
            ("9223372036s854ms775us807ns", ns(9_223_372_036_854_775_807)),
            ("0.100000000000000000000h", D::from_secs(360)),
            ("0.830103483285477580700h", ns(2_988_372_539_827)),
            ("7d", D::from_secs(604_800)),
            ("1.5d", D::from_secs(129_600)),
            ("3650d", MAX_DURATION),
        ] {
            assert_eq!(parse_duration(text), Some(want), "{text}");
        }
        // What Go refuses (a unit is needed but for a bare number, which
        // gomail reads as seconds), and negative durations.
        for bad in [
            "",
            "-",
            "+",
            "s",
            ".",
            "-.",
            ".s",
            "+.s",
            "1.5",
            "3 s",
            "1sec",
            "\u{fffd}",
            "1\u{fffd}s",
            "-5s",
            "-0",
            "-2m3.4s",
            "+-1s",
            "1s-1s",
            " ",
            "1e3s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        // Too long for the clock: longer than any limit, never a wrap.
        assert!(parse_duration("9223372036854775808ns").unwrap() > MAX_DURATION);
        assert!(parse_duration("99999999999999999999h").unwrap() > MAX_DURATION);
        assert!(parse_duration("3650d1ns").unwrap() > MAX_DURATION);
    }

    #[test]
    fn durations_that_would_overflow_the_clock_are_refused() {
        let key = find("webhook_timeout").unwrap();
        let check =
            |t: &str| super::super::check(key, &super::super::Value::from_text(t, key.kind));
        assert!(check("3650d").is_ok());
        for huge in ["10000000000000000000", "3651d", "99999999999999999999h"] {
            let e = check(huge).unwrap_err();
            assert!(
                e.contains("10 years") || e.contains("expected a duration"),
                "{huge}: {e}"
            );
        }
        assert!(check("10000000000000000000").unwrap_err().contains("3650d"));
        assert!(check("99999999999999999999h")
            .unwrap_err()
            .contains("3650d"));
        assert!(check("-5s").unwrap_err().contains("negative"));
        assert!(check(".5h").is_ok() && check("1\u{3bc}s").is_ok());
    }

    #[test]
    fn env_names_follow_gomail() {
        assert_eq!(env_name("bearer_token"), "MAIL_BEARER_TOKEN");
        assert_eq!(env_name("http_timeouts.read"), "MAIL_HTTP_TIMEOUTS_READ");
    }

    #[test]
    fn every_default_parses() {
        for key in KEYS {
            if let Some(d) = key.default {
                let v = super::super::Value::from_text(d, key.kind);
                assert!(super::super::check(key, &v).is_ok(), "{}", key.name);
            }
        }
    }
}
