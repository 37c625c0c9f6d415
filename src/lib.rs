//! gomail: a thread-per-core SMTP ingress engine.
//!
//! # Layout
//! - [`smtp`]: the sans-IO protocol (commands, replies, DATA/BDAT, session).
//! - [`admission`]: per-client limits, rates and bans (pure tables, the ban service).
//! - [`config`]: YAML + `MAIL_*` + flags, checked against the key table.
//! - [`spool`]: the durable per-shard queue and the JSON store.
//! - [`tls`]: TLS policy, certificates, self-signed fallback.
//! - [`server`]: shards wired to sessions, spool, store and TLS.
//! - [`control`]: the control plane: health and Prometheus metrics over HTTP.
//! - [`delivery`]: webhook signing, retry policy and the HTTP client.
pub mod admission;
pub mod auth;
pub mod config;
pub mod control;
pub mod delivery;
mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod logfmt;
pub mod payload;
pub mod reload;
pub mod server;
pub mod smtp;
pub mod spool;
pub mod tls;
