//! Webhook delivery: the engine that decides (`engine`, with its circuit
//! breaker and retry policy), Standard Webhooks signatures and the HTTP
//! client. Pure code except the client; the glommio driver that moves the
//! bytes is `server::outbox`; the payload is built in `crate::payload`.

pub mod breaker;
pub mod engine;
pub mod retry;
pub mod sign;
pub mod webhook;
