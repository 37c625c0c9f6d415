//! gomail: a thread-per-core SMTP ingress engine.
//!
//! # Layout
//! - [`smtp`]: the sans-IO protocol (commands, replies, DATA/BDAT, session).
pub mod config;
pub mod server;
pub mod smtp;
pub mod spool;
