//! Start-up recovery: read the segments an earlier run left behind.
//!
//! A torn last record (a write a crash cut short, never acknowledged) is
//! normal and logged at INFO. Damage is not: every record that still checks
//! is recovered, the damaged places are logged at ERROR with their offsets,
//! and a copy of the segment is kept in `spool/corrupt/` as evidence. A
//! segment that cannot be read at all is moved there; the shard starts
//! without it. Recovery never deletes a segment and never writes one.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::record::{self, Progress, Record};
use super::SpoolError;

/// What the segments on disk hold.
pub(crate) struct Found {
    /// Every segment, oldest first, with its count of undelivered messages.
    pub segments: Vec<(PathBuf, usize)>,
    /// Undelivered messages, oldest first, without their octets.
    pub pending: Vec<Pending>,
    /// The latest progress record of each delivery of a pending message.
    pub progress: HashMap<String, Progress>,
    /// The highest segment file number the shard's own directory has used
    /// (segments moved to `corrupt/` included, so no number is reused).
    pub max_file_no: u64,
    /// Damaged places skipped in readable segments.
    pub corrupt_records: u64,
    /// Segments (or adopted directories) that could not be read at all.
    pub unreadable_segments: u64,
}

/// An undelivered message found in a segment.
pub(crate) struct Pending {
    /// Index into [`Found::segments`].
    pub segment: usize,
    /// Its record's offset and length in that segment.
    pub offset: u64,
    pub len: u32,
    pub id: String,
    pub received_at_ms: i64,
    pub recipients: usize,
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

/// `(file number, path)` of the names in `dir` that are `<prefix>seg-<hex>.log`
/// (with anything after `.log` when `suffixed`), sorted.
fn numbered(dir: &Path, prefix: &str, suffixed: bool) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut segs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix(prefix)?.strip_prefix("seg-")?;
            let (hex, tail) = rest.split_once(".log")?;
            (tail.is_empty() || suffixed).then_some(())?;
            Some((u64::from_str_radix(hex, 16).ok()?, e.path()))
        })
        .collect();
    segs.sort();
    Ok(segs)
}

/// Where segments of `dir` go in `corrupt/`: `<shard dir>-<segment file>`.
fn corrupt_name(dir: &Path, segment: &Path) -> String {
    format!("{}-{}", file_name(dir), file_name(segment))
}

fn file_name(p: &Path) -> std::borrow::Cow<'_, str> {
    p.file_name().map_or("".into(), |n| n.to_string_lossy())
}

/// Reads every segment in `dirs` (the shard's own first) under the spool
/// root `root`. Only the shard's own directory failing to list is an error.
pub(crate) fn recover(root: &Path, dirs: &[PathBuf]) -> Result<Found, SpoolError> {
    let corrupt = root.join("corrupt");
    let mut found = Found {
        segments: Vec::new(),
        pending: Vec::new(),
        progress: HashMap::new(),
        max_file_no: 0,
        corrupt_records: 0,
        unreadable_segments: 0,
    };
    // Segments are read one at a time and only the envelopes' essentials
    // are kept: recovering a large backlog costs one segment of memory.
    let mut messages: Vec<Pending> = Vec::new();
    let mut progress: HashMap<String, Progress> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    for (d, dir) in dirs.iter().enumerate() {
        let files = match numbered(dir, "", false) {
            Ok(files) => files,
            Err(e) if d == 0 => return Err(SpoolError::io("read directory", dir)(e)),
            Err(e) => {
                found.unreadable_segments += 1;
                tracing::error!(event = "spool_segment_unreadable", path = %dir.display(), error = %e,
                    "cannot list an adopted spool directory; its messages are not recovered until it can be read");
                continue;
            }
        };
        if d == 0 {
            let own = format!("{}-", file_name(dir));
            let kept = numbered(&corrupt, &own, true).unwrap_or_default();
            found.max_file_no = files
                .iter()
                .chain(&kept)
                .map(|(no, _)| *no)
                .max()
                .unwrap_or(0);
        }
        for (_, path) in files {
            let data = match std::fs::read(&path) {
                Ok(data) => data,
                Err(e) => {
                    found.unreadable_segments += 1;
                    set_aside(&corrupt, dir, &path, &e);
                    continue;
                }
            };
            let decoded = record::decode_all(&data);
            if let Some(at) = decoded.torn_at {
                tracing::info!(event = "spool_torn_tail", path = %path.display(), offset = at,
                    "spool segment ends in a torn record (a write cut short by a crash before its fdatasync, so never acknowledged)");
            }
            if !decoded.damaged.is_empty() {
                found.corrupt_records += decoded.damaged.len() as u64;
                let kept = keep_copy(&corrupt, dir, &path);
                let kept_at = match &kept {
                    Ok(p) => p.display().to_string(),
                    Err(e) => format!("not kept: {e}"),
                };
                for bad in &decoded.damaged {
                    tracing::error!(event = "spool_record_damaged", path = %path.display(),
                        offset = bad.offset as u64, skipped = bad.skipped as u64,
                        record = bad.what.kind(), queue_id = bad.what.queue_id().unwrap_or(""),
                        kept = %kept_at,
                        "damaged spool record skipped, the records after it recovered (see docs/operations.md, \"Spool damage\")");
                }
            }
            let index = found.segments.len();
            for (offset, r) in decoded.records {
                match r {
                    Record::Message(env, _) => messages.push(Pending {
                        segment: index,
                        offset: offset as u64,
                        len: record::length_at(&data[offset..]).unwrap_or(0) as u32,
                        id: env.id,
                        received_at_ms: env.received_at_ms,
                        recipients: env.recipients.len(),
                    }),
                    Record::Done(id) => {
                        done.insert(id);
                    }
                    Record::Progress(p) => {
                        progress.insert(p.id.clone(), p);
                    }
                }
            }
            found.segments.push((path, 0));
        }
    }
    let mut seen = HashSet::new();
    for m in messages {
        if done.contains(&m.id) || !seen.insert(m.id.clone()) {
            continue;
        }
        found.segments[m.segment].1 += 1;
        found.pending.push(m);
    }
    progress.retain(|_, p| seen.contains(p.queue_id()) && !done.contains(p.queue_id()));
    found.progress = progress;
    if !found.pending.is_empty() {
        tracing::info!(
            messages = found.pending.len(),
            "recovered undelivered messages from the spool"
        );
    }
    Ok(found)
}

/// Copies a damaged segment into `corrupt/` (once: a copy kept at an
/// earlier start stays). The segment itself stays where it is: its good
/// records are delivered from it and it is deleted as usual afterwards.
fn keep_copy(corrupt: &Path, dir: &Path, path: &Path) -> std::io::Result<PathBuf> {
    let to = corrupt.join(corrupt_name(dir, path));
    if to.exists() {
        return Ok(to);
    }
    std::fs::create_dir_all(corrupt)?;
    // Copied under a temporary name and renamed: a copy cut short by a
    // crash is never taken for the kept one at the next start.
    let partial = to.with_extension("log.partial");
    std::fs::copy(path, &partial)?;
    std::fs::File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, &to)?;
    crate::fsutil::sync_dir(corrupt)?;
    Ok(to)
}

/// Moves a segment that cannot be read into `corrupt/`, so that the next
/// start does not trip on it again; logs either way.
fn set_aside(corrupt: &Path, dir: &Path, path: &Path, error: &std::io::Error) {
    let base = corrupt.join(corrupt_name(dir, path));
    let moved = std::fs::create_dir_all(corrupt).and_then(|()| {
        // Never over an earlier one (a rename replaces a file).
        let to = (0..1000)
            .map(|n| match n {
                0 => base.clone(),
                n => PathBuf::from(format!("{}.{n}", base.display())),
            })
            .find(|p| !p.exists())
            .ok_or_else(|| std::io::Error::other("no free name in spool/corrupt"))?;
        std::fs::rename(path, &to)?;
        Ok(to)
    });
    match moved {
        Ok(to) => {
            tracing::error!(event = "spool_segment_unreadable", path = %path.display(), error = %error,
            moved_to = %to.display(),
            "cannot read a spool segment; moved it to spool/corrupt/ and started without it (its messages are not recovered)")
        }
        Err(e) => {
            tracing::error!(event = "spool_segment_unreadable", path = %path.display(), error = %error,
            move_error = %e,
            "cannot read a spool segment, nor move it aside; started without it (its messages are not recovered)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::record::{encode_done, encode_message, test_envelope};

    /// A spool root with shard-0 holding `segments` (file number, octets).
    fn spool(segments: &[(u64, Vec<u8>)]) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("spool");
        let dir = root.join("shard-0");
        std::fs::create_dir_all(&dir).unwrap();
        for (no, data) in segments {
            std::fs::write(super::super::segment_path(&dir, *no), data).unwrap();
        }
        (tmp, root, dir)
    }

    fn ids(found: &Found) -> Vec<&str> {
        found.pending.iter().map(|p| p.id.as_str()).collect()
    }

    fn message(id: &str) -> Vec<u8> {
        encode_message(&test_envelope(id), b"", b"body\r\n")
    }

    #[test]
    fn a_damaged_record_costs_only_itself_and_its_segment_is_kept_issue_12() {
        let mut seg = Vec::new();
        for id in ["a", "b", "c"] {
            seg.extend(message(id));
        }
        let b_at = message("a").len();
        encode_done("a", &mut seg);
        seg[b_at + 30] ^= 0x40;
        let (_tmp, root, dir) = spool(&[(1, seg.clone())]);
        let found = recover(&root, std::slice::from_ref(&dir)).unwrap();
        // "a" is done (its done record is after the damage), "b" is lost.
        assert_eq!(ids(&found), ["c"]);
        assert_eq!(found.corrupt_records, 1);
        assert_eq!(found.unreadable_segments, 0);
        let kept = root.join("corrupt/shard-0-seg-0000000000000001.log");
        assert_eq!(std::fs::read(&kept).unwrap(), seg);
        // The segment itself stays for delivery; a second start keeps the
        // first copy and does not copy again.
        assert!(super::super::segment_path(&dir, 1).exists());
        std::fs::write(&kept, b"the first copy").unwrap();
        let again = recover(&root, std::slice::from_ref(&dir)).unwrap();
        assert_eq!(again.corrupt_records, 1);
        assert_eq!(std::fs::read(&kept).unwrap(), b"the first copy");
    }

    #[test]
    fn a_torn_tail_is_not_damage() {
        let mut seg = message("a");
        let b = message("b");
        seg.extend_from_slice(&b[..b.len() / 2]);
        let (_tmp, root, dir) = spool(&[(1, seg)]);
        let found = recover(&root, &[dir]).unwrap();
        assert_eq!(ids(&found), ["a"]);
        assert_eq!(found.corrupt_records, 0);
        assert!(!root.join("corrupt").exists());
    }

    #[test]
    fn an_unreadable_segment_is_moved_aside_and_the_rest_recovered_issue_12() {
        let (_tmp, root, dir) = spool(&[(1, message("a")), (3, message("c"))]);
        // A directory where a segment should be: reading it fails, as root
        // too (EISDIR).
        let bad = super::super::segment_path(&dir, 2);
        std::fs::create_dir(&bad).unwrap();
        let found = recover(&root, std::slice::from_ref(&dir)).unwrap();
        assert_eq!(ids(&found), ["a", "c"]);
        assert_eq!(found.unreadable_segments, 1);
        assert_eq!(found.max_file_no, 3);
        assert!(!bad.exists());
        assert!(root
            .join("corrupt/shard-0-seg-0000000000000002.log")
            .is_dir());
        // Numbers set aside are never used again.
        std::fs::create_dir(&bad).unwrap();
        std::fs::remove_file(super::super::segment_path(&dir, 3)).unwrap();
        let again = recover(&root, std::slice::from_ref(&dir)).unwrap();
        assert_eq!(again.unreadable_segments, 1);
        assert!(root
            .join("corrupt/shard-0-seg-0000000000000002.log.1")
            .is_dir());
        std::fs::create_dir(root.join("corrupt/shard-0-seg-0000000000000009.log")).unwrap();
        let later = recover(&root, std::slice::from_ref(&dir)).unwrap();
        assert_eq!(later.max_file_no, 9);
    }

    #[test]
    fn an_adopted_directory_that_cannot_be_listed_does_not_stop_the_shard() {
        let (_tmp, root, dir) = spool(&[(1, message("a"))]);
        let adopted = root.join("shard-2");
        std::fs::write(&adopted, b"not a directory").unwrap();
        let found = recover(&root, &[dir, adopted]).unwrap();
        assert_eq!(ids(&found), ["a"]);
        assert_eq!(found.unreadable_segments, 1);
    }
}
