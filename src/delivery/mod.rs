//! Webhook delivery parts that do not depend on a shard's state: Standard
//! Webhooks signatures, the retry policy, and the HTTP client. The engine
//! that drives them per shard is `server::outbox`.

pub mod retry;
pub mod sign;
pub mod webhook;
