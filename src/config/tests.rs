use super::*;
use std::io::Write;

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn load_text(
    text: &str,
    env: &[(&str, &str)],
    flags: &[(&str, &str)],
) -> Result<Config, ConfigError> {
    let f = file(text);
    load(&Sources {
        file: Some(f.path().to_path_buf()),
        env: env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        flags: flags
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    })
}

#[test]
fn defaults_need_no_file() {
    let c = load(&Sources::default()).unwrap();
    assert_eq!(c.smtp_listen, vec!["127.0.0.1:2525".parse().unwrap()]);
    assert_eq!(c.primary_domain, "localhost");
    assert_eq!(c.data_dir, PathBuf::from("./data"));
    assert_eq!(c.max_message_size, 26_214_400);
    assert!(c.shards >= 1);
}

#[test]
fn gomail_example_file_loads() {
    // GoMail's documented example, abridged but with its key spellings.
    let c = load_text(
        "port: 3000\nmode: production\nbearer_token: \"tok\"\nprimary_domain: example.com\nmail_hostname: mail.example.com\n\
         additional_domains:\n  - example.org\n  - example.net\napi_endpoint: https://app.example/webhook\nwebhook_timeout: 30s\n\
         webhook_retries: 3\nwebhook_retry_delay: 5s\ndata_dir: /tmp/x\nstorage_mode: json\nmax_storage_size: 10GB\ntls_min_version: \"1.2\"\n\
         tls_cipher_suites:\n  - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\nspf_enforcement: strict\ndmarc_enforcement: relaxed\n\
         max_message_size: 26214400\nhttp_timeouts:\n  read: 30s\n  shutdown: 30s\nlog_format: json\nlog_rotation_age: 7d\ncors_origins:\n  - https://a\n",
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(
        c.domains(),
        vec!["example.com", "example.org", "example.net"]
    );
    assert_eq!(c.mail_hostname, "mail.example.com");
    let inactive: Vec<String> = c
        .inactive_settings()
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    assert!(inactive.contains(&"mode".to_string()));
    // The API's timeouts all take effect.
    assert!(!inactive.iter().any(|k| k.starts_with("http_timeouts.")));
    assert!(!inactive.contains(&"api_endpoint".to_string()));
}

#[test]
fn unknown_key_names_key_and_line() {
    let err = load_text(
        "primary_domain: example.com\nmax_mesage_size: 10\n",
        &[],
        &[],
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.ends_with(":2: unknown key `max_mesage_size` (did you mean `max_message_size`?)"),
        "{msg}"
    );
}

#[test]
fn wrong_type_names_key_and_line() {
    let err = load_text(
        "# c\nprimary_domain: example.com\nmax_message_size: lots\n",
        &[],
        &[],
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(":3: key `max_message_size`: expected a size"),
        "{msg}"
    );
    let err = load_text("http_timeouts:\n  read: 30s\n  idle: forever\n", &[], &[]).unwrap_err();
    assert!(
        err.to_string().contains(":3: key `http_timeouts.idle`"),
        "{err}"
    );
    let err = load_text("cpu_pinning: maybe\n", &[], &[]).unwrap_err();
    assert!(err.to_string().contains("expected true or false"), "{err}");
}

#[test]
fn impossible_values_are_refused() {
    for (text, key) in [
        ("smtp_listen: [\"nowhere\"]\n", "smtp_listen"),
        ("max_message_size: 10\n", "max_message_size"),
        ("primary_domain: \"not a domain\"\n", "primary_domain"),
        (
            "tls_cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
            "tls_cipher_suites",
        ),
        ("shards: 0\n", "shards"),
        ("port: 70000\n", "port"),
        ("trusted_networks: [\"10.0.0.0/33\"]\n", "trusted_networks"),
        ("trusted_proxies: [\"proxy\"]\n", "trusted_proxies"),
        ("smtp_rate_window: 0s\n", "smtp_rate_window"),
        ("ban_duration: 0s\n", "ban_duration"),
        ("ban_duration: 4000d\n", "ban_duration"),
        ("admin_token: x\nbearer_token: x\n", "admin_token"),
        // Every delivery would time out at once.
        ("webhook_timeout: 0s\n", "webhook_timeout"),
        // Under two spool segments per shard: every message deferred.
        ("spool_max_bytes: 10MB\nshards: 1\n", "spool_max_bytes"),
        ("spool_max_bytes: 0\nshards: 1\n", "spool_max_bytes"),
        ("spool_max_bytes: 100MiB\nshards: 4\n", "spool_max_bytes"),
    ] {
        let err = load_text(text, &[], &[]).unwrap_err().to_string();
        assert!(err.contains(&format!("key `{key}`")), "{text}: {err}");
        assert!(err.contains(":1:"), "{text}: {err}");
    }
    assert!(load_text("spool_max_bytes: 128MiB\nshards: 2\n", &[], &[]).is_ok());
    // `0s` would close every API connection at once.
    for key in ["http_timeouts.write", "http_timeouts.idle"] {
        let leaf = key.rsplit('.').next().unwrap();
        let text = format!("http_timeouts:\n  {leaf}: 0s\n");
        let err = load_text(&text, &[], &[]).unwrap_err().to_string();
        assert!(
            err.contains(&format!("key `{key}`: must be longer than 0s")),
            "{text}: {err}"
        );
    }
}

#[test]
fn a_key_set_twice_names_both_lines() {
    let err = load_text(
        "port: 1\nmax_message_size: 2MB\n# x\nmax_message_size: 1MB\n",
        &[],
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("key `max_message_size` is set more than once (lines 2, 4)"),
        "{err}"
    );
}

#[test]
fn a_bad_secret_is_refused_without_its_value() {
    for text in [
        "admin_token: [\"SECRETLIST-1\", \"SECRETLIST-2\"]\n",
        "admin_token: \"SECRET\\u0001CTRL\"\n",
        "bearer_token: \"SECRET\\nLINE\"\n",
        "webhook_secret: [\"SECRETLIST-1\"]\n",
    ] {
        let err = load_text(text, &[], &[]).unwrap_err().to_string();
        assert!(err.contains(":1: key `"), "{text}: {err}");
        assert!(err.contains("(value not shown)"), "{text}: {err}");
        assert!(!err.contains("SECRET"), "{text}: {err}");
    }
}

#[test]
fn a_set_flag_is_named_as_written() {
    let err = load_text("", &[], &[("smtp_rate_window", "0s")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("flag --set smtp_rate_window"), "{err}");
    let err = load_text("", &[], &[("port", "70000")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("flag --port"), "{err}");
}

#[test]
fn syntax_errors_carry_the_line() {
    let err = load_text("primary_domain: a\n  bad: [\n", &[], &[]).unwrap_err();
    assert!(
        err.to_string().contains(".yaml:2: YAML syntax error"),
        "{err}"
    );
}

#[test]
fn flags_beat_env_beat_file() {
    let c = load_text(
        "primary_domain: file.example\nshards: 3\n",
        &[("MAIL_PRIMARY_DOMAIN", "env.example"), ("MAIL_SHARDS", "2")],
        &[("shards", "1")],
    )
    .unwrap();
    assert_eq!(c.primary_domain, "env.example");
    assert_eq!(c.shards, 1);
    let err = load_text("", &[("MAIL_MAX_MESSAGE_SIZE", "huge")], &[]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("environment variable MAIL_MAX_MESSAGE_SIZE: key `max_message_size`"),
        "{err}"
    );
    let c = load_text(
        "",
        &[("MAIL_ADDITIONAL_DOMAINS", "a.example, b.example")],
        &[],
    )
    .unwrap();
    assert_eq!(c.additional_domains, vec!["a.example", "b.example"]);
}

#[test]
fn show_hides_secrets_and_get_returns_them() {
    let c = load_text(
        "bearer_token: s3cret\nwebhook_secret: whsec_abc\n",
        &[],
        &[],
    )
    .unwrap();
    let shown = c.show();
    assert!(
        !shown.contains("s3cret") && !shown.contains("whsec_abc"),
        "{shown}"
    );
    assert!(shown.contains("bearer_token: \"********\""));
    // Credentials in api_endpoint are refused, without showing them.
    for url in [
        "https://hook:hunter2pw@receiver.example/in",
        "http://hook:hunter2pw@127.0.0.1:8080/in",
    ] {
        let err = load_text(&format!("api_endpoint: \"{url}\"\n"), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("api_endpoint") && err.contains(":1:"), "{err}");
        assert!(!err.contains("hunter2pw"), "{err}");
    }
    assert_eq!(
        super::without_password("https://u:p@h.example/x").as_deref(),
        Some("https://u:********@h.example/x")
    );
    assert_eq!(c.get("bearer_token").as_deref(), Some("s3cret"));
}

#[test]
fn set_checks_before_writing() {
    let f = file("# keep me\nprimary_domain: example.com\n");
    edit::set_in_file(f.path(), "max_message_size", "10MB").unwrap();
    edit::set_in_file(f.path(), "http_timeouts.read", "45s").unwrap();
    let text = std::fs::read_to_string(f.path()).unwrap();
    assert!(text.starts_with("# keep me\n"), "{text}");
    let c = load(&Sources {
        file: Some(f.path().into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.max_message_size, 10_000_000);
    assert_eq!(c.get("http_timeouts.read").as_deref(), Some("45s"));
    let before = std::fs::read_to_string(f.path()).unwrap();
    assert!(edit::set_in_file(f.path(), "max_message_size", "lots").is_err());
    assert!(edit::set_in_file(f.path(), "primary_domain", "bad domain").is_err());
    assert!(edit::set_in_file(f.path(), "no_such_key", "1").is_err());
    assert_eq!(std::fs::read_to_string(f.path()).unwrap(), before);
}

#[test]
fn every_key_is_documented() {
    let doc = include_str!("../../docs/configuration.md");
    for key in keys::KEYS {
        assert!(
            doc.contains(&format!("| `{}` |", key.name)),
            "docs/configuration.md lacks `{}`",
            key.name
        );
    }
}

#[test]
fn auth_switches_take_every_boolean_spelling_the_check_accepts() {
    let cfg = load_text(
        "spf_enabled: yes\ndkim_enabled: \"on\"\ndmarc_enabled: \"1\"\n",
        &[],
        &[],
    )
    .unwrap();
    let a = crate::auth::AuthSettings::from_config(&cfg);
    assert!(a.spf && a.dkim && a.dmarc);
    let cfg = load_text("", &[("MAIL_SPF_ENABLED", "no")], &[]).unwrap();
    assert!(!crate::auth::AuthSettings::from_config(&cfg).spf);
}

#[test]
fn typed_reads_use_the_checks_spellings_and_the_tables_defaults() {
    let c = load_text(
        "spf_enabled: \"no\"\ndkim_enabled: on\nwebhook_retries: 7\ndnsbl: [\"a.example*2\"]\nwebhook_mode: hybrid\n",
        &[("MAIL_DMARC_ENABLED", "0"), ("MAIL_WEBHOOK_TIMEOUT", "2m")],
        &[],
    )
    .unwrap();
    assert!(!c.flag("spf_enabled"));
    assert!(c.flag("dkim_enabled"));
    assert!(!c.flag("dmarc_enabled"));
    assert_eq!(c.number("webhook_retries"), 7);
    assert_eq!(c.number("spool_max_backlog"), 100_000, "default");
    assert_eq!(
        c.duration("webhook_timeout"),
        std::time::Duration::from_secs(120)
    );
    assert_eq!(
        c.duration("dnsbl_timeout"),
        std::time::Duration::from_secs(2)
    );
    assert_eq!(c.list("dnsbl"), ["a.example*2"]);
    assert_eq!(c.text("webhook_mode").as_deref(), Some("hybrid"));
    assert_eq!(c.text("api_endpoint"), None, "unset");
    assert_eq!(c.text("bearer_token"), None, "unset secret");
}

#[test]
#[should_panic(expected = "read as")]
fn reading_a_key_as_another_kind_is_a_bug() {
    load(&Sources::default()).unwrap().number("spf_enabled");
}

#[test]
fn a_key_written_with_no_value_keeps_its_default() {
    let c = load_text(
        "spool_max_backlog:\ndnsbl_timeout:\nspf_enabled:\napi_endpoint:\n",
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(c.number("spool_max_backlog"), 100_000);
    assert_eq!(
        c.duration("dnsbl_timeout"),
        std::time::Duration::from_secs(2)
    );
    assert!(c.flag("spf_enabled"), "default true");
    assert_eq!(c.text("api_endpoint"), None);
}

/// Every error a file can give names its line (and the key, when there is
/// one) in gomail's words: never the YAML parser's or serde's.
#[test]
fn every_file_error_names_the_line_in_our_words() {
    for (text, line, says) in [
        // A list, a mapping or a nested list where one value belongs.
        ("port: [1]\n", 1, "key `port`: expected a whole number, got a list"),
        ("port:\n  - 1\n  - 2\n", 1, "key `port`: expected a whole number, got a list"),
        ("# c\nport: {a: 1}\n", 2, "key `port`: expected a whole number, got a mapping"),
        ("smtp_listen: {a: 1}\n", 1, "key `smtp_listen`: expected a list, got a mapping"),
        ("smtp_listen:\n  a: 1\n", 1, "key `smtp_listen`: expected a list, got a mapping"),
        ("dns_servers: [[a]]\n", 1, "key `dns_servers`: expected a list of single values, but item 1 is a list"),
        ("smtp_listen: [\"127.0.0.1:25\", {a: 1}]\n", 1, "key `smtp_listen`: expected a list of single values, but item 2 is a mapping"),
        ("http_timeouts:\n  read: [1]\n", 2, "key `http_timeouts.read`: expected a duration"),
        ("http_timeouts:\n  read:\n    deep: 1\n", 2, "key `http_timeouts.read`: expected a duration such as 30s, 5m, 1h or 1.5h, got a mapping"),
        ("http_timeouts: 5\n", 1, "key `http_timeouts`: expected a mapping of"),
        ("validation: [1]\n", 1, "key `validation`: expected a mapping of"),
        ("primary_domain: {a: b}\n", 1, "key `primary_domain`: expected a single value, got a mapping"),
        ("port: !custom 5\n", 1, "key `port`: YAML tags"),
        // Values the YAML types refuse.
        ("port: !!int x\n", 1, "key `port`: expected an integer, got"),
        ("port: 1\nhttp_timeouts:\n  read: !!int x\n", 3, "key `http_timeouts.read`: expected an integer"),
        ("port: 99999999999999999999999\n", 1, "key `port`: `99999999999999999999999` is too large"),
        // Quoted keys and flow mappings.
        ("\"port\": x\n", 1, "key `port`: expected a whole number, got `x`"),
        ("data_dir: d\n'port' : x\n", 2, "key `port`"),
        ("{port: x}\n", 1, "key `port`: expected a whole number"),
        ("validation: {strict_headers: maybe}\n", 1, "key `validation.strict_headers`: expected true or false"),
        ("http_timeouts: {read: x}\n", 1, "key `http_timeouts.read`"),
        // Keys that are not names, and files that are not one mapping.
        ("1: 2\n", 1, "`1` is not a key name"),
        ("port: 1\n? [a]\n: 1\n", 2, "a key must be a name such as `port`, got a list"),
        ("- 1\n- 2\n", 1, "expected a mapping of `key: value` lines, got a list"),
        ("# only\njust a string\n", 2, "expected a mapping of `key: value` lines, got a single value"),
        ("port: 1\n---\nport: 2\n", 2, "one YAML document"),
        // YAML syntax.
        ("a: b: c\n", 1, "YAML syntax error"),
        ("port: 1\n  bad: 2\n", 2, "YAML syntax error"),
        ("foo: [\n", 2, "YAML syntax error"),
        ("\t port: 1\n", 1, "YAML syntax error"),
        ("x: &a 1\ny: *b\n", 2, "YAML syntax error"),
        ("port: 1\n\u{1}\n", 2, "YAML syntax error"),
        ("http_timeouts:\n  read: 1s\n  1: 2\n", 3, "`1` is not a key name"),
        ("port: 1\nmax_message_size: 2MB\nmax_message_size: 1MB\n", 3, "key `max_message_size` is set more than once (lines 2, 3)"),
        ("http_timeouts:\n  read: 1s\n  read: 2s\n", 3, "set more than once"),
    ] {
        let err = load_text(text, &[], &[]).unwrap_err().to_string();
        assert!(err.contains(&format!(".yaml:{line}: ")), "{text:?}: {err}");
        assert!(err.contains(says), "{text:?}: {err}");
        for raw in [
            "invalid type", "invalid value", "Sequence", "Mapping", "Number(", "String(",
            " at line ", "deserializ", "u128", "position ",
        ] {
            assert!(!err.contains(raw), "{text:?}: {err}");
        }
    }
}
