//! Protocol limits and timeouts (RFC 5321 sections 4.5.3.1 and 4.5.3.2).

use std::time::Duration;

/// A command line, CRLF included (RFC 5321 section 4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;

/// A text line in DATA, CRLF included (RFC 5321 section 4.5.3.1.6).
pub const MAX_TEXT_LINE: usize = 1000;

/// A reverse- or forward-path, angle brackets included (section 4.5.3.1.3).
pub const MAX_PATH: usize = 256;

/// Local part of a mailbox (section 4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;

/// Domain of a mailbox (section 4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;

/// Received headers after which a message is taken for a loop (Postfix's
/// `hopcount_limit` is 50; RFC 5321 section 6.3 asks for "at least 100").
pub const MAX_HOPS: usize = 100;

/// Per-session limits, set from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `max_message_size`, announced in the SIZE extension.
    pub max_message_size: u64,
    /// Recipients per transaction; the next one gets `452 4.5.3`.
    pub max_recipients: usize,
    /// Error replies after which the session is closed with `421 4.7.0`.
    pub max_errors: u32,
    /// Time allowed for a whole command line to arrive (RFC 5321 asks for
    /// at least 5 minutes). Not reset by partial lines, so a client that
    /// trickles one byte at a time is cut off (slowloris).
    pub command_timeout: Duration,
    /// Time allowed between two reads inside DATA or a BDAT chunk
    /// (the "data block" timeout, 3 minutes in RFC 5321).
    pub data_block_timeout: Duration,
    /// Time allowed for one whole message body to arrive.
    pub data_total_timeout: Duration,
    /// Time allowed for a whole session (`smtp_session_timeout`).
    pub session_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_size: 26_214_400,
            max_recipients: 100,
            max_errors: 20,
            command_timeout: Duration::from_secs(300),
            data_block_timeout: Duration::from_secs(180),
            data_total_timeout: Duration::from_secs(600),
            session_timeout: Duration::from_secs(600),
        }
    }
}
