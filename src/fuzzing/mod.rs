//! The checks behind gomail's fuzz targets, one per input a client or a
//! disk can shape. Each takes arbitrary bytes and panics when gomail breaks
//! one of its promises (or panics by itself); it returns quietly otherwise.
//!
//! They live in the library so that two callers run the same code: the
//! cargo-fuzz targets in `fuzz/` (one line each) and the integration test
//! that replays the committed corpus, `fuzz/corpus/<target>/`, under
//! `cargo test`. An input that once found a bug is added to the corpus and
//! stays a regression test. This module is for those two callers only, not
//! an API: it is hidden from the docs and may change at any time.
//!
//! These checks never touch the network or a clock; the spool check writes
//! segment files to a scratch directory (`/dev/shm` where there is one).

mod command;
mod config;
mod data;
mod message;
mod session;
mod spool;

pub use command::command;
pub use config::config;
pub use data::data;
pub use message::message;
pub use session::session;
pub use spool::spool;

/// A check: arbitrary octets in, a panic when a promise is broken.
pub type Check = fn(&[u8]);

/// Every check, by the name of its fuzz target and corpus directory.
pub const TARGETS: &[(&str, Check)] = &[
    ("command", command),
    ("session", session),
    ("data", data),
    ("spool", spool),
    ("message", message),
    ("config", config),
];

/// Asserts the shape every reply must have: a code the client can act on,
/// an enhanced code of the same class, and a text that cannot end the line.
fn assert_reply(reply: &crate::smtp::Reply) {
    assert!(
        (200..600).contains(&reply.code),
        "reply code {}",
        reply.code
    );
    if !reply.status.is_empty() {
        let parts: Vec<&str> = reply.status.split('.').collect();
        assert!(
            parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                && parts[0] == (reply.code / 100).to_string(),
            "enhanced code {} on {}",
            reply.status,
            reply.code
        );
    }
    assert!(
        !reply.text.contains(['\r', '\n']),
        "line break in reply text {:?}",
        reply.text
    );
}
