//! The whole sans-IO session: a client's bytes at arbitrary split points,
//! arbitrary completions, timeouts and STARTTLS, against the promises the
//! [`Session`] type documents.
//!
//! Input layout (every part may be empty):
//!
//! ```text
//! flags | gate | k | k control octets | plaintext [0xFE after-TLS octets]
//! ```
//!
//! `flags` chooses the configuration and the kind of session, `gate` the
//! pattern of rate refusals, and the control octets the completions of the
//! session's actions (by action number), the split points of the second
//! run and the clock of the third. The first `0xFE` (never part of UTF-8,
//! so never of a command) separates what the client sends in plaintext
//! from what it sends once TLS is up; the plaintext after STARTTLS is
//! dropped, as the driver drops it.
//!
//! Each input is driven three times: whole, in chunks (with stray
//! completions between them, which must change nothing), and in chunks
//! with the clock moving. The first two must give the same replies and
//! transactions; every run is checked for:
//! - no `250` to the end of DATA that was not written by a `Spooled`
//!   completion, and no `queued as` written by anything else;
//! - nothing used or written while an action is outstanding, and nothing
//!   after the session closed;
//! - after STARTTLS, replies and transactions exactly those of a fresh
//!   TLS session fed only the after-TLS octets: nothing the client said
//!   before counts, nothing it pipelined after STARTTLS is executed;
//! - every reply line well formed, and every spooled transaction within
//!   the limits and the text rules (no bare CR or LF, no line over 998
//!   octets, at most [`MAX_HOPS`] `Received:` fields);
//! - no panic.

use std::cell::Cell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::smtp::limits::{MAX_HOPS, MAX_TEXT_LINE};
use crate::smtp::trace::{received_header, return_path_header};
use crate::smtp::{
    Action, Completion, Gate, Limits, Misbehaviour, Reply, Session, SessionConfig, TlsInfo,
    Transaction,
};

const STARTTLS: u8 = 1;
const CHECK_SENDER: u8 = 1 << 1;
const STRICT_HEADERS: u8 = 1 << 2;
const GATE: u8 = 1 << 3;
const SMALL_LIMITS: u8 = 1 << 4;
const FEW_ERRORS: u8 = 1 << 5;
const REFUSED: u8 = 1 << 6;
const IMPLICIT_TLS: u8 = 1 << 7;

/// Separates the plaintext octets from those sent after the handshake.
const TLS_MARK: u8 = 0xFE;

const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

/// One fuzz input, taken apart.
struct Input<'a> {
    flags: u8,
    gate: u8,
    control: &'a [u8],
    plain: &'a [u8],
    /// `None` without a [`TLS_MARK`].
    after_tls: Option<&'a [u8]>,
    cfg: Arc<SessionConfig>,
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Input<'a> {
        let at = |i: usize| data.get(i).copied().unwrap_or(0);
        let (flags, gate, k) = (at(0), at(1), usize::from(at(2)));
        let rest = data.get(3..).unwrap_or_default();
        let (control, script) = rest.split_at(k.min(rest.len()));
        let (plain, after_tls) = match script.iter().position(|&b| b == TLS_MARK) {
            Some(i) => (&script[..i], Some(&script[i + 1..])),
            None => (script, None),
        };
        let small = flags & SMALL_LIMITS != 0;
        let cfg = Arc::new(SessionConfig {
            hostname: "mx.example.test".into(),
            domains: vec!["example.test".into(), "other.test".into()],
            limits: Limits {
                max_message_size: if small { 64 } else { 2000 },
                max_recipients: if small { 2 } else { 3 },
                // Without FEW_ERRORS the count never closes a session, so a
                // session after STARTTLS can be compared with a fresh one
                // (the count is deliberately kept across the handshake).
                max_errors: if flags & FEW_ERRORS != 0 { 3 } else { u32::MAX },
                ..Limits::default()
            },
            starttls: flags & STARTTLS != 0,
            check_sender: flags & CHECK_SENDER != 0,
            reject_non_fqdn_sender: true,
            strict_headers: flags & STRICT_HEADERS != 0,
        });
        Input {
            flags,
            gate,
            control,
            plain,
            after_tls,
            cfg,
        }
    }

    fn pick(&self, i: usize) -> u8 {
        match self.control.len() {
            0 => 0,
            n => self.control[i % n],
        }
    }

    /// The completion for the session's `n`th action.
    fn completion(&self, n: usize, action: &Action) -> Option<Completion> {
        let c = self.pick(n);
        let refusals = [
            Reply::new(550, "5.7.1", "Message rejected by DMARC policy"),
            Reply::new(451, "4.7.1", "Try again later"),
            Reply::STORE_FAILING,
        ];
        match action {
            Action::Spool(_) => Some(match c % 4 {
                0 | 1 => Completion::Spooled {
                    id: format!("Q{n}"),
                },
                2 => Completion::SpoolFailed,
                _ => Completion::Refused(refusals[usize::from(c / 4) % refusals.len()].clone()),
            }),
            Action::CheckSender { .. } => Some(Completion::Sender(
                (c % 3 == 2).then(|| Reply::new(550, "5.7.23", "SPF check failed")),
            )),
            Action::StartTls | Action::Close => None,
        }
    }

    /// Whether the `n`th action, a STARTTLS, ends in a handshake.
    fn handshake_succeeds(&self, n: usize) -> bool {
        self.pick(n) % 4 != 3
    }

    /// Octets in the `j`th chunk of a chunked run: byte by byte without
    /// control octets.
    fn chunk(&self, j: usize) -> usize {
        usize::from(self.pick(j.wrapping_mul(5).wrapping_add(1)) % 32) + 1
    }
}

fn tls_info() -> TlsInfo {
    TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
        sni: Some("mx.example.test".into()),
    }
}

/// Refuses MAIL and RCPT by a fixed pattern over its calls, like a rate.
struct PatternGate {
    calls: Rc<Cell<u32>>,
    pattern: u8,
}

impl PatternGate {
    fn refuses(&mut self) -> bool {
        let n = self.calls.get();
        self.calls.set(n + 1);
        self.pattern >> (n % 8) & 1 == 1
    }
}

impl Gate for PatternGate {
    fn mail(&mut self, _now: Instant) -> Option<Reply> {
        self.refuses().then(|| Reply::message_rate(PEER))
    }
    fn rcpt(&mut self, _now: Instant) -> Option<Reply> {
        self.refuses().then(|| Reply::recipient_rate(PEER))
    }
    fn misbehaved(&mut self, _what: Misbehaviour) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// `greet`, `handle_input`, `handle_timeout`, other completions.
    Other,
    /// `handle_completion(Completion::Spooled { .. })`.
    Spooled,
}

/// How the session starts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    Plain,
    Tls,
    Refused,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Whole,
    /// In chunks, with stray completions between them.
    Chunks,
    /// In chunks, with the clock moving and timeouts handled.
    Clock,
}

/// What a client and the spool observe; whole and chunked runs agree on it.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    out: Vec<u8>,
    spooled: Vec<Transaction>,
    /// Where in `out` each `Spooled` completion wrote.
    acks: Vec<(usize, usize)>,
    closed: bool,
}

struct Run<'a> {
    input: &'a Input<'a>,
    mode: Mode,
    start: Start,
    s: Session,
    now: Instant,
    out: Vec<u8>,
    /// Who wrote `out` up to each offset.
    writers: Vec<(usize, Writer)>,
    held: Vec<u8>,
    spooled: Vec<Transaction>,
    acks: Vec<(usize, usize)>,
    /// Actions so far (numbers the completions).
    actions: usize,
    closed: bool,
    /// A STARTTLS action arrived: its number.
    starttls: Option<usize>,
    tls: bool,
    gate_calls: Rc<Cell<u32>>,
    chunks: usize,
}

impl<'a> Run<'a> {
    fn new(
        input: &'a Input<'a>,
        mode: Mode,
        start: Start,
        actions: usize,
        gate_calls: u32,
    ) -> Self {
        let now = Instant::now();
        let cfg = input.cfg.clone();
        let mut s = match start {
            Start::Plain => Session::new(cfg, now),
            Start::Tls => Session::new_tls(cfg, now, tls_info()),
            Start::Refused => Session::refused(cfg, now, Reply::banned(PEER)),
        };
        let calls = Rc::new(Cell::new(gate_calls));
        if input.flags & GATE != 0 {
            s.set_gate(Box::new(PatternGate {
                calls: calls.clone(),
                pattern: input.gate,
            }));
        }
        Run {
            input,
            mode,
            start,
            s,
            now,
            out: Vec::new(),
            writers: Vec::new(),
            held: Vec::new(),
            spooled: Vec::new(),
            acks: Vec::new(),
            actions,
            closed: false,
            starttls: None,
            tls: start == Start::Tls,
            gate_calls: calls,
            chunks: 0,
        }
    }

    fn mark(&mut self, w: Writer) {
        if self
            .writers
            .last()
            .is_none_or(|&(end, _)| end < self.out.len())
        {
            self.writers.push((self.out.len(), w));
        }
    }

    /// Feeds `bytes` the way the shard driver does, in this run's chunks.
    fn feed(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() && self.starttls.is_none() {
            let n = match self.mode {
                Mode::Whole => rest.len(),
                Mode::Chunks | Mode::Clock => self.input.chunk(self.chunks).min(rest.len()),
            };
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            self.feed_chunk(chunk);
            self.between_chunks();
            self.chunks += 1;
        }
    }

    fn feed_chunk(&mut self, chunk: &[u8]) {
        self.held.extend_from_slice(chunk);
        loop {
            let before = self.out.len();
            let used = self.s.handle_input(&self.held, self.now, &mut self.out);
            assert!(
                used <= self.held.len(),
                "used {used} of {}",
                self.held.len()
            );
            if self.closed {
                assert_eq!(used, self.held.len(), "a closed session keeps input");
                assert_eq!(self.out.len(), before, "a closed session wrote");
            }
            self.mark(Writer::Other);
            self.held.drain(..used);
            let progressed = self.drain_actions();
            if self.starttls.is_some() {
                // The driver discards every octet after the STARTTLS line.
                self.held.clear();
                return;
            }
            if !progressed || self.held.is_empty() {
                return;
            }
        }
    }

    /// Performs the session's actions; true if one was completed.
    fn drain_actions(&mut self) -> bool {
        let mut completed = false;
        while let Some(action) = self.s.poll_action() {
            let n = self.actions;
            self.actions += 1;
            match &action {
                Action::Close => {
                    assert!(self.s.is_closed(), "Close from an open session");
                    self.closed = true;
                }
                Action::StartTls => {
                    assert!(
                        self.out.ends_with(b"220 2.0.0 Ready to start TLS\r\n"),
                        "STARTTLS asked for after other replies: {:?}",
                        tail(&self.out)
                    );
                    assert!(!self.tls, "STARTTLS on a TLS session");
                    assert!(
                        self.start != Start::Refused,
                        "STARTTLS on a refused session"
                    );
                    self.assert_waits();
                    self.starttls = Some(n);
                }
                Action::Spool(tx) => {
                    assert!(self.start != Start::Refused, "a refused session spooled");
                    self.assert_waits();
                    self.check_transaction(tx);
                }
                Action::CheckSender { helo, .. } => {
                    assert!(
                        self.start != Start::Refused,
                        "a refused session checks a sender"
                    );
                    assert!(!helo.is_empty(), "sender check before EHLO");
                    self.assert_waits();
                }
            }
            let Some(c) = self.input.completion(n, &action) else {
                continue;
            };
            let before = self.out.len();
            self.s.handle_completion(c.clone(), self.now, &mut self.out);
            match c {
                Completion::Spooled { id } => {
                    assert_eq!(
                        &self.out[before..],
                        format!("250 2.0.0 Ok: queued as {id}\r\n").as_bytes(),
                        "the reply to Spooled"
                    );
                    self.mark(Writer::Spooled);
                    self.acks.push((before, self.out.len()));
                }
                _ => self.mark(Writer::Other),
            }
            if let Action::Spool(tx) = action {
                self.spooled.push(*tx);
            }
            completed = true;
        }
        completed
    }

    /// While an action is outstanding the session uses no input, writes
    /// nothing and has no timer.
    fn assert_waits(&mut self) {
        let before = self.out.len();
        let held = std::mem::take(&mut self.held);
        let probe: &[u8] = if held.is_empty() { b"NOOP\r\n" } else { &held };
        assert_eq!(
            self.s.handle_input(probe, self.now, &mut self.out),
            0,
            "input used while waiting"
        );
        self.held = held;
        assert_eq!(self.s.poll_timeout(), None, "a timer while waiting");
        self.s
            .handle_timeout(self.now + Duration::from_secs(86_400 * 365), &mut self.out);
        assert_eq!(self.out.len(), before, "written while waiting");
        assert!(!self.s.is_closed(), "closed while waiting");
    }

    /// Between two chunks: stray calls that must change nothing (the
    /// differential check with the whole run finds it if they do), or the
    /// clock moving.
    fn between_chunks(&mut self) {
        let c = self.input.pick(self.chunks.wrapping_mul(3).wrapping_add(2));
        match self.mode {
            Mode::Whole => {}
            Mode::Chunks => {
                let before = self.out.len();
                match c % 8 {
                    0 => self.s.handle_completion(
                        Completion::Spooled { id: "STRAY".into() },
                        self.now,
                        &mut self.out,
                    ),
                    1 => {
                        self.s
                            .handle_completion(Completion::Sender(None), self.now, &mut self.out)
                    }
                    2 => self.s.handle_tls_established(tls_info(), self.now),
                    _ => {}
                }
                assert_eq!(self.out.len(), before, "a stray call wrote");
                assert!(
                    self.s.poll_action().is_none(),
                    "a stray call asked for an action"
                );
            }
            Mode::Clock => {
                let l = &self.input.cfg.limits;
                self.now += match c % 8 {
                    0 => Duration::from_secs(1),
                    1 => l.command_timeout - Duration::from_secs(1),
                    2 => l.command_timeout,
                    3 => l.data_block_timeout,
                    4 => Duration::from_secs(3600),
                    _ => Duration::ZERO,
                };
                self.timeout();
            }
        }
    }

    fn timeout(&mut self) {
        let due = self.s.poll_timeout();
        let before = self.out.len();
        self.s.handle_timeout(self.now, &mut self.out);
        self.mark(Writer::Other);
        let written = &self.out[before..];
        match due {
            Some(at) if self.now >= at => {
                assert!(
                    written.starts_with(b"421 4.4.2 ")
                        && written.ends_with(b"\r\n")
                        && written.iter().filter(|&&b| b == b'\n').count() == 1,
                    "timeout reply {:?}",
                    String::from_utf8_lossy(written)
                );
                assert!(self.s.is_closed(), "open after its timeout");
                assert!(matches!(self.s.poll_action(), Some(Action::Close)));
                assert!(self.s.poll_action().is_none());
                self.actions += 1;
                self.closed = true;
            }
            _ => assert!(written.is_empty(), "timeout reply before the deadline"),
        }
    }

    fn check_transaction(&self, tx: &Transaction) {
        let cfg = &self.input.cfg;
        assert!(!tx.helo.is_empty(), "a transaction without EHLO/HELO");
        assert!(
            !tx.recipients.is_empty(),
            "a transaction without recipients"
        );
        assert!(
            tx.recipients.len() <= cfg.limits.max_recipients,
            "{} recipients",
            tx.recipients.len()
        );
        for (i, r) in tx.recipients.iter().enumerate() {
            let domain = r.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
            assert!(
                cfg.domains.iter().any(|d| d.eq_ignore_ascii_case(domain)),
                "recipient {r:?} is not in our domains"
            );
            assert!(
                !tx.recipients[..i].iter().any(|o| o.eq_ignore_ascii_case(r)),
                "recipient {r:?} twice"
            );
        }
        if !tx.smtputf8 {
            assert!(
                tx.mail_from.is_ascii() && tx.recipients.iter().all(|r| r.is_ascii()),
                "UTF-8 addresses without SMTPUTF8"
            );
        }
        assert_eq!(tx.tls.is_some(), self.tls, "TLS facts of the transaction");
        assert!(!tx.require_tls || self.tls, "REQUIRETLS without TLS");
        assert!(
            tx.body.len() as u64 <= cfg.limits.max_message_size,
            "a body of {} octets",
            tx.body.len()
        );
        assert_text(&tx.body);
        if !tx.chunked {
            assert!(
                tx.body.is_empty() || tx.body.ends_with(b"\r\n"),
                "a DATA body that does not end in CRLF"
            );
        }
        let hops = tx
            .body
            .split(|&b| b == b'\n')
            .take_while(|l| !l.is_empty() && *l != b"\r")
            .filter(|l| l.len() >= 9 && l[..9].eq_ignore_ascii_case(b"received:"))
            .count();
        assert!(hops <= MAX_HOPS, "{hops} Received fields");
        if cfg.strict_headers {
            assert_eq!(
                crate::smtp::headers::check(&tx.body),
                None,
                "strict headers"
            );
        }
        let h = received_header(
            tx,
            PEER,
            &cfg.hostname,
            "Q1",
            "Mon, 1 Dec 2025 08:00:00 +0000",
        );
        assert_header(&h, "Received: from ");
        assert_header(&return_path_header(&tx.mail_from), "Return-Path: <");
        // What follows the trace fields in the store never continues them.
        let next = crate::smtp::trace::separator(&tx.body)
            .as_bytes()
            .first()
            .or(tx.body.first());
        assert!(
            !matches!(next, Some(b' ' | b'\t')),
            "the message continues our Received field"
        );
    }

    fn outcome(self) -> (Outcome, Vec<(usize, Writer)>) {
        (
            Outcome {
                out: self.out,
                spooled: self.spooled,
                acks: self.acks,
                closed: self.closed,
            },
            self.writers,
        )
    }
}

/// The message octets obey the text rules the session enforces: every CR
/// and LF part of a CRLF, lines of at most 998 octets before it.
fn assert_text(body: &[u8]) {
    for (i, &b) in body.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(body.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
            b'\n' => assert!(i > 0 && body[i - 1] == b'\r', "bare LF at {i}"),
            _ => {}
        }
    }
    let mut rest = body;
    while !rest.is_empty() {
        let n = memchr::memmem::find(rest, b"\r\n").unwrap_or(rest.len());
        assert!(n + 2 <= MAX_TEXT_LINE, "a line of {n} octets");
        rest = rest.get(n + 2..).unwrap_or_default();
    }
}

/// A header field gomail builds: starts as given, one field of CRLF
/// lines, every line after the first folded (starts with a tab).
fn assert_header(h: &str, starts: &str) {
    assert!(h.starts_with(starts) && h.ends_with("\r\n"), "header {h:?}");
    for (i, line) in h[..h.len() - 2].split("\r\n").enumerate() {
        assert!(
            !line.contains(['\r', '\n']),
            "bare CR or LF in header {h:?}"
        );
        assert!(
            i == 0 || line.starts_with('\t'),
            "unfolded line in header {h:?}"
        );
    }
}

/// The last octets of `out`, for messages.
fn tail(out: &[u8]) -> String {
    String::from_utf8_lossy(&out[out.len().saturating_sub(200)..]).into_owned()
}

/// Every line is `ddd text` or `ddd-text` ending in CRLF, a multi-line
/// reply keeps its code, and the reply after `354` is a `250` only when
/// the spool's `Spooled` wrote it.
fn check_replies(o: &Outcome, writers: &[(usize, Writer)], start: Start) {
    let text = &o.out;
    assert!(
        text.is_empty() || text.ends_with(b"\r\n"),
        "unterminated reply {:?}",
        tail(text)
    );
    let writer_at = |offset: usize| {
        writers
            .iter()
            .find(|&&(end, _)| end > offset)
            .map_or(Writer::Other, |&(_, w)| w)
    };
    let mut at = 0;
    let mut continued: Option<&[u8]> = None;
    let mut after_354 = false;
    let mut first = true;
    while at < text.len() {
        let end = at + memchr::memmem::find(&text[at..], b"\r\n").expect("terminated");
        let line = &text[at..end];
        assert!(
            line.len() >= 4
                && line[..3].iter().all(u8::is_ascii_digit)
                && matches!(line[3], b' ' | b'-')
                && !line.contains(&b'\r')
                && !line.contains(&b'\n'),
            "bad reply line {:?}",
            String::from_utf8_lossy(line)
        );
        let code = &line[..3];
        assert!(
            (b'2'..=b'5').contains(&code[0]),
            "reply code {:?}",
            String::from_utf8_lossy(code)
        );
        if let Some(c) = continued {
            assert_eq!(c, code, "a multi-line reply changed its code");
        }
        let writer = writer_at(at);
        if memchr::memmem::find(line, b"queued as").is_some() {
            assert_eq!(
                writer,
                Writer::Spooled,
                "`queued as` not written by Spooled"
            );
        }
        if line[3] == b'-' {
            continued = Some(code);
        } else {
            continued = None;
            if after_354 {
                assert!(
                    code[0] != b'2' || writer == Writer::Spooled,
                    "{:?} to the end of DATA without Spooled",
                    String::from_utf8_lossy(line)
                );
            }
            after_354 = code == b"354";
            if start == Start::Refused && !first {
                assert!(
                    code == b"221" || code[0] == b'4' || code[0] == b'5',
                    "a refused session answered {:?}",
                    String::from_utf8_lossy(line)
                );
            }
            first = false;
        }
        at = end + 2;
    }
    assert!(
        continued.is_none(),
        "a multi-line reply without its last line"
    );
}

/// See the module docs.
pub fn session(data: &[u8]) {
    let input = Input::new(&data[..data.len().min(1 << 16)]);
    let start = if input.flags & REFUSED != 0 {
        Start::Refused
    } else if input.flags & IMPLICIT_TLS != 0 {
        Start::Tls
    } else {
        Start::Plain
    };
    let mut outcomes = Vec::new();
    for mode in [Mode::Whole, Mode::Chunks, Mode::Clock] {
        let mut run = Run::new(&input, mode, start, 0, 0);
        run.s.greet(&mut run.out);
        run.mark(Writer::Other);
        run.feed(input.plain);
        let mut fresh = None;
        if let Some(n) = run.starttls {
            if input.handshake_succeeds(n) {
                run.s.handle_tls_established(tls_info(), run.now);
                run.tls = true;
                assert!(
                    run.s.poll_action().is_none(),
                    "an action from the handshake"
                );
                assert!(run.s.is_idle(), "a transaction survived STARTTLS");
                fresh = Some((
                    run.out.len(),
                    run.spooled.len(),
                    run.actions,
                    run.gate_calls.get(),
                ));
                run.starttls = None;
                run.feed(input.after_tls.unwrap_or_default());
            }
        }
        if mode == Mode::Clock && !run.closed && run.starttls.is_none() {
            // However the session stands, it has a deadline.
            run.now += input.cfg.limits.session_timeout;
            run.timeout();
            assert!(run.closed, "no deadline");
        }
        let (outcome, writers) = run.outcome();
        check_replies(&outcome, &writers, start);
        if mode != Mode::Clock && input.cfg.limits.max_errors == u32::MAX {
            if let Some((out_at, spooled_at, actions, gate_calls)) = fresh {
                // A session after STARTTLS is a fresh TLS session.
                let mut new = Run::new(&input, mode, Start::Tls, actions, gate_calls);
                new.feed(input.after_tls.unwrap_or_default());
                let (tls_only, _) = new.outcome();
                assert_eq!(
                    String::from_utf8_lossy(&outcome.out[out_at..]),
                    String::from_utf8_lossy(&tls_only.out),
                    "after STARTTLS, replies differ from a fresh TLS session's"
                );
                assert_eq!(outcome.spooled[spooled_at..], tls_only.spooled[..]);
            }
        }
        outcomes.push(outcome);
    }
    let (whole, chunks) = (&outcomes[0], &outcomes[1]);
    assert_eq!(
        String::from_utf8_lossy(&whole.out),
        String::from_utf8_lossy(&chunks.out),
        "whole and chunked input gave different replies"
    );
    assert_eq!(
        whole, chunks,
        "whole and chunked input gave different results"
    );
}
