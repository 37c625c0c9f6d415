//! The committed fuzz corpus, `fuzz/corpus/<target>/`, replayed through the
//! checks the fuzz targets run (`gomail::fuzzing`): an input that once found
//! a bug is added there and stays a regression test, no fuzzer needed.
//! (scripts/test.sh also runs every target for a bounded time.)

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

fn replay(target: &str) {
    let (_, check) = gomail::fuzzing::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no check named {target}"));
    let failed: Vec<String> = corpus(target)
        .into_iter()
        .filter(|path| {
            let data = std::fs::read(path).unwrap();
            std::panic::catch_unwind(|| check(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: these inputs fail: {failed:#?}"
    );
}

#[test]
fn command_corpus_passes() {
    replay("command");
}

#[test]
fn session_corpus_passes() {
    replay("session");
}

#[test]
fn data_corpus_passes() {
    replay("data");
}

#[test]
fn spool_corpus_passes() {
    replay("spool");
}

#[test]
fn message_corpus_passes() {
    replay("message");
}

#[test]
fn config_corpus_passes() {
    replay("config");
}

/// Each fuzz target in fuzz/Cargo.toml has a check and a corpus here, and
/// each check a target: none is left out of CI by a missed line.
#[test]
fn every_check_has_a_fuzz_target() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/Cargo.toml")).unwrap();
    let mut bins: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("name = ")))
        .map(|n| n.trim_matches('"'))
        .collect();
    let mut checks: Vec<&str> = gomail::fuzzing::TARGETS.iter().map(|(n, _)| *n).collect();
    bins.sort();
    checks.sort();
    assert_eq!(bins, checks);
}
