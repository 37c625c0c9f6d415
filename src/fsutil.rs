//! Writing files that must be whole and on disk before anyone relies on them.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Creates or truncates `path` with `mode`, writes `data` and syncs it.
pub(crate) fn write_synced(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Makes the entries of directory `dir` (files created, renamed or removed
/// in it) durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Replaces `path` with `data` so that readers only ever see the old file or
/// the whole new one: written and synced under a temporary name, then
/// renamed over it. The rename itself is durable once the caller syncs the
/// directory ([`sync_dir`]).
pub(crate) fn replace_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    write_synced(&tmp, data, mode)?;
    std::fs::rename(&tmp, path)
}
