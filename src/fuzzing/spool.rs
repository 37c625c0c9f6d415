//! Spool segments as a bad disk or a crash leaves them: record decoding,
//! and start-up recovery over segment files made of arbitrary octets.
//!
//! Input layout: `cut | octets`. The octets are one stream of records
//! split into two segment files at a point `cut` chooses.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use crate::spool::record::{
    decode_all, decode_exact, encode_done, encode_message, encode_progress, Record,
};
use crate::spool::recover::recover;

/// See the module docs.
pub fn spool(data: &[u8]) {
    let (cut, stream) = match data.split_first() {
        Some((&c, rest)) => (usize::from(c) * rest.len() / 255, rest),
        None => (0, data),
    };
    let segments = [&stream[..cut], &stream[cut..]];
    let mut decoded = Vec::new();
    for seg in segments {
        let d = decode_all(seg);
        let clean = d.damaged.is_empty() && d.torn_at.is_none();
        let records: Vec<Record> = d.records.iter().map(|(_, r)| r.clone()).collect();
        if clean && records.is_empty() {
            assert!(
                seg.iter().all(|&b| b == 0),
                "octets that are not a record taken for a clean end"
            );
        }
        for r in &records {
            // What recovery reads back is what would be written again.
            let back = decode_all(&encoded(r));
            assert!(
                back.damaged.is_empty()
                    && back.torn_at.is_none()
                    && back.records.len() == 1
                    && back.records[0].1 == *r,
                "a record does not round-trip: {r:?}"
            );
        }
        // A torn tail (the segment cut short) loses nothing before the cut.
        let shorter = &seg[..seg.len() / 2];
        let prefix = decode_all(shorter);
        for (offset, r) in &d.records {
            if offset + encoded(r).len() <= shorter.len() {
                assert!(
                    prefix.records.iter().any(|(o, p)| o == offset && p == r),
                    "cutting a segment lost a record before the cut: {r:?}"
                );
            }
        }
        decoded.push(records);
    }

    let dir = scratch_dir();
    for (i, seg) in segments.iter().enumerate() {
        std::fs::write(dir.join(format!("seg-{i:016x}.log")), seg).expect("write a segment");
    }
    let found = recover(&dir, std::slice::from_ref(&dir));
    std::fs::remove_dir_all(&dir).expect("remove the scratch directory");
    let found = found.expect("segments that could be read recover");
    assert_eq!(found.segments.len(), 2);
    assert_eq!(found.max_file_no, 1);

    // Every message without a done record is pending exactly once, in the
    // segment that holds its first copy; nothing else is.
    let done: HashSet<&str> = decoded
        .iter()
        .flatten()
        .filter_map(|r| match r {
            Record::Done(id) => Some(id.as_str()),
            Record::Message(..) | Record::Progress(_) => None,
        })
        .collect();
    let mut expected: HashMap<&str, usize> = HashMap::new();
    for (i, records) in decoded.iter().enumerate() {
        for r in records {
            if let Record::Message(env, _) = r {
                if !done.contains(env.id.as_str()) {
                    expected.entry(env.id.as_str()).or_insert(i);
                }
            }
        }
    }
    let mut per_segment = [0usize; 2];
    let mut seen = HashSet::new();
    for p in &found.pending {
        assert!(
            seen.insert(p.id.as_str()),
            "message {:?} pending twice",
            p.id
        );
        assert_eq!(
            expected.get(p.id.as_str()),
            Some(&p.segment),
            "message {:?} pending",
            p.id
        );
        // Its location reads back as that very message (delivery reads
        // bodies back by it).
        let at = p.offset as usize..p.offset as usize + p.len as usize;
        match segments[p.segment].get(at).and_then(decode_exact) {
            Some(Record::Message(env, _)) => assert_eq!(env.id, p.id, "location of {:?}", p.id),
            other => panic!("the location of {:?} reads back as {other:?}", p.id),
        }
        per_segment[p.segment] += 1;
    }
    assert_eq!(
        seen.len(),
        expected.len(),
        "undelivered messages not recovered"
    );
    for (i, (_, n)) in found.segments.iter().enumerate() {
        assert_eq!(*n, per_segment[i], "pending count of segment {i}");
    }
}

/// A record as the spool writes it.
fn encoded(r: &Record) -> Vec<u8> {
    match r {
        Record::Message(env, msg) => encode_message(env, b"", msg),
        Record::Done(id) => {
            let mut out = Vec::new();
            encode_done(id, &mut out);
            out
        }
        Record::Progress(p) => {
            let mut out = Vec::new();
            encode_progress(p, &mut out);
            out
        }
    }
}

/// A directory of this process's own, empty: in memory (`/dev/shm`) unless
/// `TMPDIR` says otherwise, since a disk's directory operations make this
/// check some 50 times slower.
fn scratch_dir() -> PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let base = if std::env::var_os("TMPDIR").is_none() && shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("gomail-fuzz-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}
