//! `gomail config set`: change one key in the YAML file, keeping the rest of
//! the file (comments included) as the operator wrote it.

use std::path::Path;

use super::{check, keys, load, ConfigError, Origin, Sources, Value};

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
    let new = replace_key(&text, key, &yaml_scalar(&v));
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
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|source| ConfigError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Replaces (or adds) one key's line in YAML text.
fn replace_key(text: &str, key: &str, yaml: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    match key.split_once('.') {
        None => {
            let line = format!("{key}: {yaml}");
            match super::line_of(text, key) {
                Some(n) => lines[n - 1] = line,
                None => lines.push(line),
            }
        }
        Some((outer, inner)) => {
            let line = format!("  {inner}: {yaml}");
            if let Some(n) = super::line_of(text, key) {
                lines[n - 1] = line;
            } else if let Some(n) = super::line_of(text, outer) {
                lines.insert(n, line);
            } else {
                lines.push(format!("{outer}:"));
                lines.push(line);
            }
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_keeps_comments_and_handles_nesting() {
        let text = "# top\nport: 3000 # api\nhttp_timeouts:\n  read: 30s\n";
        let t = replace_key(text, "port", "4000");
        assert_eq!(t, "# top\nport: 4000\nhttp_timeouts:\n  read: 30s\n");
        let t = replace_key(text, "http_timeouts.read", "\"45s\"");
        assert!(t.contains("  read: \"45s\"\n"));
        let t = replace_key(text, "http_timeouts.idle", "\"1m\"");
        assert!(t.contains("http_timeouts:\n  idle: \"1m\"\n  read: 30s"));
        let t = replace_key("", "http_timeouts.idle", "\"1m\"");
        assert_eq!(t, "http_timeouts:\n  idle: \"1m\"\n");
    }
}
