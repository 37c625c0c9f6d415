//! Start-up recovery: read the segments an earlier run left behind.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::record::{self, Envelope, Record};
use super::SpoolError;

/// What the segments on disk hold.
pub(crate) struct Found {
    /// Every segment, oldest first, with its count of undelivered messages.
    pub segments: Vec<(PathBuf, usize)>,
    /// Undelivered messages: (index into `segments`, envelope, message).
    pub pending: Vec<(usize, Envelope, Vec<u8>)>,
    /// The highest segment file number in the shard's own directory.
    pub max_file_no: u64,
}

/// Spool directories of shards `j >= count` that map onto `shard`.
pub(super) fn adopted_dirs(root: &Path, shard: usize, count: usize) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let j: usize = name.strip_prefix("shard-")?.parse().ok()?;
            (j >= count && j % count == shard).then(|| (j, e.path()))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, p)| p).collect()
}

fn segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let entries = std::fs::read_dir(dir).map_err(SpoolError::io("read directory", dir))?;
    let mut segs: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let hex = name.strip_prefix("seg-")?.strip_suffix(".log")?;
            Some((u64::from_str_radix(hex, 16).ok()?, e.path()))
        })
        .collect();
    segs.sort();
    Ok(segs)
}

/// Reads every segment in `dirs` (the shard's own first).
pub(crate) fn recover(dirs: &[PathBuf]) -> Result<Found, SpoolError> {
    let mut found = Found {
        segments: Vec::new(),
        pending: Vec::new(),
        max_file_no: 0,
    };
    let mut messages: Vec<(usize, Envelope, Vec<u8>)> = Vec::new();
    let mut done: HashSet<String> = HashSet::new();
    for (d, dir) in dirs.iter().enumerate() {
        for (no, path) in segment_files(dir)? {
            if d == 0 {
                found.max_file_no = found.max_file_no.max(no);
            }
            let data = std::fs::read(&path).map_err(SpoolError::io("read", &path))?;
            let (records, clean) = record::decode_all(&data);
            if !clean {
                tracing::info!(path = %path.display(), "spool segment ends in a torn record (crash during a write that was never acknowledged)");
            }
            let index = found.segments.len();
            for r in records {
                match r {
                    Record::Message(env, msg) => messages.push((index, *env, msg)),
                    Record::Done(id) => {
                        done.insert(id);
                    }
                }
            }
            found.segments.push((path, 0));
        }
    }
    let mut seen = HashSet::new();
    for (index, env, msg) in messages {
        if done.contains(&env.id) || !seen.insert(env.id.clone()) {
            continue;
        }
        found.segments[index].1 += 1;
        found.pending.push((index, env, msg));
    }
    if !found.pending.is_empty() {
        tracing::info!(
            messages = found.pending.len(),
            "recovered undelivered messages from the spool"
        );
    }
    Ok(found)
}
