//! Reading the config file: YAML text to (dotted key, value, line) in file
//! order. Every problem is told as `file:line:` with the key when there is
//! one, in gomail's words: never the YAML parser's or serde's, which speak
//! of `Sequence`, `u128` and "invalid type" to someone who wrote a config
//! file. Checking a value against its key's kind is `super::check`'s job;
//! this module checks only the shape (one value, a list, a mapping).

use std::path::Path;

use serde_norway::Value as Y;

use super::keys::{self, Kind};
use super::{ConfigError, Origin, Value};

/// One setting as the file writes it.
pub(super) struct Entry {
    /// The dotted key (`http_timeouts.read`), as written.
    pub(super) name: String,
    /// Its value; `None` for `key:` with nothing after it.
    pub(super) value: Option<Value>,
    /// Where it is written (1-based), when it can be found.
    pub(super) line: Option<usize>,
}

/// Flattens the YAML file into its settings, in file order.
pub(super) fn read(path: &Path, text: &str) -> Result<Vec<Entry>, ConfigError> {
    let syntax = |line: Option<usize>, message: String| ConfigError::Syntax {
        path: path.to_path_buf(),
        line,
        message,
    };
    let invalid = |key: &str, line: Option<usize>, reason: String| ConfigError::Invalid {
        key: key.to_string(),
        origin: Origin::File(path.to_path_buf(), line),
        reason,
    };
    let doc: Y = serde_norway::from_str(text).map_err(|e| parse_error(path, text, &e))?;
    let map = match doc {
        Y::Null => return Ok(Vec::new()),
        Y::Mapping(m) => m,
        other => {
            return Err(syntax(
                first_content_line(text),
                format!(
                    "expected a mapping of `key: value` lines, got {}",
                    shape(&other)
                ),
            ))
        }
    };
    let mut out = Vec::new();
    for (k, v) in map {
        let k = key_name(&k).map_err(|m| syntax(key_line(text, &k, None), m))?;
        let line = find_line(text, &k, None);
        let children: Vec<&str> = keys::KEYS
            .iter()
            .filter_map(|key| key.name.strip_prefix(&k)?.strip_prefix('.'))
            .collect();
        if !children.is_empty() {
            // A section (`http_timeouts`, `validation`): a mapping of its keys.
            let inner = match v {
                Y::Null => continue,
                Y::Mapping(inner) => inner,
                other => {
                    return Err(invalid(
                        &k,
                        line,
                        format!(
                            "expected a mapping of `key: value` lines ({}), got {}",
                            children.join(", "),
                            shown(&other)
                        ),
                    ))
                }
            };
            for (ik, iv) in inner {
                let ik = key_name(&ik).map_err(|m| syntax(key_line(text, &ik, Some(&k)), m))?;
                let name = format!("{k}.{ik}");
                let line = find_line(text, &ik, Some(&k)).or(line);
                out.push(entry(name, &iv, line).map_err(|(key, r)| invalid(&key, line, r))?);
            }
            continue;
        }
        out.push(entry(k, &v, line).map_err(|(key, r)| invalid(&key, line, r))?);
    }
    Ok(out)
}

/// One setting, its value's shape checked against its key's kind (an
/// unknown key is the caller's to report).
fn entry(name: String, v: &Y, line: Option<usize>) -> Result<Entry, (String, String)> {
    let kind = keys::find(&name).map(|k| k.kind);
    let refuse = |reason: String| Err((name.clone(), reason));
    match (v, kind) {
        (_, None) => {}
        (Y::Mapping(_), Some(kind)) => {
            return refuse(format!("expected {}, got a mapping", expected(kind)));
        }
        (Y::Tagged(t), Some(_)) => {
            return refuse(format!(
                "YAML tags such as `{}` are not taken; write the value alone",
                t.tag
            ));
        }
        (Y::Sequence(items), Some(Kind::List)) => {
            if let Some((i, item)) = items
                .iter()
                .enumerate()
                .find(|(_, i)| matches!(i, Y::Sequence(_) | Y::Mapping(_) | Y::Tagged(_)))
            {
                return refuse(format!(
                    "expected a list of single values, but item {} is {}",
                    i + 1,
                    shape(item)
                ));
            }
        }
        _ => {}
    }
    Ok(Entry {
        value: Value::from_yaml(v),
        name,
        line,
    })
}

/// What a kind of key takes, for "expected …, got …".
pub(super) fn expected(kind: Kind) -> String {
    match kind {
        Kind::Str | Kind::Secret => "a single value".into(),
        Kind::Bool => "true or false".into(),
        Kind::Int => "a whole number".into(),
        Kind::Size => "a size such as 26214400 or 25MB".into(),
        Kind::Duration => "a duration such as 30s, 5m, 1h or 1.5h".into(),
        Kind::List => "a list".into(),
        Kind::Enum(words) => format!("one of {}", words.join(", ")),
        Kind::AutoOrInt => "`auto` or a positive number".into(),
    }
}

/// A value's shape in words: "a list", "a mapping", "a single value".
fn shape(v: &Y) -> &'static str {
    match v {
        Y::Sequence(_) => "a list",
        Y::Mapping(_) => "a mapping",
        Y::Tagged(_) => "a tagged value",
        _ => "a single value",
    }
}

/// A value as an error shows it: a scalar as written, else its shape.
fn shown(v: &Y) -> String {
    match (v, Value::from_yaml(v)) {
        (Y::Sequence(_) | Y::Mapping(_) | Y::Tagged(_), _) | (_, None) => shape(v).to_string(),
        (_, Some(x)) => format!("`{}`", x.text()),
    }
}

/// A mapping key as a key name, or what to say about it.
fn key_name(k: &Y) -> Result<String, String> {
    match k {
        Y::String(s) => Ok(s.clone()),
        Y::Number(_) | Y::Bool(_) => Err(format!(
            "`{}` is not a key name (key names are words such as `port`)",
            Value::from_yaml(k).map(|v| v.text()).unwrap_or_default()
        )),
        Y::Null => Err("a key must be a name such as `port`, got nothing".into()),
        other => Err(format!(
            "a key must be a name such as `port`, got {}",
            shape(other)
        )),
    }
}

/// The line of a key that is not a name: where it is written as a scalar,
/// else the first complex-key line (`? …`).
fn key_line(text: &str, k: &Y, section: Option<&str>) -> Option<usize> {
    if matches!(k, Y::Number(_) | Y::Bool(_)) {
        let word = Value::from_yaml(k).map(|v| v.text()).unwrap_or_default();
        if let Some(l) = find_line(text, &word, section) {
            return Some(l);
        }
    }
    text.lines()
        .position(|l| l.trim_start().starts_with('?'))
        .map(|i| i + 1)
}

/// The 1-based line where `key` is written: inside `section`'s block when
/// given. Block style first (`key: v` at the start of a line), then flow
/// style and quoted keys (`{key: v}`, `"key": v`) anywhere on a line.
fn find_line(text: &str, key: &str, section: Option<&str>) -> Option<usize> {
    let dotted = match section {
        Some(s) => format!("{s}.{key}"),
        None => key.to_string(),
    };
    if let Some(l) = super::line_of(text, &dotted) {
        return Some(l);
    }
    let start = match section {
        Some(s) => find_line(text, s, None)?,
        None => 1,
    };
    text.lines()
        .enumerate()
        .skip(start - 1)
        .find(|(_, l)| writes_key(l, key))
        .map(|(i, _)| i + 1)
}

/// True when `line` writes `key` as a mapping key, plain or quoted,
/// after the start of the line, a space, `{` or `,`.
fn writes_key(line: &str, key: &str) -> bool {
    let forms = [key.to_string(), format!("\"{key}\""), format!("'{key}'")];
    forms.iter().any(|form| {
        line.match_indices(form.as_str()).any(|(at, _)| {
            let before = line[..at].chars().next_back();
            let after = line[at + form.len()..].trim_start();
            before.is_none_or(|c| c == ' ' || c == '\t' || c == '{' || c == ',')
                && after.starts_with(':')
        })
    })
}

/// The first line that is neither empty nor a comment nor `---`.
fn first_content_line(text: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && t != "---"
        })
        .map(|i| i + 1)
}

/// The parser's error as gomail tells it: the line (and column) in front,
/// the parser's wording kept only where it describes YAML syntax.
fn parse_error(path: &Path, text: &str, e: &serde_norway::Error) -> ConfigError {
    let full = e.to_string();
    // The location is ours to place; the message loses its " at line …".
    let message = match full.find(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full.clone(),
    };
    let location = e.location();
    let mut line = location.as_ref().map(|l| l.line());
    let mut column = location.as_ref().map(|l| l.column());
    if let Some(dup) = duplicate(text, &message) {
        return ConfigError::Syntax {
            path: path.to_path_buf(),
            line: dup.0,
            message: dup.1,
        };
    }
    if message.contains("more than one document") {
        return ConfigError::Syntax {
            path: path.to_path_buf(),
            line: second_document(text),
            message: "a config file is one YAML document; a second one starts here (`---`)".into(),
        };
    }
    // `key: invalid type: …` or `key: invalid value: …`: a value the YAML
    // types refuse (`!!int x`, a number past 128 bits).
    if let Some((key, what)) = message.split_once(": ") {
        if let Some(reason) = serde_words(what) {
            let key = key.to_string();
            let line = match key.split_once('.') {
                Some((section, leaf)) => find_line(text, leaf, Some(section)),
                None => find_line(text, &key, None),
            }
            .or(line);
            return ConfigError::Invalid {
                key,
                origin: Origin::File(path.to_path_buf(), line),
                reason,
            };
        }
    }
    // "control characters are not allowed at position N": an offset.
    let mut message = message.as_str();
    if let Some((m, pos)) = message.rsplit_once(" at position ") {
        if let Ok(pos) = pos.parse::<usize>() {
            message = m;
            let before = &text.as_bytes()[..pos.min(text.len())];
            // The parser's own location is the document's start here.
            line = Some(before.iter().filter(|&&b| b == b'\n').count() + 1);
            column = None;
        }
    }
    ConfigError::Syntax {
        path: path.to_path_buf(),
        line,
        message: match column {
            Some(c) => format!("YAML syntax error (column {c}): {message}"),
            None => format!("YAML syntax error: {message}"),
        },
    }
}

/// serde's "invalid type: X, expected Y" in gomail's words, if it is one.
fn serde_words(what: &str) -> Option<String> {
    let rest = what
        .strip_prefix("invalid type: ")
        .or_else(|| what.strip_prefix("invalid value: "))?;
    if let Some(n) = rest
        .strip_prefix("integer `")
        .and_then(|r| r.split_once('`'))
        .filter(|(_, r)| r.contains(" as u128"))
        .map(|(n, _)| n)
    {
        return Some(format!("`{n}` is too large a number"));
    }
    let (got, want) = rest.rsplit_once(", expected ")?;
    let got = match got.split_once(' ') {
        Some((kind, v)) => format!("the {kind} {v}"),
        None => got.to_string(),
    };
    Some(format!("expected {want}, got {got}"))
}

/// A duplicate key, told with its lines: (line of the repeat, message).
fn duplicate(text: &str, message: &str) -> Option<(Option<usize>, String)> {
    let (section, key) = match message.split_once(": duplicate entry with key \"") {
        Some((section, rest)) => (Some(section), rest.split_once('"')?.0),
        None => (
            None,
            message
                .strip_prefix("duplicate entry with key \"")?
                .split_once('"')?
                .0,
        ),
    };
    let start = match section {
        Some(s) => find_line(text, s, None)?,
        None => 1,
    };
    let at: Vec<usize> = text
        .lines()
        .enumerate()
        .skip(start - 1)
        .filter(|(_, l)| {
            let top = !l.starts_with([' ', '\t']);
            (section.is_some() != top) && writes_key(l.trim_start(), key)
        })
        .map(|(i, _)| i + 1)
        .collect();
    let name = match section {
        Some(s) => format!("{s}.{key}"),
        None => key.to_string(),
    };
    let lines: Vec<String> = at.iter().map(usize::to_string).collect();
    Some((
        at.get(1).copied(),
        format!(
            "key `{name}` is set more than once (lines {})",
            lines.join(", ")
        ),
    ))
}

/// The line of the `---` that starts a second document.
fn second_document(text: &str) -> Option<usize> {
    let first = first_content_line(text)?;
    text.lines()
        .enumerate()
        .skip(first)
        .find(|(_, l)| l.starts_with("---"))
        .map(|(i, _)| i + 1)
}
