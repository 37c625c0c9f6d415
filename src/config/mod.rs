//! Configuration: YAML file, `MAIL_*` environment, command-line flags.
//!
//! Precedence is GoMail's: flags over environment over file over defaults.
//! Every value is checked against the key table ([`keys::KEYS`]); a bad one
//! is an error that names the key and where it came from (file and line,
//! environment variable, or flag). An unknown key is an error too, so a typo
//! never silently falls back to a default.

mod acme;
pub mod edit;
pub mod keys;
mod resolve;
mod yaml;

use resolve::resolve;
pub use resolve::{parse_dnsbl, ALLOWED_SUITES};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use keys::{Key, Kind, Status};

/// A configuration problem, with the key and its origin.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file could not be written (`config set`).
    #[error("cannot write config file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid YAML, or not a mapping of keys.
    #[error("{}: {message}", Origin::File(.path.clone(), *.line))]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The line (1-based), when known.
        line: Option<usize>,
        /// What is wrong, in gomail's words (a column for YAML syntax).
        message: String,
    },
    /// A key gomail does not know.
    #[error("{origin}: unknown key `{key}`{hint}")]
    UnknownKey {
        /// The key as written.
        key: String,
        /// Where it was written.
        origin: Origin,
        /// A suggestion, if a known key is close.
        hint: String,
    },
    /// A value of the wrong type or out of range.
    #[error("{origin}: key `{key}`: {reason}")]
    Invalid {
        /// The key.
        key: String,
        /// Where the value came from.
        origin: Origin,
        /// What is wrong and what is expected.
        reason: String,
    },
}

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A config file, at a line (1-based) when known.
    File(PathBuf, Option<usize>),
    /// A `MAIL_*` environment variable.
    Env(String),
    /// A command-line flag.
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File(p, Some(l)) => write!(f, "{}:{l}", p.display()),
            Origin::File(p, None) => write!(f, "{}", p.display()),
            Origin::Env(v) => write!(f, "environment variable {v}"),
            Origin::Flag(n) => write!(f, "flag --{n}"),
        }
    }
}

/// A raw setting value, before it is checked against its key's kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A scalar as text.
    Text(String),
    /// A YAML boolean.
    Bool(bool),
    /// A YAML integer.
    Int(u64),
    /// A YAML list of scalars.
    List(Vec<String>),
}

impl Value {
    /// Reads a value written as text (environment, flag, `config set`).
    pub fn from_text(s: &str, kind: Kind) -> Value {
        match kind {
            Kind::List => Value::List(
                s.split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect(),
            ),
            _ => Value::Text(s.to_string()),
        }
    }

    pub(super) fn from_yaml(v: &serde_norway::Value) -> Option<Value> {
        use serde_norway::Value as Y;
        Some(match v {
            Y::Null => return None,
            Y::Bool(b) => Value::Bool(*b),
            Y::Number(n) => match n.as_u64() {
                Some(u) => Value::Int(u),
                None => Value::Text(n.to_string()),
            },
            Y::String(s) => Value::Text(s.clone()),
            Y::Sequence(items) => Value::List(
                items
                    .iter()
                    .map(|i| match Value::from_yaml(i) {
                        Some(Value::Text(s)) => s,
                        Some(Value::Int(n)) => n.to_string(),
                        Some(Value::Bool(b)) => b.to_string(),
                        _ => String::new(),
                    })
                    .collect(),
            ),
            Y::Mapping(_) | Y::Tagged(_) => Value::Text(String::new()),
        })
    }

    pub(super) fn text_list(self) -> Vec<String> {
        match self {
            Value::List(items) => items,
            other => vec![other.text()],
        }
    }

    pub(super) fn text(&self) -> String {
        match self {
            Value::Text(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Int(n) => n.to_string(),
            Value::List(l) => l.join(","),
        }
    }
}

/// Checks a value against its key's kind; returns the reason if it fails.
pub fn check(key: &Key, v: &Value) -> Result<(), String> {
    // A list where one value belongs is refused, not read as its items
    // joined (`port: [1]` is no port).
    if let (Value::List(items), false) = (v, matches!(key.kind, Kind::List)) {
        return Err(match key.kind {
            Kind::Secret => "expected a single value, got a list (value not shown)".to_string(),
            kind => format!(
                "expected {}, got a list `[{}]`",
                yaml::expected(kind),
                items.join(", ")
            ),
        });
    }
    let text = v.text();
    let ok = match key.kind {
        Kind::Str => !matches!(v, Value::List(_)),
        // A token travels in HTTP headers: no line breaks or other control
        // characters, which no client could send back.
        Kind::Secret => !matches!(v, Value::List(_)) && !text.chars().any(char::is_control),
        Kind::Bool => matches!(v, Value::Bool(_)) || parse_bool(&text).is_some(),
        Kind::Int => text.parse::<u64>().is_ok(),
        Kind::Size => keys::parse_size(&text).is_some(),
        Kind::Duration => keys::parse_duration(&text).is_some_and(|d| d <= keys::MAX_DURATION),
        Kind::List => true,
        Kind::Enum(words) => words.contains(&text.as_str()),
        Kind::AutoOrInt => text == "auto" || text.parse::<u32>().is_ok_and(|n| n > 0),
    };
    if ok {
        return Ok(());
    }
    Err(match key.kind {
        Kind::Str => format!("expected a single value, got a list `{text}`"),
        // Never the value of a secret, even a wrong one.
        Kind::Secret if matches!(v, Value::List(_)) => {
            "expected a single value, got a list (value not shown)".to_string()
        }
        Kind::Secret => {
            "must not contain line breaks or other control characters (value not shown)".to_string()
        }
        Kind::Bool => format!("expected true or false, got `{text}`"),
        Kind::Int => format!("expected a whole number, got `{text}`"),
        Kind::Size => format!("expected a size such as 26214400 or 25MB, got `{text}`"),
        Kind::Duration => match keys::parse_duration(&text) {
            None if text.trim_start().starts_with('-') => {
                format!("`{text}` is negative; a duration is 0s or longer")
            }
            Some(_) => {
                format!("`{text}` is longer than 3650d (10 years), the most any duration may be")
            }
            None => format!("expected a duration such as 30s, 5m, 1h or 1.5h, got `{text}`"),
        },
        Kind::List => unreachable!(),
        Kind::Enum(words) => format!("expected one of {}, got `{text}`", words.join(", ")),
        Kind::AutoOrInt => format!("expected `auto` or a positive number, got `{text}`"),
    })
}

/// A boolean as the checks accept it: true/yes/on/1, false/no/off/0.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// Where `load` looks and what overrides it.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `--config`; when `None`, `MAIL_CONFIG`, then `/etc/gomail.yaml` if it exists.
    pub file: Option<PathBuf>,
    /// Flag overrides as (key, value) in YAML key names.
    pub flags: Vec<(String, String)>,
    /// Environment variables to read (normally `std::env::vars()`).
    pub env: Vec<(String, String)>,
}

impl Sources {
    /// The file to read, if any.
    pub fn config_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.file {
            return Some(p.clone());
        }
        if let Some((_, p)) = self.env.iter().find(|(k, _)| k == "MAIL_CONFIG") {
            return Some(PathBuf::from(p));
        }
        let etc = Path::new("/etc/gomail.yaml");
        etc.exists().then(|| etc.to_path_buf())
    }
}

/// The checked, resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file that was read, if any.
    pub path: Option<PathBuf>,
    /// SMTP listen addresses.
    pub smtp_listen: Vec<SocketAddr>,
    /// Number of shards.
    pub shards: usize,
    /// Pin each shard to a CPU.
    pub cpu_pinning: bool,
    /// The first domain mail is accepted for.
    pub primary_domain: String,
    /// More domains mail is accepted for.
    pub additional_domains: Vec<String>,
    /// The name in the SMTP greeting and `Received:` headers.
    pub mail_hostname: String,
    /// Largest message accepted, in octets.
    pub max_message_size: u64,
    /// Recipients per transaction.
    pub max_recipients: usize,
    /// Concurrent SMTP connections over all shards.
    pub max_total_connections: usize,
    /// `trusted_networks`: clients never limited or banned.
    pub trusted_networks: crate::admission::Networks,
    /// `trusted_proxies`: API peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: crate::admission::Networks,
    /// Root of the spool and the JSON store.
    pub data_dir: PathBuf,
    /// `debug`, `info`, `warn` or `error`.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: String,
    /// Log file; empty for standard error.
    pub log_file: String,
    /// TLS at all (STARTTLS and implicit TLS).
    pub tls_enabled: bool,
    /// Offer STARTTLS on `smtp_listen`.
    pub starttls_enabled: bool,
    /// Implicit-TLS SMTP listen addresses (port 465 style).
    pub smtps_listen: Vec<SocketAddr>,
    /// Default certificate chain (PEM).
    pub tls_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// More certificates, chosen by SNI.
    pub tls_cert_dir: Option<PathBuf>,
    /// `1.2` or `1.3`.
    pub tls_min_version: String,
    /// Allowed cipher suites (empty: all of [`ALLOWED_SUITES`]).
    pub tls_cipher_suites: Vec<String>,
    /// The control plane's address (`api_host:port`).
    pub api_listen: SocketAddr,
    /// Metrics also apart on `api_host:metrics_port` (`None`: `metrics_port: 0`).
    pub metrics_listen: Option<SocketAddr>,
    /// Serve metrics at all.
    pub metrics_enabled: bool,
    /// The metrics path.
    pub metrics_path: String,
    /// `http_timeouts.read`.
    pub http_read_timeout: std::time::Duration,
    /// Resolvers for the authentication checks (empty: the system's).
    pub dns_servers: Vec<SocketAddr>,
    /// Time allowed for one DNS query.
    pub dns_timeout: std::time::Duration,
    settings: BTreeMap<&'static str, (Value, Origin)>,
}

/// The keys `gomail server` has a flag of its own for (`--port`, …).
pub const SERVER_FLAGS: &[&str] = &[
    "port",
    "bearer_token",
    "log_level",
    "data_dir",
    "smtp_listen",
    "shards",
];

/// Loads and checks the configuration from `sources`.
pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
    let path = sources.config_path();
    let text = match &path {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    load_from(path.zip(text), sources)
}

/// [`load`] with the file's text given instead of read: what the config
/// check in `crate::fuzzing` feeds arbitrary YAML to.
pub(crate) fn load_text(path: &Path, text: &str, sources: &Sources) -> Result<Config, ConfigError> {
    load_from(Some((path.to_path_buf(), text.to_string())), sources)
}

fn load_from(file: Option<(PathBuf, String)>, sources: &Sources) -> Result<Config, ConfigError> {
    let mut settings: BTreeMap<&'static str, (Value, Origin)> = BTreeMap::new();
    for key in keys::KEYS {
        if let Some(d) = key.default {
            settings.insert(key.name, (Value::from_text(d, key.kind), Origin::Default));
        }
    }
    let path = file.as_ref().map(|(p, _)| p.clone());
    if let Some((path, text)) = &file {
        for yaml::Entry { name, value, line } in yaml::read(path, text)? {
            let origin = Origin::File(path.clone(), line);
            let Some(key) = keys::find(&name) else {
                return Err(unknown(name, origin));
            };
            // `key:` with no value leaves the key at its default (unset
            // when it has none), as if the line were not there.
            if let Some(v) = value {
                settings.insert(key.name, (v, origin));
            }
        }
    }
    for key in keys::KEYS {
        let var = keys::env_name(key.name);
        if let Some((_, v)) = sources.env.iter().find(|(k, _)| *k == var) {
            settings.insert(key.name, (Value::from_text(v, key.kind), Origin::Env(var)));
        }
    }
    for (name, v) in &sources.flags {
        // `gomail server` has a flag of its own for a few keys; the rest
        // come from `--set key=value`.
        let origin = if SERVER_FLAGS.contains(&name.as_str()) {
            Origin::Flag(name.replace(['_', '.'], "-"))
        } else {
            Origin::Flag(format!("set {name}"))
        };
        let Some(key) = keys::find(name) else {
            return Err(unknown(name.clone(), origin));
        };
        settings.insert(key.name, (Value::from_text(v, key.kind), origin));
    }
    for (name, (value, origin)) in &settings {
        let key = keys::find(name).expect("settings hold known keys");
        check(key, value).map_err(|reason| ConfigError::Invalid {
            key: name.to_string(),
            origin: origin.clone(),
            reason,
        })?;
    }
    resolve(path, settings)
}

fn unknown(key: String, origin: Origin) -> ConfigError {
    let close = keys::KEYS
        .iter()
        .map(|k| k.name)
        .find(|k| k.contains(key.as_str()) || key.contains(k) || edit_distance(k, &key) <= 2);
    ConfigError::UnknownKey {
        hint: close
            .map(|c| format!(" (did you mean `{c}`?)"))
            .unwrap_or_default(),
        key,
        origin,
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The 1-based line where a (possibly dotted) key is written.
pub(crate) fn line_of(text: &str, key: &str) -> Option<usize> {
    let is_key_line = |line: &str, k: &str| {
        line.trim_start()
            .strip_prefix(k)
            .is_some_and(|r| r.trim_start().starts_with(':'))
    };
    match key.split_once('.') {
        None => text
            .lines()
            .position(|l| !l.starts_with([' ', '\t']) && is_key_line(l, key))
            .map(|i| i + 1),
        Some((outer, inner)) => {
            let start = text
                .lines()
                .position(|l| !l.starts_with([' ', '\t']) && is_key_line(l, outer))?;
            text.lines()
                .enumerate()
                .skip(start + 1)
                .take_while(|(_, l)| l.starts_with([' ', '\t']) || l.trim().is_empty())
                .find(|(_, l)| is_key_line(l, inner))
                .map(|(i, _)| i + 1)
        }
    }
}

impl Config {
    /// Every domain mail is accepted for, primary first.
    pub fn domains(&self) -> Vec<String> {
        let mut d = vec![self.primary_domain.clone()];
        d.extend(self.additional_domains.iter().cloned());
        d
    }

    /// A setting's value as text, or `None` if unset. Secrets are shown:
    /// the operator asked for this one key.
    pub fn get(&self, key: &str) -> Option<String> {
        self.settings.get(key).map(|(v, _)| v.text())
    }

    /// A setting that `load` checked, with its key. Asking for a key that
    /// is not in the table, or as another kind than the table's, is a bug
    /// in gomail, not in the configuration: it panics (at start-up, where
    /// these are read).
    fn typed(&self, key: &str, kinds: &[Kind]) -> Option<&Value> {
        let k = keys::find(key).unwrap_or_else(|| panic!("`{key}` is not a configuration key"));
        let kind = std::mem::discriminant(&k.kind);
        assert!(
            kinds.iter().any(|w| std::mem::discriminant(w) == kind),
            "`{key}` is a {:?} setting, read as {kinds:?}",
            k.kind
        );
        self.settings.get(key).map(|(v, _)| v)
    }

    /// A boolean setting, read the way the check accepted it (true, yes,
    /// on, 1 / false, no, off, 0); unset is false.
    pub fn flag(&self, key: &str) -> bool {
        match self.typed(key, &[Kind::Bool]) {
            Some(Value::Bool(b)) => *b,
            Some(v) => parse_bool(&v.text()).expect("checked at load"),
            None => false,
        }
    }

    /// A whole-number setting (its default when not set).
    pub fn number(&self, key: &str) -> u64 {
        let v = self
            .typed(key, &[Kind::Int])
            .unwrap_or_else(|| panic!("`{key}` has no default"));
        v.text().parse().expect("checked at load")
    }

    /// A size setting in octets; `None` when unset (and without default).
    pub fn size(&self, key: &str) -> Option<u64> {
        let v = self.typed(key, &[Kind::Size])?;
        Some(keys::parse_size(&v.text()).expect("checked at load"))
    }

    /// A duration setting (its default when not set).
    pub fn duration(&self, key: &str) -> std::time::Duration {
        let v = self
            .typed(key, &[Kind::Duration])
            .unwrap_or_else(|| panic!("`{key}` has no default"));
        keys::parse_duration(&v.text()).expect("checked at load")
    }

    /// A text setting (string, secret or one of a set of words); `None`
    /// when unset or empty.
    pub fn text(&self, key: &str) -> Option<String> {
        let v = self.typed(key, &[Kind::Str, Kind::Secret, Kind::Enum(&[])])?;
        Some(v.text()).filter(|t| !t.is_empty())
    }

    /// A list setting, empty entries left out.
    pub fn list(&self, key: &str) -> Vec<String> {
        match self.typed(key, &[Kind::List]) {
            Some(Value::List(items)) => items.iter().filter(|i| !i.is_empty()).cloned().collect(),
            Some(v) => Value::from_text(&v.text(), Kind::List).text_list(),
            None => Vec::new(),
        }
    }

    /// Every setting as YAML, one line each, with where it came from.
    /// Secrets are replaced by `"********"`.
    pub fn show(&self) -> String {
        let mut out = String::new();
        for key in keys::KEYS {
            let Some((v, origin)) = self.settings.get(key.name) else {
                continue;
            };
            let shown = if key.kind == Kind::Secret {
                "\"********\"".to_string()
            } else if let Some(url) = without_password(&v.text()) {
                // A URL's `user:password@` is a secret too.
                edit::yaml_scalar(&Value::Text(url))
            } else {
                edit::yaml_scalar(v)
            };
            let note = match key.status {
                Status::Active => String::new(),
                Status::Pending => ", not active in this version".into(),
                Status::Ignored => ", GoMail key ignored by gomail".into(),
            };
            out.push_str(&format!("{}: {shown}  # {origin}{note}\n", key.name));
        }
        out.push_str(&format!(
            "# mail_hostname resolves to {}\n",
            self.mail_hostname
        ));
        out
    }

    /// How many settings come from the config file.
    pub fn file_settings(&self) -> usize {
        self.settings
            .values()
            .filter(|(_, o)| matches!(o, Origin::File(..)))
            .count()
    }

    /// The keys whose values differ between `self` and `other`, in the
    /// key table's order (names only: never a value, secrets included).
    pub fn changed_keys(&self, other: &Config) -> Vec<&'static str> {
        keys::KEYS
            .iter()
            .map(|k| k.name)
            .filter(|k| {
                self.settings.get(k).map(|(v, _)| v.text())
                    != other.settings.get(k).map(|(v, _)| v.text())
            })
            .collect()
    }

    /// Keys that are set (not defaults) but have no effect yet or at all;
    /// logged at start-up so an operator is never surprised.
    pub fn inactive_settings(&self) -> Vec<(String, Status, Origin)> {
        self.settings
            .iter()
            .filter(|(_, (_, o))| *o != Origin::Default)
            .filter_map(|(name, (_, o))| {
                let key = keys::find(name)?;
                (key.status != Status::Active).then(|| (name.to_string(), key.status, o.clone()))
            })
            .collect()
    }
}

/// `scheme://user:password@host…` with the password replaced by
/// `********`; `None` for anything else.
fn without_password(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (userinfo, host) = rest[..authority_end].rsplit_once('@')?;
    let (user, _) = userinfo.split_once(':')?;
    Some(format!(
        "{scheme}://{user}:********@{host}{}",
        &rest[authority_end..]
    ))
}

#[cfg(test)]
mod tests;
