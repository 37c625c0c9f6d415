//! The sans-IO SMTP server protocol: bytes in, replies and actions out.
//!
//! This module owns the RFC 5321 dialogue (with PIPELINING, SIZE, 8BITMIME,
//! SMTPUTF8, CHUNKING and ENHANCEDSTATUSCODES) and nothing else: it holds no
//! socket, clock, resolver or file. Every side effect — making a message
//! durable, closing the connection — is requested as an [`Action`] and its
//! result fed back. See [`Session`] for the calling contract.

#![warn(missing_docs)]

pub mod command;
pub mod data;
pub mod headers;
pub mod limits;
pub mod reply;
pub mod session;
pub mod trace;

pub use limits::Limits;
pub use reply::Reply;
pub use session::{
    Action, Completion, Gate, Misbehaviour, Session, SessionConfig, TlsInfo, Transaction,
};
