//! The dead-letter folder as the operator sees it: selection by id or by
//! time range, shared by `gomail queue` and `POST /queue/retry`.

use std::path::{Path, PathBuf};

/// Which dead letters a command applies to.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Ids; empty means "any id". A dead letter's id is its webhook id: the
    /// queue id, or `<queue id>.<n>` for recipient n of a message with
    /// several; a bare queue id selects all of its recipients'.
    pub ids: Vec<String>,
    /// Received at or after (Unix seconds).
    pub since: Option<i64>,
    /// Received at or before (Unix seconds).
    pub until: Option<i64>,
}

impl Selection {
    /// True when nothing narrows the selection (every dead letter).
    pub fn is_everything(&self) -> bool {
        self.ids.is_empty() && self.since.is_none() && self.until.is_none()
    }
}

/// Parses a time given as RFC 3339 or Unix seconds.
pub fn parse_time(s: &str) -> Option<i64> {
    s.parse::<i64>().ok().or_else(|| {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp())
    })
}

/// `(unix seconds, queue id)` from `msg_<unix>_<id>.json`.
fn name_parts(path: &Path) -> Option<(i64, String)> {
    let stem = path.file_stem()?.to_str()?;
    let rest = stem.strip_prefix("msg_")?;
    let (unix, id) = rest.split_once('_')?;
    Some((unix.parse().ok()?, id.to_string()))
}

/// The dead letters in `data_dir/dead` that `sel` selects, oldest first.
pub fn select(data_dir: &Path, sel: &Selection) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(data_dir.join("dead")) else {
        return Vec::new();
    };
    let mut out: Vec<(i64, PathBuf)> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| {
            let (unix, id) = name_parts(&p)?;
            let queue_id = id.split_once('.').map_or(id.as_str(), |(q, _)| q);
            let keep = (sel.ids.is_empty()
                || sel.ids.iter().any(|want| *want == id || want == queue_id))
                && sel.since.is_none_or(|s| unix >= s)
                && sel.until.is_none_or(|u| unix <= u);
            keep.then_some((unix, p))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_by_id_and_time() {
        let tmp = tempfile::tempdir().unwrap();
        let dead = tmp.path().join("dead");
        std::fs::create_dir(&dead).unwrap();
        for (t, id) in [
            (100, "aa"),
            (200, "bb"),
            (300, "cc"),
            (400, "dd.0"),
            (400, "dd.1"),
        ] {
            std::fs::write(dead.join(format!("msg_{t}_{id}.json")), "{}").unwrap();
        }
        let names = |sel: &Selection| {
            select(tmp.path(), sel)
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&Selection::default()).len(), 5);
        // A message with several recipients: each by its webhook id, all
        // by the queue id.
        let ids = |ids: &[&str]| Selection {
            ids: ids.iter().map(|i| i.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(names(&ids(&["dd.1"])), ["msg_400_dd.1.json"]);
        assert_eq!(
            names(&ids(&["dd"])),
            ["msg_400_dd.0.json", "msg_400_dd.1.json"]
        );
        assert!(names(&ids(&["d"])).is_empty());
        assert_eq!(
            names(&Selection {
                ids: vec!["bb".into()],
                ..Default::default()
            }),
            ["msg_200_bb.json"]
        );
        assert_eq!(
            names(&Selection {
                since: Some(150),
                until: Some(300),
                ..Default::default()
            }),
            ["msg_200_bb.json", "msg_300_cc.json"]
        );
        assert_eq!(parse_time("1970-01-01T00:01:40Z"), Some(100));
        assert_eq!(parse_time("100"), Some(100));
    }
}
