//! Every reply the SMTP core can send, in one table.
//!
//! A reply is a basic code, an RFC 3463 enhanced status code and a text.
//! The enhanced code is sent on every 2xx/4xx/5xx reply after the greeting
//! (ENHANCEDSTATUSCODES, RFC 2034); 220, 354 and 214 carry none where the
//! RFCs give them none (a 214 still gets 2.0.0, as Postfix does).

use std::borrow::Cow;

/// One SMTP reply line (or the last line of a multi-line reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit basic code.
    pub code: u16,
    /// The enhanced status code (`"5.5.2"`), empty where none applies.
    pub status: &'static str,
    /// Human-readable text.
    pub text: Cow<'static, str>,
}

const fn r(code: u16, status: &'static str, text: &'static str) -> Reply {
    Reply {
        code,
        status,
        text: Cow::Borrowed(text),
    }
}

impl Reply {
    /// A reply with a text built at run time.
    pub fn new(code: u16, status: &'static str, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            status,
            text: text.into(),
        }
    }

    /// True for 4xx and 5xx replies.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Appends the reply as one final line.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        self.write_line(out, true);
    }

    /// Appends the reply as a line of a multi-line reply (`last` = no more lines).
    pub fn write_line(&self, out: &mut Vec<u8>, last: bool) {
        use std::io::Write;
        let sep = if last { ' ' } else { '-' };
        if self.status.is_empty() {
            let _ = write!(out, "{}{}{}\r\n", self.code, sep, self.text);
        } else {
            let _ = write!(out, "{}{}{} {}\r\n", self.code, sep, self.status, self.text);
        }
    }

    /// `validation.reject_invalid_domains`: the sender's domain is not
    /// fully qualified (Postfix's `reject_non_fqdn_sender` reply).
    pub fn non_fqdn_sender(address: &str) -> Reply {
        Reply::new(
            504,
            "5.5.2",
            format!("<{address}>: Sender address rejected: need fully-qualified address"),
        )
    }

    // --- admission refusals (they name the client, as Postfix's do) --------
    /// `max_connections_per_ip` connections are open from `ip` already.
    pub fn too_many_connections_from(ip: std::net::IpAddr) -> Reply {
        Reply::new(421, "4.7.0", format!("Too many connections from {ip}"))
    }
    /// Over `smtp_connection_rate_limit`.
    pub fn connection_rate(ip: std::net::IpAddr) -> Reply {
        Reply::new(
            421,
            "4.7.0",
            format!("Error: too many connections from {ip}, try again later"),
        )
    }
    /// Over `smtp_message_rate_limit`, at MAIL (Postfix anvil's wording).
    pub fn message_rate(ip: std::net::IpAddr) -> Reply {
        Reply::new(
            450,
            "4.7.1",
            format!("Error: too much mail from {ip}, try again later"),
        )
    }
    /// Over `smtp_recipient_rate_limit`, at RCPT.
    pub fn recipient_rate(ip: std::net::IpAddr) -> Reply {
        Reply::new(
            450,
            "4.7.1",
            format!("Error: too many recipients from {ip}, try again later"),
        )
    }
    /// Instead of the greeting, for a banned client.
    pub fn banned(ip: std::net::IpAddr) -> Reply {
        Reply::new(554, "5.7.1", format!("{ip} is banned"))
    }
    /// The client spoke before the greeting (`pregreet_wait`).
    pub fn pregreet(ip: std::net::IpAddr) -> Reply {
        Reply::new(
            554,
            "5.5.1",
            format!("Error: {ip} sent data before the greeting"),
        )
    }

    // --- 2xx -----------------------------------------------------------------
    /// NOOP, RSET.
    pub const OK: Reply = r(250, "2.0.0", "OK");
    /// MAIL accepted.
    pub const SENDER_OK: Reply = r(250, "2.1.0", "Sender OK");
    /// RCPT accepted.
    pub const RECIPIENT_OK: Reply = r(250, "2.1.5", "Recipient OK");
    /// VRFY: RFC 5321 section 3.5.3 says 252 when the server will not verify.
    pub const CANNOT_VRFY: Reply = r(
        252,
        "2.5.0",
        "Cannot VRFY user, but will accept message and attempt delivery",
    );
    /// HELP.
    pub const HELP: Reply = r(
        214,
        "2.0.0",
        "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
    );
    /// QUIT.
    pub const BYE: Reply = r(221, "2.0.0", "Bye");
    /// STARTTLS accepted (RFC 3207).
    pub const READY_TLS: Reply = r(220, "2.0.0", "Ready to start TLS");
    /// DATA accepted, waiting for the message.
    pub const START_DATA: Reply = r(354, "", "End data with <CR><LF>.<CR><LF>");

    // --- 4xx -----------------------------------------------------------------
    /// The spool could not make the message durable (disk full, unwritable data_dir).
    pub const SPOOL_FAILED: Reply = r(
        451,
        "4.3.0",
        "Error: could not store the message, try again later",
    );
    /// More recipients than `max_recipients` (RFC 5321 section 4.5.3.1.8).
    pub const TOO_MANY_RECIPIENTS: Reply = r(452, "4.5.3", "Error: too many recipients");
    /// Idle or stalled client.
    pub const TIMEOUT: Reply = r(421, "4.4.2", "Error: timeout exceeded, closing connection");
    /// The error limit was reached.
    pub const TOO_MANY_ERRORS: Reply =
        r(421, "4.7.0", "Error: too many errors, closing connection");
    /// `smtp_session_timeout` reached.
    pub const SESSION_TIMEOUT: Reply = r(
        421,
        "4.4.2",
        "Error: session time limit exceeded, closing connection",
    );
    /// Over `max_total_connections` (or a shard's client table is full).
    pub const TOO_MANY_CONNECTIONS_TOTAL: Reply =
        r(421, "4.3.2", "Error: too many connections, try again later");
    /// A refused (banned) session: anything but QUIT (RFC 5321 section 3.1).
    pub const REFUSED_SESSION: Reply = r(503, "5.5.1", "Error: this session is refused; send QUIT");
    /// The undelivered backlog is full (`spool_max_backlog`): the client
    /// keeps the message and retries later.
    pub const BACKLOG_FULL: Reply = r(
        452,
        "4.3.1",
        "Insufficient system storage: delivery backlog full, try again later",
    );
    /// The spool holds `spool_max_bytes` on disk: the client keeps the
    /// message and retries later.
    pub const SPOOL_FULL: Reply = r(
        452,
        "4.3.1",
        "Insufficient system storage: spool full, try again later",
    );
    /// The JSON store cannot be written (a full disk): messages accepted
    /// now could not be finished, so none is accepted until it can.
    pub const STORE_FAILING: Reply = r(
        452,
        "4.3.1",
        "Insufficient system storage: the message store cannot be written, try again later",
    );
    /// The server is shutting down.
    pub const SHUTTING_DOWN: Reply = r(421, "4.3.2", "Service shutting down, closing connection");
    /// A BDAT command without a usable size: its chunk cannot be skipped.
    pub const BDAT_FRAMING_LOST: Reply =
        r(421, "4.5.0", "Error: BDAT framing lost, closing connection");

    // --- 5xx: syntax and sequence ----------------------------------------------
    /// Unknown verb.
    pub const UNRECOGNIZED: Reply = r(500, "5.5.2", "Error: command not recognized");
    /// Command line longer than 512 octets (RFC 5321 section 4.5.3.1.4).
    pub const LINE_TOO_LONG: Reply = r(
        500,
        "5.5.2",
        "Error: command line too long (limit 512 octets)",
    );
    /// Bare CR or LF in a command line (smuggling protection).
    pub const BARE_NEWLINE_COMMAND: Reply = r(
        500,
        "5.5.2",
        "Error: bare <CR> or <LF> in command; lines must end with <CR><LF>",
    );
    /// NUL or other control byte in a command line.
    pub const BAD_COMMAND_BYTES: Reply = r(500, "5.5.2", "Error: invalid characters in command");
    /// A command's arguments are not as RFC 5321 writes them.
    pub const SYNTAX_PARAMS: Reply = r(
        501,
        "5.5.4",
        "Error: syntax error in parameters or arguments",
    );
    /// EHLO/HELO without a name.
    pub const SYNTAX_EHLO: Reply = r(501, "5.5.4", "Syntax: EHLO hostname");
    /// DATA, RSET, QUIT with arguments.
    pub const SYNTAX_NO_ARGS: Reply = r(501, "5.5.4", "Error: this command takes no arguments");
    /// VRFY without an argument.
    pub const SYNTAX_VRFY: Reply = r(501, "5.5.4", "Syntax: VRFY address");
    /// Malformed reverse-path.
    pub const BAD_SENDER_SYNTAX: Reply = r(501, "5.1.7", "Error: bad sender address syntax");
    /// Malformed forward-path.
    pub const BAD_RECIPIENT_SYNTAX: Reply = r(501, "5.1.3", "Error: bad recipient address syntax");
    /// BDAT without a valid size.
    pub const SYNTAX_BDAT: Reply = r(501, "5.5.4", "Syntax: BDAT size [LAST]");
    /// Commands gomail does not implement.
    pub const NOT_IMPLEMENTED: Reply = r(502, "5.5.1", "Error: command not implemented");
    /// MAIL/RCPT/DATA before EHLO/HELO.
    pub const NEED_EHLO: Reply = r(503, "5.5.1", "Error: send EHLO/HELO first");
    /// MAIL inside a transaction.
    pub const NESTED_MAIL: Reply = r(503, "5.5.1", "Error: nested MAIL command");
    /// RCPT/DATA/BDAT without MAIL.
    pub const NEED_MAIL: Reply = r(503, "5.5.1", "Error: need MAIL command");
    /// DATA after BDAT in the same transaction.
    pub const DATA_AFTER_BDAT: Reply = r(
        503,
        "5.5.1",
        "Error: DATA cannot follow BDAT in one transaction",
    );
    /// STARTTLS on a session that is already encrypted.
    pub const TLS_ALREADY_ACTIVE: Reply = r(503, "5.5.1", "Error: TLS already active");
    /// AUTH: gomail is an MX and offers no submission.
    pub const AUTH_NOT_ENABLED: Reply = r(503, "5.5.1", "Error: authentication not enabled");
    /// DATA/BDAT when no RCPT was accepted.
    pub const NO_VALID_RECIPIENTS: Reply = r(554, "5.5.1", "Error: no valid recipients");
    /// MAIL/RCPT parameter that gomail does not advertise.
    pub const UNSUPPORTED_PARAM: Reply = r(555, "5.5.4", "Error: unsupported MAIL/RCPT parameter");

    // --- 5xx: policy --------------------------------------------------------------
    /// RCPT for a domain that is not served (no open relay).
    pub const RELAY_DENIED: Reply = r(550, "5.7.1", "Error: relay access denied");
    /// Declared or actual size over `max_message_size` (RFC 1870).
    pub const TOO_BIG: Reply = r(
        552,
        "5.3.4",
        "Error: message size exceeds fixed maximum message size",
    );
    /// Non-ASCII address without SMTPUTF8 (RFC 6531 section 3.7.4.2).
    pub const NEED_SMTPUTF8: Reply = r(
        553,
        "5.6.7",
        "Error: non-ASCII address requires the SMTPUTF8 parameter",
    );
    /// Bare CR or LF inside DATA (SMTP smuggling protection, see docs/security.md).
    pub const BARE_NEWLINE_DATA: Reply = r(
        550,
        "5.6.0",
        "Error: message refused, bare <CR> or <LF> in DATA; lines must end with <CR><LF>",
    );
    /// A text line over 1000 octets in DATA (RFC 5321 section 4.5.3.1.6).
    pub const DATA_LINE_TOO_LONG: Reply = r(
        550,
        "5.6.0",
        "Error: message refused, text line longer than 1000 octets",
    );
    /// Too many Received headers: a mail loop.
    pub const TOO_MANY_HOPS: Reply = r(554, "5.4.6", "Error: too many hops, mail loop suspected");
}
