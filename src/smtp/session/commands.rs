//! The session's command handling: one parsed command line in, replies and
//! state changes out (EHLO, MAIL, RCPT, DATA, BDAT, STARTTLS, ...).

use std::time::Instant;

use super::*;

impl Session {
    /// A refused session's answer: QUIT ends it, anything else is `503`.
    pub(super) fn refused_command(&mut self, line: &[u8], out: &mut Vec<u8>) {
        if matches!(command::parse(line), Ok(Command::Quit)) {
            Reply::BYE.write_to(out);
            self.close();
        } else {
            self.reply(Reply::REFUSED_SESSION, out);
        }
    }

    pub(super) fn command(&mut self, line: &[u8], now: Instant, out: &mut Vec<u8>) {
        let cmd = match command::parse(line) {
            Ok(cmd) => cmd,
            Err(reply) => {
                let framing_lost = reply == Reply::SYNTAX_BDAT;
                self.reply(reply, out);
                if framing_lost && !self.is_closed() {
                    // A BDAT line without a usable size: its chunk cannot
                    // be skipped, so what follows cannot be told apart from
                    // commands. End the session rather than guess.
                    Reply::BDAT_FRAMING_LOST.write_to(out);
                    self.close();
                }
                return;
            }
        };
        match cmd {
            Command::Ehlo(name) => {
                self.envelope = None;
                self.helo = Some((name.to_string(), true));
                self.write_ehlo(out);
            }
            Command::Helo(name) => {
                self.envelope = None;
                self.helo = Some((name.to_string(), false));
                Reply::new(250, "", self.cfg.hostname.clone()).write_to(out);
            }
            Command::Mail(path, params) => {
                let reply = if self.helo.is_none() {
                    Reply::NEED_EHLO
                } else if self.envelope.is_some() {
                    Reply::NESTED_MAIL
                } else if params
                    .size
                    .is_some_and(|s| s > self.cfg.limits.max_message_size)
                {
                    Reply::TOO_BIG
                } else if path.is_utf8() && !params.smtputf8 {
                    Reply::NEED_SMTPUTF8
                } else if params.require_tls && self.tls.is_none() {
                    // Not advertised without TLS (RFC 8689 section 4).
                    Reply::UNSUPPORTED_PARAM
                } else if self.cfg.reject_non_fqdn_sender
                    && self.gate.is_some()
                    && !path.domain.is_empty()
                    && !crate::smtp::command::is_fqdn(path.domain)
                {
                    Reply::non_fqdn_sender(path.address)
                } else if let Some(r) = self.gate.as_mut().and_then(|g| g.0.mail(now)) {
                    self.gate_refusal(r, out);
                    return;
                } else {
                    let env = Envelope {
                        mail_from: path.address.to_string(),
                        params,
                        recipients: Vec::new(),
                        body: Vec::new(),
                        chunked: false,
                        bdat_size: 0,
                        bdat_text: TextCheck::default(),
                    };
                    if self.cfg.check_sender {
                        let helo = self
                            .helo
                            .as_ref()
                            .map(|(h, _)| h.clone())
                            .unwrap_or_default();
                        self.actions.push_back(Action::CheckSender {
                            mail_from: env.mail_from.clone(),
                            helo,
                        });
                        self.state = State::CheckingSender(Box::new(env));
                        return;
                    }
                    self.envelope = Some(env);
                    Reply::SENDER_OK
                };
                self.reply(reply, out);
            }
            Command::Rcpt(path) => match self.rcpt(path, now) {
                Ok(reply) => self.reply(reply, out),
                Err(refusal) => self.gate_refusal(refusal, out),
            },
            Command::Data => {
                let reply = match (&self.helo, &self.envelope) {
                    (None, _) => Reply::NEED_EHLO,
                    (_, None) => Reply::NEED_MAIL,
                    (_, Some(env)) if env.chunked => Reply::DATA_AFTER_BDAT,
                    (_, Some(env)) if env.recipients.is_empty() => Reply::NO_VALID_RECIPIENTS,
                    _ => {
                        Reply::START_DATA.write_to(out);
                        self.state = State::Data {
                            decoder: DataDecoder::new(self.cfg.limits.max_message_size),
                            started: now,
                        };
                        self.deadline = self.data_deadline(now, now);
                        return;
                    }
                };
                self.reply(reply, out);
            }
            Command::Bdat { size, last } => {
                let refuse = match (&self.helo, &mut self.envelope) {
                    (None, _) => Some(Reply::NEED_EHLO),
                    (_, None) => Some(Reply::NEED_MAIL),
                    (_, Some(env)) if env.recipients.is_empty() => Some(Reply::NO_VALID_RECIPIENTS),
                    (_, Some(env)) => {
                        env.chunked = true;
                        None
                    }
                };
                if refuse.is_some() {
                    // The chunk is read and thrown away: its octets are
                    // never taken for commands.
                    self.envelope = None;
                }
                self.state = State::Bdat {
                    remaining: size,
                    last,
                    refuse,
                    started: now,
                };
                self.deadline = self.data_deadline(now, now);
            }
            Command::Rset => {
                self.envelope = None;
                self.reply(Reply::OK, out);
            }
            Command::Noop => self.reply(Reply::OK, out),
            Command::Quit => {
                Reply::BYE.write_to(out);
                self.close();
            }
            Command::Vrfy => self.reply(Reply::CANNOT_VRFY, out),
            Command::Expn => self.reply(Reply::NOT_IMPLEMENTED, out),
            Command::Help => self.reply(Reply::HELP, out),
            Command::StartTls => {
                if self.tls.is_some() {
                    self.reply(Reply::TLS_ALREADY_ACTIVE, out);
                } else if !self.cfg.starttls {
                    self.reply(Reply::NOT_IMPLEMENTED, out);
                } else {
                    Reply::READY_TLS.write_to(out);
                    self.envelope = None;
                    self.state = State::StartingTls;
                    self.actions.push_back(Action::StartTls);
                }
            }
            Command::Auth => self.reply(Reply::AUTH_NOT_ENABLED, out),
        }
    }

    /// The reply to RCPT; `Err` for the [`Gate`]'s refusal.
    fn rcpt(&mut self, path: command::Path<'_>, now: Instant) -> Result<Reply, Reply> {
        if self.helo.is_none() {
            return Ok(Reply::NEED_EHLO);
        }
        let primary = self.cfg.domains.first().map(String::as_str).unwrap_or("");
        let Some(env) = self.envelope.as_mut() else {
            return Ok(Reply::NEED_MAIL);
        };
        if env.chunked {
            return Ok(Reply::NESTED_MAIL);
        }
        if path.is_utf8() && !env.params.smtputf8 {
            return Ok(Reply::NEED_SMTPUTF8);
        }
        let address = if path.domain.is_empty() {
            // <postmaster> without a domain must be accepted (RFC 5321 4.5.1).
            format!("postmaster@{primary}")
        } else if self.cfg.accepts(path.domain) {
            path.address.to_string()
        } else {
            self.misbehaved(Misbehaviour::Relay);
            return Ok(Reply::RELAY_DENIED);
        };
        if env
            .recipients
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&address))
        {
            return Ok(Reply::RECIPIENT_OK);
        }
        if env.recipients.len() >= self.cfg.limits.max_recipients {
            return Ok(Reply::TOO_MANY_RECIPIENTS);
        }
        if let Some(r) = self.gate.as_mut().and_then(|g| g.0.rcpt(now)) {
            return Err(r);
        }
        let Some(env) = self.envelope.as_mut() else {
            return Ok(Reply::NEED_MAIL);
        };
        env.recipients.push(address);
        Ok(Reply::RECIPIENT_OK)
    }

    fn write_ehlo(&self, out: &mut Vec<u8>) {
        // Only the hostname and SIZE lines are formatted; the keywords are
        // borrowed.
        let last = if self.tls.is_some() {
            Some("REQUIRETLS")
        } else if self.cfg.starttls {
            Some("STARTTLS")
        } else {
            None
        };
        Reply::new(250, "", self.cfg.hostname.clone()).write_line(out, false);
        Reply::new(250, "", "PIPELINING").write_line(out, false);
        Reply::new(
            250,
            "",
            format!("SIZE {}", self.cfg.limits.max_message_size),
        )
        .write_line(out, false);
        let keywords = ["8BITMIME", "SMTPUTF8", "CHUNKING", "ENHANCEDSTATUSCODES"];
        for (i, kw) in keywords.iter().enumerate() {
            Reply::new(250, "", *kw).write_line(out, last.is_none() && i + 1 == keywords.len());
        }
        if let Some(kw) = last {
            Reply::new(250, "", kw).write_line(out, true);
        }
    }
}
