//! The JSON store: GoMail's layout, `data_dir/inbox/YYYY/MM/DD/msg_<unix>_<id>.json`.
//!
//! One file per accepted message, in GoMail's payload shape
//! ([`crate::payload`], `docs/architecture.md`): `recipient` is the first recipient, as GoMail
//! consumers expect, and `recipients` lists all. A file appears whole or not
//! at all, and writing a message that is already stored changes nothing:
//! each message is in the store exactly once. [`write_batch`] makes the
//! batch durable with one `syncfs` of the data_dir filesystem.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike};

use super::record::Envelope;
use crate::payload::payload;

/// Where a message's JSON file goes.
pub fn path_for(data_dir: &Path, env: &Envelope) -> PathBuf {
    path_at(data_dir, env.received_at_ms, &env.id)
}

/// [`path_for`] from a message's time of acceptance and queue id.
pub fn path_at(data_dir: &Path, received_at_ms: i64, id: &str) -> PathBuf {
    let at = DateTime::from_timestamp_millis(received_at_ms).unwrap_or_default();
    data_dir
        .join("inbox")
        .join(format!("{:04}", at.year()))
        .join(format!("{:02}", at.month()))
        .join(format!("{:02}", at.day()))
        .join(file_name(received_at_ms, id))
}

/// GoMail's file name for a message, `msg_<unix>_<id>.json`; `id` is the
/// queue id, or a per-recipient webhook id (`<queue id>.<n>`) for a dead
/// letter.
pub fn file_name(received_at_ms: i64, id: &str) -> String {
    let at = DateTime::from_timestamp_millis(received_at_ms).unwrap_or_default();
    format!("msg_{}_{id}.json", at.timestamp())
}

/// Writes one message's JSON file so that readers only ever see it whole.
///
/// The file is created unnamed (`O_TMPFILE`), written, then given its name
/// with `linkat`: one directory operation, and a message that is already
/// in the store (a re-delivery after a crash) is left as it is. Where the
/// filesystem has no `O_TMPFILE`, a temporary name and a rename are used.
pub fn write_one(data_dir: &Path, env: &Envelope, message: &[u8]) -> std::io::Result<PathBuf> {
    let path = path_for(data_dir, env);
    // Written by an earlier try of the same batch (or run): see write_json.
    if path.exists() {
        return Ok(path);
    }
    write_json(&path, &payload(env, message, None))?;
    Ok(path)
}

/// Writes a message's payload, already built (the one its webhook POST
/// carried), as its store file `path` (from [`path_at`]).
pub fn write_json(path: &Path, json: &[u8]) -> std::io::Result<()> {
    // Written by an earlier try of the same batch (or run): the same
    // message, the same file. Writing it again would need room for a
    // second copy, which a nearly full disk does not have, and the retry
    // would never get past it.
    if path.exists() {
        return Ok(());
    }
    let dir = path.parent().expect("store paths have a parent");
    // Two writes, no copy: serde_json writing straight to a File would
    // make a system call per JSON fragment.
    let parts: [&[u8]; 2] = [json, b"\n"];
    match write_linked(dir, path, &parts) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            write_linked(dir, path, &parts)
        }
        other => other,
    }
}

fn write_linked(dir: &Path, path: &Path, json: &[&[u8]]) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let cdir = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: open with a valid C string; the descriptor is owned below.
    let fd = unsafe {
        libc::open(
            cdir.as_ptr(),
            libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL) => {
                write_renamed(dir, path, json)
            }
            _ => Err(e),
        };
    }
    // SAFETY: fd is a fresh descriptor we own.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    for part in json {
        f.write_all(part)?;
    }
    let src = CString::new(format!("/proc/self/fd/{fd}"))?;
    let dst = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid C strings.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            src.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
        // Already stored by an earlier run: the same message, the same file.
    }
    Ok(())
}

fn write_renamed(dir: &Path, path: &Path, json: &[&[u8]]) -> std::io::Result<()> {
    let name = path.file_name().expect("store paths have a file name");
    let tmp = dir.join(format!(".tmp_{}", name.to_string_lossy()));
    let mut f = std::fs::File::create(&tmp)?;
    for part in json {
        f.write_all(part)?;
    }
    std::fs::rename(&tmp, path)
}

/// A message for [`write_batch`].
pub enum Stored<'a> {
    /// Its envelope and octets: the payload is built here.
    Message(&'a Envelope, &'a [u8]),
    /// Its payload, built already (the webhook POST's), with what names
    /// its file.
    Built {
        received_at_ms: i64,
        id: &'a str,
        json: &'a [u8],
    },
}

/// Writes every message of a batch, then makes them durable with one
/// `syncfs` of the filesystem holding `data_dir`. Blocking: run it off the
/// shard's event loop.
pub fn write_batch(data_dir: &Path, batch: &[Stored<'_>]) -> std::io::Result<()> {
    if batch.is_empty() {
        // Only done records this time (messages the webhook delivered and
        // `store_mode` does not keep): no file, so nothing to make durable,
        // and a syncfs would only slow the spool's fdatasyncs.
        return Ok(());
    }
    for item in batch {
        match item {
            Stored::Message(env, message) => {
                write_one(data_dir, env, message)?;
            }
            Stored::Built {
                received_at_ms,
                id,
                json,
            } => write_json(&path_at(data_dir, *received_at_ms, id), json)?,
        }
    }
    let dir = std::fs::File::open(data_dir)?;
    // SAFETY: syncfs takes a valid open descriptor, which `dir` is.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::tests::env;

    #[test]
    fn layout_is_gomails() {
        let p = path_for(Path::new("/d"), &env());
        assert_eq!(
            p,
            Path::new("/d/inbox/2025/11/30/msg_1764489600_0123456789abcdef.json")
        );
    }

    #[test]
    fn a_file_already_written_is_not_written_again() {
        // A retried batch on a nearly full disk: rewriting what is there
        // would need room for a second copy.
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(dir.path(), &env());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"kept").unwrap();
        assert_eq!(
            write_one(dir.path(), &env(), b"Subject: x\r\n\r\ny").unwrap(),
            path
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
    }
}

#[cfg(test)]
mod write_tests {
    use super::*;

    #[test]
    fn writing_twice_keeps_one_whole_file() {
        let tmp = tempfile::tempdir().unwrap();
        let env = crate::spool::record::test_envelope("00000000000000aa");
        let p1 = write_one(tmp.path(), &env, b"Subject: one\r\n\r\nx\r\n").unwrap();
        let p2 = write_one(tmp.path(), &env, b"Subject: one\r\n\r\nx\r\n").unwrap();
        assert_eq!(p1, p2);
        let dir: Vec<_> = std::fs::read_dir(p1.parent().unwrap()).unwrap().collect();
        assert_eq!(dir.len(), 1, "no temporary files are left behind");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p1).unwrap()).unwrap();
        assert_eq!(v["subject"], "one");
    }
}
