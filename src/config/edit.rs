//! `gomail config set`: change one key in the YAML file, keeping the rest of
//! the file (comments included) as the operator wrote it.

use std::path::Path;

use super::{check, keys, load, ConfigError, Origin, Sources, Value};

/// Writes a value of `kind` as `config set` puts it in the file: numbers,
/// booleans, sizes, durations and words bare (`port: 4000`, `read: 45s`)
/// when YAML reads them back as written; text, secrets and anything
/// else quoted.
fn yaml_for(kind: keys::Kind, v: &Value) -> String {
    use keys::Kind;
    let Value::Text(t) = v else {
        return yaml_scalar(v);
    };
    if kind == Kind::Bool {
        if let Some(b) = super::parse_bool(t) {
            return b.to_string();
        }
    }
    let bare = !matches!(kind, Kind::Str | Kind::Secret | Kind::List)
        && !t.is_empty()
        && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && serde_norway::from_str::<serde_norway::Value>(t)
            .ok()
            .and_then(|y| Value::from_yaml(&y))
            .is_some_and(|back| match (kind, back) {
                (Kind::Bool, Value::Bool(_)) => true,
                (Kind::Bool, _) => false,
                (_, Value::Bool(_)) => false,
                (_, back) => back.text() == *t,
            });
    if bare {
        t.clone()
    } else {
        quote(t)
    }
}

/// Writes a value as a YAML scalar or flow list.
pub fn yaml_scalar(v: &Value) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Text(s) => quote(s),
        Value::List(items) => format!(
            "[{}]",
            items
                .iter()
                .map(|s| quote(s))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Sets `key` to `value` in the file at `path` (created if missing, mode
/// 0600 since it may hold secrets). The new file is checked as a whole
/// before it replaces the old one, so a bad value never lands on disk.
pub fn set_in_file(path: &Path, key: &str, value: &str) -> Result<(), ConfigError> {
    let flag = Origin::Flag(format!("config set {key}"));
    let Some(k) = keys::find(key) else {
        return Err(super::unknown(key.to_string(), flag));
    };
    let v = Value::from_text(value, k.kind);
    check(k, &v).map_err(|reason| ConfigError::Invalid {
        key: key.to_string(),
        origin: flag,
        reason,
    })?;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let new =
        replace_key(&text, key, &yaml_for(k.kind, &v)).map_err(|reason| ConfigError::Invalid {
            key: key.to_string(),
            origin: Origin::File(
                path.to_path_buf(),
                super::line_of(&text, key).or_else(|| {
                    key.split_once('.')
                        .and_then(|(outer, _)| super::line_of(&text, outer))
                }),
            ),
            reason,
        })?;
    let tmp = path.with_extension("yaml.tmp");
    crate::fsutil::write_synced(&tmp, new.as_bytes(), 0o600).map_err(|source| {
        ConfigError::Write {
            path: tmp.clone(),
            source,
        }
    })?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    let checked = load(&Sources {
        file: Some(tmp.clone()),
        ..Sources::default()
    });
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&tmp);
        return Err(in_file(e, &tmp, path));
    }
    std::fs::rename(&tmp, path).map_err(|source| ConfigError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// An error found in the new file `tmp`, told as the file it replaces.
fn in_file(e: ConfigError, tmp: &Path, path: &Path) -> ConfigError {
    let file = |p: std::path::PathBuf| if p == tmp { path.to_path_buf() } else { p };
    let origin = |o: Origin| match o {
        Origin::File(p, line) => Origin::File(file(p), line),
        other => other,
    };
    match e {
        ConfigError::Syntax {
            path,
            line,
            message,
        } => ConfigError::Syntax {
            path: file(path),
            line,
            message,
        },
        ConfigError::UnknownKey {
            key,
            origin: o,
            hint,
        } => ConfigError::UnknownKey {
            key,
            origin: origin(o),
            hint,
        },
        ConfigError::Invalid {
            key,
            origin: o,
            reason,
        } => ConfigError::Invalid {
            key,
            origin: origin(o),
            reason,
        },
        other => other,
    }
}

/// The ` # comment` at the end of a `key: value` line, if any (a `#`
/// inside quotes is part of the value).
fn trailing_comment(line: &str) -> Option<&str> {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if line[..i].ends_with([' ', '\t']) => {
                let start = line[..i].trim_end_matches([' ', '\t']).len();
                return Some(&line[start..]);
            }
            _ => {}
        }
    }
    None
}

/// The number of lines after line `n` (1-based) that carry its key's value
/// too: a block list (`- item` lines, indented or at the key's own indent),
/// a block scalar (`|`, `>`) or a nested mapping, i.e. the lines indented
/// deeper than the key. Blank lines count only between such lines.
fn value_lines(lines: &[String], n: usize) -> usize {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let own = indent(&lines[n - 1]);
    let mut last = 0;
    for (k, l) in lines[n..].iter().enumerate() {
        let t = l.trim_start();
        if t.is_empty() {
            continue;
        }
        let item = t == "-" || t.starts_with("- ");
        if indent(l) > own || (item && indent(l) == own) {
            last = k + 1;
        } else {
            break;
        }
    }
    last
}

/// The value written on a `key: value` line, without its comment.
fn inline_value(line: &str) -> &str {
    let rest = line.split_once(':').map_or("", |(_, r)| r);
    let rest = match trailing_comment(rest) {
        Some(c) => &rest[..rest.len() - c.len()],
        None => rest,
    };
    rest.trim()
}

/// Replaces (or adds) one key in YAML text, on one line; the lines that
/// carried its old value go, a comment at the end of its line stays, and
/// so do the file's line endings. An error says why the file cannot be
/// edited this way.
fn replace_key(text: &str, key: &str, yaml: &str) -> Result<String, String> {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut put = |n: usize, line: String| {
        let comment = trailing_comment(&lines[n - 1]).unwrap_or("").to_string();
        let extra = value_lines(&lines, n);
        lines.splice(n - 1..n + extra, [line + &comment]);
    };
    match key.split_once('.') {
        None => {
            let line = format!("{key}: {yaml}");
            match super::line_of(text, key) {
                Some(n) => put(n, line),
                None => lines.push(line),
            }
        }
        Some((outer, inner)) => {
            let line = format!("  {inner}: {yaml}");
            if let Some(n) = super::line_of(text, key) {
                put(n, line);
            } else if let Some(n) = super::line_of(text, outer) {
                if !inline_value(&lines[n - 1]).is_empty() {
                    return Err(format!(
                        "`{outer}` is written on one line; write it as a block (`{outer}:` then one `  {inner}: …` line per key) for config set"
                    ));
                }
                lines.insert(n, line);
            } else {
                lines.push(format!("{outer}:"));
                lines.push(line);
            }
        }
    }
    let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let mut out = lines.join(eol);
    out.push_str(eol);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_keeps_comments_and_handles_nesting() {
        let text = "# top\nport: 3000 # api\nhttp_timeouts:\n  read: 30s\n";
        let t = replace_key(text, "port", "4000").unwrap();
        assert_eq!(t, "# top\nport: 4000 # api\nhttp_timeouts:\n  read: 30s\n");
        let t = replace_key("bearer_token: \"a#b\"  # secret\n", "bearer_token", "\"c\"").unwrap();
        assert_eq!(t, "bearer_token: \"c\"  # secret\n");
        let t = replace_key("primary_domain: a#b\n", "primary_domain", "\"c\"").unwrap();
        assert_eq!(t, "primary_domain: \"c\"\n");
        let t = replace_key(text, "http_timeouts.read", "\"45s\"").unwrap();
        assert!(t.contains("  read: \"45s\"\n"));
        let t = replace_key(text, "http_timeouts.idle", "\"1m\"").unwrap();
        assert!(t.contains("http_timeouts:\n  idle: \"1m\"\n  read: 30s"));
        let t = replace_key("", "http_timeouts.idle", "\"1m\"").unwrap();
        assert_eq!(t, "http_timeouts:\n  idle: \"1m\"\n");
    }

    #[test]
    fn block_values_are_replaced_whole_and_line_endings_kept() {
        let text = "a: 1\nsmtp_listen:\n  - \"0.0.0.0:25\"\n\n  - \"[::]:25\"\nport: 3000\n";
        let t = replace_key(text, "smtp_listen", "[\"127.0.0.1:25\"]").unwrap();
        assert_eq!(t, "a: 1\nsmtp_listen: [\"127.0.0.1:25\"]\nport: 3000\n");
        let text = "tls_cipher_suites:\n- A\n- B\n\n# next\nport: 1\n";
        let t = replace_key(text, "tls_cipher_suites", "[\"C\"]").unwrap();
        assert_eq!(t, "tls_cipher_suites: [\"C\"]\n\n# next\nport: 1\n");
        let text = "admin_token: >-\n  long\n  token\nport: 1\n";
        let t = replace_key(text, "admin_token", "\"x\"").unwrap();
        assert_eq!(t, "admin_token: \"x\"\nport: 1\n");
        let text = "http_timeouts:\n  read: >-\n    30s\n  idle: 1m\n";
        let t = replace_key(text, "http_timeouts.read", "45s").unwrap();
        assert_eq!(t, "http_timeouts:\n  read: 45s\n  idle: 1m\n");
        let t = replace_key("port: 1\r\n# c\r\n", "port", "2").unwrap();
        assert_eq!(t, "port: 2\r\n# c\r\n");
        let e = replace_key("http_timeouts: {read: 30s}\n", "http_timeouts.idle", "1m");
        assert!(e.unwrap_err().contains("written on one line"));
    }

    #[test]
    fn numbers_stay_numbers() {
        use keys::Kind;
        let t = |kind, s: &str| yaml_for(kind, &Value::from_text(s, kind));
        assert_eq!(t(Kind::Int, "10"), "10");
        assert_eq!(t(Kind::Bool, "true"), "true");
        assert_eq!(t(Kind::Bool, "yes"), "true");
        assert_eq!(t(Kind::Duration, "45s"), "45s");
        assert_eq!(t(Kind::Size, "25MB"), "25MB");
        assert_eq!(t(Kind::Enum(&["1.2", "1.3"]), "1.2"), "\"1.2\"");
        assert_eq!(t(Kind::Enum(&["strict"]), "strict"), "strict");
        assert_eq!(t(Kind::Str, "123"), "\"123\"");
        assert_eq!(t(Kind::Secret, "abc"), "\"abc\"");
        assert_eq!(t(Kind::Int, "0x10"), "\"0x10\"");
    }
}
