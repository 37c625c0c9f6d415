//! The configuration loader on arbitrary YAML text: it refuses what it
//! cannot use with a message naming the key, and what it accepts can be
//! read as every key's kind and used as the server uses it (clock
//! arithmetic, sizes, the settings built from it) without a panic.
//!
//! Input layout: the text of a config file (not UTF-8: nothing to load,
//! as `load` could not read it either).

use std::path::Path;
use std::time::{Instant, SystemTime};

use crate::config::keys::{self, Kind};
use crate::config::{load_text, Sources};

/// See the module docs.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cfg = match load_text(Path::new("fuzz.yaml"), text, &Sources::default()) {
        Ok(cfg) => cfg,
        Err(e) => {
            let shown = e.to_string();
            assert!(!shown.is_empty());
            return;
        }
    };
    let now = Instant::now();
    let wall = SystemTime::now();
    for key in keys::KEYS {
        let set = cfg.get(key.name).is_some();
        match key.kind {
            Kind::Bool => {
                cfg.flag(key.name);
            }
            Kind::Int if set => {
                cfg.number(key.name);
            }
            Kind::Duration if set => {
                let d = cfg.duration(key.name);
                assert!(
                    now.checked_add(d).is_some() && wall.checked_add(d).is_some(),
                    "{} = {d:?} overflows the clock",
                    key.name
                );
            }
            Kind::Size if set => {
                let v = cfg.get(key.name).unwrap_or_default();
                assert!(
                    keys::parse_size(&v).is_some(),
                    "{} = {v:?} loaded but is no size",
                    key.name
                );
            }
            Kind::Str | Kind::Secret | Kind::Enum(_) => {
                cfg.text(key.name);
            }
            Kind::List => {
                cfg.list(key.name);
            }
            _ => {}
        }
    }
    let auth = crate::auth::AuthSettings::from_config(&cfg);
    let admission = crate::admission::Settings::from_config(&cfg);
    for d in [
        auth.dnsbl_timeout,
        admission.rate_window,
        admission.ban_window,
        admission.ban_duration,
        admission.pregreet_wait,
        admission.write_timeout,
        admission.session_timeout,
    ] {
        assert!(now.checked_add(d).is_some(), "{d:?} overflows the clock");
    }
    if let Some(url) = cfg.text("api_endpoint") {
        let _ = crate::delivery::webhook::Endpoint::parse(&url);
    }
    if let Some(s) = cfg.text("webhook_secret") {
        let _ = crate::delivery::sign::Secret::parse_all(&s);
    }
    if let Some(k) = cfg.text("webhook_signing_key") {
        let _ = crate::delivery::sign::SigningKey::parse(&k);
    }
    // One line per setting, and one for the hostname: no value breaks a line.
    let shown = cfg.show();
    let settings = keys::KEYS
        .iter()
        .filter(|k| cfg.get(k.name).is_some())
        .count();
    assert_eq!(
        shown.lines().count(),
        settings + 1,
        "config show broke a line:\n{shown}"
    );
    assert!(cfg.changed_keys(&cfg).is_empty());
}
