//! The SMTP server session: a pure state machine.
//!
//! # Calling contract
//! - Create with [`Session::new`], then call [`Session::greet`] once.
//! - Feed received octets with [`Session::handle_input`]. It returns how many
//!   octets it used; keep the rest and pass them again, with whatever arrives
//!   next, on the following call. It never uses a partial command line, so
//!   the caller holds at most [`MAX_COMMAND_LINE`] unused octets while the
//!   session is reading commands (longer lines are used and discarded).
//! - After each call, drain [`Session::poll_action`] and perform each action.
//!   While a [`Action::Spool`] is outstanding the session uses no input.
//!   Feed the result back with [`Session::handle_completion`], then call
//!   `handle_input` again with the octets still held.
//! - Arm a timer for [`Session::poll_timeout`] and call
//!   [`Session::handle_timeout`] when it fires.
//! - Replies are appended to the caller's buffer; write it once per batch
//!   (PIPELINING, RFC 2920).
//! - Once the session has closed (QUIT, timeout, error limit) it stays
//!   closed: later input is used up and ignored, and no reply is written.
//!
//! `250` after DATA/BDAT LAST is written only by `handle_completion` with
//! [`Completion::Spooled`]: the session cannot acknowledge a message that
//! the spool has not made durable.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::command::{self, Command, MailParams};
use super::data::{DataDecoder, TextCheck};
use super::limits::{Limits, MAX_COMMAND_LINE, MAX_HOPS};
use super::reply::Reply;

mod commands;

/// What a session needs to know about the server.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// `mail_hostname`: the name in the greeting and EHLO reply.
    pub hostname: String,
    /// `primary_domain` then `additional_domains`, lowercase.
    pub domains: Vec<String>,
    /// Protocol limits.
    pub limits: Limits,
    /// Offer STARTTLS on plaintext sessions (a TLS configuration exists).
    pub starttls: bool,
    /// Ask the driver to check each sender (SPF) before answering MAIL.
    pub check_sender: bool,
    /// `validation.reject_invalid_domains`: refuse a sender whose domain
    /// is not fully qualified (`504 5.5.2`), for clients with a [`Gate`]
    /// (not in `trusted_networks`).
    pub reject_non_fqdn_sender: bool,
    /// `validation.strict_headers`: refuse a message whose header section
    /// breaks RFC 5322 ([`super::headers::check`]).
    pub strict_headers: bool,
}

/// What was negotiated on a TLS session (recorded, never interpreted here).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsInfo {
    /// Protocol version, e.g. `TLSv1.3`.
    pub version: String,
    /// Cipher suite, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher: String,
    /// The server name the client asked for (SNI), if any.
    pub sni: Option<String>,
}

impl SessionConfig {
    fn accepts(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// The driver's admission policy, as the session sees it: per-client
/// rates asked before MAIL and RCPT are accepted, and misbehaviour told.
/// Pure decisions with `now` passed in; no IO.
pub trait Gate {
    /// MAIL FROM is about to be accepted: `Some(reply)` refuses it instead.
    fn mail(&mut self, now: Instant) -> Option<Reply>;
    /// RCPT TO (for one of our domains) is about to be accepted.
    fn rcpt(&mut self, now: Instant) -> Option<Reply>;
    /// The client did something that counts against it.
    fn misbehaved(&mut self, what: Misbehaviour);
}

/// What a client did that its [`Gate`] is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// RCPT for a domain that is not ours.
    Relay,
    /// The session was closed for too many errors.
    TooManyErrors,
}

struct GateBox(Box<dyn Gate>);

impl std::fmt::Debug for GateBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

/// Replies a session writes before it stops using input until they have
/// been written: a client that pipelines thousands of commands and never
/// reads is never buffered for beyond this.
pub const MAX_PENDING_REPLIES: usize = 64 * 1024;

/// How long a refused session ([`Session::refused`]) waits for QUIT.
pub const REFUSED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A complete message and its envelope, handed to the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The EHLO/HELO name.
    pub helo: String,
    /// True when the client said EHLO.
    pub esmtp: bool,
    /// The reverse-path, empty for the null sender.
    pub mail_from: String,
    /// Accepted recipients, in order, without duplicates.
    pub recipients: Vec<String>,
    /// The message as received (dot-stuffing removed).
    pub body: Vec<u8>,
    /// `BODY=8BITMIME` was given.
    pub eight_bit: bool,
    /// `SMTPUTF8` was given.
    pub smtputf8: bool,
    /// The body came by BDAT.
    pub chunked: bool,
    /// The session's TLS parameters, if it was encrypted.
    pub tls: Option<TlsInfo>,
    /// `REQUIRETLS` was given (RFC 8689).
    pub require_tls: bool,
}

/// A side effect the session asks its driver to perform.
#[derive(Debug)]
pub enum Action {
    /// Make the transaction durable, then feed back a [`Completion`].
    Spool(Box<Transaction>),
    /// Flush pending replies, discard every octet received after the
    /// STARTTLS command (never replay them), run the TLS handshake, then
    /// call [`Session::handle_tls_established`] (or close on failure).
    StartTls,
    /// Check the sender (SPF) before MAIL FROM is answered; feed back
    /// [`Completion::Sender`]. No input is used meanwhile.
    CheckSender {
        /// The reverse-path (empty for `<>`).
        mail_from: String,
        /// The EHLO/HELO name.
        helo: String,
    },
    /// Flush pending replies and close the connection.
    Close,
}

/// The result of an [`Action::Spool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// The message and envelope are on disk and fdatasync'd.
    Spooled {
        /// The queue id shown in the `250` reply.
        id: String,
    },
    /// The spool could not make the message durable.
    SpoolFailed,
    /// The message was refused by policy (DMARC, ...) before spooling:
    /// this reply is sent instead of `250`.
    Refused(Reply),
    /// The result of [`Action::CheckSender`]: `None` accepts the sender,
    /// `Some(reply)` refuses MAIL FROM with that reply.
    Sender(Option<Reply>),
}

#[derive(Debug)]
struct Envelope {
    mail_from: String,
    params: MailParams,
    recipients: Vec<String>,
    body: Vec<u8>,
    /// BDAT chunks have been received in this transaction.
    chunked: bool,
    /// Octets received by BDAT, including those over the limit.
    bdat_size: u64,
    /// CRLF and line-length rules over the BDAT chunks, across chunk
    /// boundaries: BINARYMIME is not offered, so BDAT carries text too.
    bdat_text: TextCheck,
}

#[derive(Debug)]
enum State {
    Command,
    /// Discarding the rest of a command line longer than the limit.
    LongLine,
    Data {
        decoder: DataDecoder,
        started: Instant,
    },
    Bdat {
        remaining: u64,
        last: bool,
        /// The reply for a chunk that belongs to no valid transaction.
        refuse: Option<Reply>,
        started: Instant,
    },
    Spooling,
    /// STARTTLS was accepted; no input is used until the handshake is done.
    StartingTls,
    /// MAIL FROM waits for the sender check; the envelope starts on success.
    CheckingSender(Box<Envelope>),
    Closed,
}

/// One SMTP server session (see the module docs for the calling contract).
#[derive(Debug)]
pub struct Session {
    cfg: Arc<SessionConfig>,
    state: State,
    helo: Option<(String, bool)>,
    envelope: Option<Envelope>,
    tls: Option<TlsInfo>,
    errors: u32,
    actions: VecDeque<Action>,
    /// When the current command line, data block or whole body is due.
    deadline: Instant,
    /// When the whole session ends (`smtp_session_timeout`).
    ends: Instant,
    /// Set for a refused session: its greeting, and 503 to all but QUIT.
    refusal: Option<Reply>,
    gate: Option<GateBox>,
}

impl Session {
    /// A new session; call [`Session::greet`] next.
    pub fn new(cfg: Arc<SessionConfig>, now: Instant) -> Session {
        let deadline = now + cfg.limits.command_timeout;
        let ends = now + cfg.limits.session_timeout;
        Session {
            cfg,
            state: State::Command,
            helo: None,
            envelope: None,
            tls: None,
            errors: 0,
            actions: VecDeque::new(),
            deadline,
            ends,
            refusal: None,
            gate: None,
        }
    }

    /// A session that refuses the client (a ban): [`Session::greet`] writes
    /// `reply` instead of `220`, every command but QUIT gets `503` (RFC 5321
    /// section 3.1), no message is read, and the session ends after QUIT or
    /// [`REFUSED_TIMEOUT`].
    pub fn refused(cfg: Arc<SessionConfig>, now: Instant, reply: Reply) -> Session {
        let mut s = Session::new(cfg, now);
        s.deadline = now + REFUSED_TIMEOUT;
        s.ends = s.deadline;
        s.refusal = Some(reply);
        s
    }

    /// Sets the admission policy asked at MAIL and RCPT.
    pub fn set_gate(&mut self, gate: Box<dyn Gate>) {
        self.gate = Some(GateBox(gate));
    }

    fn misbehaved(&mut self, what: Misbehaviour) {
        if let Some(g) = &mut self.gate {
            g.0.misbehaved(what);
        }
    }

    /// Writes the `220` greeting.
    pub fn greet(&mut self, out: &mut Vec<u8>) {
        if let Some(reply) = &self.refusal {
            reply.write_to(out);
            return;
        }
        let greeting = Reply::new(220, "", format!("{} ESMTP gomail", self.cfg.hostname));
        greeting.write_to(out);
    }

    /// A session on an implicit-TLS connection (`smtps_listen`): TLS is
    /// already up, so STARTTLS is not offered.
    pub fn new_tls(cfg: Arc<SessionConfig>, now: Instant, tls: TlsInfo) -> Session {
        let mut s = Session::new(cfg, now);
        s.tls = Some(tls);
        s
    }

    /// Feeds back a completed STARTTLS handshake. The session starts over
    /// (RFC 3207 section 4.2): the client must say EHLO again, and nothing
    /// said before the handshake counts.
    pub fn handle_tls_established(&mut self, tls: TlsInfo, now: Instant) {
        if !matches!(self.state, State::StartingTls) {
            return;
        }
        self.state = State::Command;
        self.helo = None;
        self.envelope = None;
        self.tls = Some(tls);
        self.deadline = now + self.cfg.limits.command_timeout;
    }

    /// True once the session has closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// True while the session waits for nothing but the next command (no
    /// transaction open): a graceful shutdown may close it now.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Command) && self.envelope.is_none()
    }

    /// The next side effect to perform.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Session::handle_timeout`] should be called, if at all.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Spooling | State::StartingTls | State::CheckingSender(_) | State::Closed => None,
            _ => Some(self.deadline.min(self.ends)),
        }
    }

    /// Closes the session with a timeout reply if its deadline (or the
    /// session's time limit) has passed.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<u8>) {
        if self.poll_timeout().is_some_and(|d| now >= d) {
            if now >= self.ends && self.refusal.is_none() {
                Reply::SESSION_TIMEOUT.write_to(out);
            } else {
                Reply::TIMEOUT.write_to(out);
            }
            self.close();
        }
    }

    /// Closes an idle session for a server shutdown (`421 4.3.2`).
    pub fn shutdown(&mut self, out: &mut Vec<u8>) {
        if !self.is_closed() {
            Reply::SHUTTING_DOWN.write_to(out);
            self.close();
        }
    }

    /// Feeds back the result of an [`Action::Spool`].
    pub fn handle_completion(&mut self, completion: Completion, now: Instant, out: &mut Vec<u8>) {
        if let Completion::Sender(verdict) = completion {
            // A verdict nobody waits for changes nothing: replacing the
            // state first would drop a DATA, BDAT or closed state for
            // `Command`, and the rest of a message would run as commands.
            if !matches!(self.state, State::CheckingSender(_)) {
                return;
            }
            let State::CheckingSender(env) = std::mem::replace(&mut self.state, State::Command)
            else {
                unreachable!("checked above")
            };
            self.deadline = now + self.cfg.limits.command_timeout;
            match verdict {
                None => {
                    self.envelope = Some(*env);
                    self.reply(Reply::SENDER_OK, out);
                }
                Some(reply) => self.reply(reply, out),
            }
            return;
        }
        if !matches!(self.state, State::Spooling) {
            return;
        }
        self.state = State::Command;
        self.deadline = now + self.cfg.limits.command_timeout;
        match completion {
            Completion::Spooled { id } => {
                Reply::new(250, "2.0.0", format!("Ok: queued as {id}")).write_to(out)
            }
            Completion::SpoolFailed => Reply::SPOOL_FAILED.write_to(out),
            Completion::Refused(reply) => self.reply(reply, out),
            Completion::Sender(_) => unreachable!("handled above"),
        }
    }

    /// Feeds received octets; returns how many were used (see module docs).
    pub fn handle_input(&mut self, input: &[u8], now: Instant, out: &mut Vec<u8>) -> usize {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match &mut self.state {
                State::Closed => return input.len(),
                State::Spooling | State::StartingTls | State::CheckingSender(_) => return pos,
                State::Command if out.len() >= MAX_PENDING_REPLIES => return pos,
                State::Command => {
                    // Only CRLF ends a command line: a bare LF or CR inside
                    // makes the whole line up to the CRLF one bad line.
                    let Some(end) = memchr::memmem::find(rest, b"\r\n") else {
                        if rest.len() >= MAX_COMMAND_LINE {
                            self.state = State::LongLine;
                            return input.len() - usize::from(rest.ends_with(b"\r"));
                        }
                        return pos;
                    };
                    pos += end + 2;
                    if end + 2 > MAX_COMMAND_LINE {
                        self.reply(Reply::LINE_TOO_LONG, out);
                        continue;
                    }
                    let line = &rest[..end];
                    if memchr::memchr2(b'\r', b'\n', line).is_some() {
                        self.reply(Reply::BARE_NEWLINE_COMMAND, out);
                        continue;
                    }
                    if self.refusal.is_some() {
                        self.refused_command(line, out);
                        continue;
                    }
                    self.deadline = now + self.cfg.limits.command_timeout;
                    self.command(line, now, out);
                }
                State::LongLine => match memchr::memmem::find(rest, b"\r\n") {
                    // Keep a trailing CR: it may pair with the next read's LF.
                    None => return input.len() - usize::from(rest.ends_with(b"\r")),
                    Some(end) => {
                        pos += end + 2;
                        self.state = State::Command;
                        self.deadline = now + self.cfg.limits.command_timeout;
                        self.reply(Reply::LINE_TOO_LONG, out);
                    }
                },
                State::Data { decoder, started } => {
                    if rest.is_empty() {
                        return pos;
                    }
                    let started = *started;
                    let body = &mut self.envelope.as_mut().expect("DATA has an envelope").body;
                    let (used, done) = decoder.decode(rest, body);
                    pos += used;
                    if !done {
                        self.deadline = self.data_deadline(now, started);
                        return pos;
                    }
                    let State::Data { decoder, .. } =
                        std::mem::replace(&mut self.state, State::Command)
                    else {
                        unreachable!()
                    };
                    self.deadline = now + self.cfg.limits.command_timeout;
                    self.end_of_data(&decoder, out);
                }
                State::Bdat {
                    remaining, started, ..
                } => {
                    let take = (*remaining).min(rest.len() as u64) as usize;
                    *remaining -= take as u64;
                    let started = *started;
                    let done = *remaining == 0;
                    pos += take;
                    if let Some(env) = self.envelope.as_mut() {
                        let room = self
                            .cfg
                            .limits
                            .max_message_size
                            .saturating_sub(env.bdat_size);
                        let keep = (take as u64).min(room) as usize;
                        env.body.extend_from_slice(&rest[..keep]);
                        env.bdat_size += take as u64;
                        env.bdat_text.feed(&rest[..take]);
                    }
                    if !done {
                        self.deadline = self.data_deadline(now, started);
                        return pos;
                    }
                    let State::Bdat { last, refuse, .. } =
                        std::mem::replace(&mut self.state, State::Command)
                    else {
                        unreachable!()
                    };
                    self.deadline = now + self.cfg.limits.command_timeout;
                    self.end_of_chunk(last, refuse, out);
                }
            }
        }
    }

    fn data_deadline(&self, now: Instant, started: Instant) -> Instant {
        let l = &self.cfg.limits;
        (now + l.data_block_timeout).min(started + l.data_total_timeout)
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.envelope = None;
        self.actions.push_back(Action::Close);
    }

    /// Writes a reply and counts client errors; closes at the limit.
    fn reply(&mut self, reply: Reply, out: &mut Vec<u8>) {
        let counted = reply.code >= 500;
        self.reply_counting(reply, counted, out);
    }

    /// Writes a refusal of the [`Gate`] (a rate): counted as an error, as
    /// Postfix counts its 4xx rejects, so a client that keeps going over
    /// its rate is closed at `max_errors` instead of pipelining refusals
    /// for the whole session.
    fn gate_refusal(&mut self, reply: Reply, out: &mut Vec<u8>) {
        self.reply_counting(reply, true, out);
    }

    fn reply_counting(&mut self, reply: Reply, counted: bool, out: &mut Vec<u8>) {
        reply.write_to(out);
        if counted {
            self.errors += 1;
            if self.errors >= self.cfg.limits.max_errors {
                Reply::TOO_MANY_ERRORS.write_to(out);
                self.close();
                self.misbehaved(Misbehaviour::TooManyErrors);
            }
        }
    }

    fn end_of_data(&mut self, decoder: &DataDecoder, out: &mut Vec<u8>) {
        let refusal = if decoder.oversized() {
            Some(Reply::TOO_BIG)
        } else {
            decoder.text().refusal()
        };
        self.finish(refusal, out);
    }

    fn end_of_chunk(&mut self, last: bool, refuse: Option<Reply>, out: &mut Vec<u8>) {
        if let Some(reply) = refuse {
            self.reply(reply, out);
            return;
        }
        let Some(env) = self.envelope.as_mut() else {
            return;
        };
        if env.bdat_size > self.cfg.limits.max_message_size {
            // Too big: the transaction is over; later chunks are discarded.
            self.finish(Some(Reply::TOO_BIG), out);
        } else if last {
            env.bdat_text.finish();
            let refusal = env.bdat_text.text().refusal();
            self.finish(refusal, out);
        } else {
            let n = env.bdat_size;
            self.reply(
                Reply::new(250, "2.0.0", format!("{n} octets received")),
                out,
            );
        }
    }

    /// Ends a transaction: refuses it, or hands it to the spool.
    fn finish(&mut self, refusal: Option<Reply>, out: &mut Vec<u8>) {
        let Some(env) = self.envelope.take() else {
            return;
        };
        let refusal = refusal
            .or_else(|| (count_hops(&env.body) > MAX_HOPS).then_some(Reply::TOO_MANY_HOPS))
            .or_else(|| {
                self.cfg
                    .strict_headers
                    .then(|| super::headers::check(&env.body))
                    .flatten()
            });
        if let Some(reply) = refusal {
            self.reply(reply, out);
            return;
        }
        let (helo, esmtp) = self.helo.clone().unwrap_or_default();
        self.actions.push_back(Action::Spool(Box::new(Transaction {
            helo,
            esmtp,
            mail_from: env.mail_from,
            recipients: env.recipients,
            body: env.body,
            eight_bit: env.params.eight_bit,
            smtputf8: env.params.smtputf8,
            chunked: env.chunked,
            tls: self.tls.clone(),
            require_tls: env.params.require_tls,
        })));
        self.state = State::Spooling;
    }
}

/// Counts `Received:` header fields in the header section.
fn count_hops(message: &[u8]) -> usize {
    let mut hops = 0;
    for line in message.split(|&b| b == b'\n') {
        if line == b"\r" || line.is_empty() {
            break;
        }
        if line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:") {
            hops += 1;
        }
    }
    hops
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
