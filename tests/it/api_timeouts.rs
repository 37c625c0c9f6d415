//! The control plane's `http_timeouts` from outside, on raw sockets:
//! `idle` closes a quiet keep-alive connection but never a request being
//! handled, `read` bounds a request head but not the wait before it,
//! `write` closes a client that does not read, and `shutdown` lets a
//! request in flight at SIGTERM finish.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::harness::{log_events, wait_until, Gomail};

const ADMIN: &str = "admin-secret-7f3a";

/// A raw HTTP/1.1 client on one connection: exact bytes out, whole
/// responses in (headers, then `Content-Length` octets).
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(g: &Gomail) -> Raw {
        let s = TcpStream::connect(g.api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Raw { s, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &str) {
        self.s.write_all(bytes.as_bytes()).unwrap();
    }

    /// One response: (status line, headers, body).
    fn response(&mut self) -> (String, String, String) {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill();
        };
        let head = String::from_utf8(self.buf.drain(..head_end).collect()).unwrap();
        let (status, headers) = head.split_once("\r\n").unwrap();
        let len = headers
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().unwrap())
            })
            .unwrap_or(0);
        while self.buf.len() < len {
            self.fill();
        }
        let body = String::from_utf8(self.buf.drain(..len).collect()).unwrap();
        (status.to_string(), headers.to_ascii_lowercase(), body)
    }

    fn fill(&mut self) {
        let mut tmp = [0u8; 4096];
        let n = self
            .s
            .read(&mut tmp)
            .expect("a response before the deadline");
        assert!(n > 0, "closed mid-response: {:?}", self.buf);
        self.buf.extend_from_slice(&tmp[..n]);
    }

    /// Waits for the server to close: true on EOF (or a reset), false if
    /// the connection is still open at the read deadline.
    fn closed_by_server(&mut self) -> bool {
        let mut tmp = [0u8; 4096];
        match self.s.read(&mut tmp) {
            Ok(0) => true,
            Ok(n) => panic!("unexpected octets: {:?}", &tmp[..n]),
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    }
}

/// A `POST /mail/inbound` for our domain: (headers asking for
/// `100 Continue`, body).
fn inbound_request(subject: &str) -> (String, String) {
    let body = serde_json::json!({
        "sender": "alice@example.org",
        "recipient": "bob@example.test",
        "raw": format!("From: alice@example.org\nTo: bob@example.test\nSubject: {subject}\n\nhello\n"),
    })
    .to_string();
    let head = format!(
        "POST /mail/inbound HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    (head, body)
}

#[test]
fn idle_closes_a_quiet_keep_alive_connection_but_not_a_request_being_handled() {
    let g = Gomail::start(&format!(
        "admin_token: {ADMIN}\nhttp_timeouts:\n  idle: 1s\n"
    ));
    // A request whose handler is waiting for the rest of its body: the
    // handler has it once the server asks for the body (100 Continue).
    let mut busy = Raw::connect(&g);
    let (head, body) = inbound_request("slow");
    busy.send(&head);
    assert_eq!(busy.response().0, "HTTP/1.1 100 Continue");
    let (first, rest) = body.split_at(body.len() / 2);
    busy.send(first);

    // Started after `busy` went quiet, so its idle time ends later.
    let mut quiet = Raw::connect(&g);
    quiet.send("GET /health HTTP/1.1\r\nHost: g\r\n\r\n");
    let (status, headers, _) = quiet.response();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(!headers.contains("connection: close"), "{headers}");
    let t0 = Instant::now();
    assert!(
        quiet.closed_by_server(),
        "a keep-alive connection with nothing to do is closed after http_timeouts.idle"
    );
    assert!(t0.elapsed() >= Duration::from_millis(900));

    // `busy` has been quiet longer than `quiet` was, and is still served.
    busy.send(rest);
    let (status, _, answer) = busy.response();
    assert_eq!(status, "HTTP/1.1 200 OK", "{answer}");
    assert!(answer.contains("\"status\":\"success\""), "{answer}");
}

#[test]
fn read_bounds_a_request_head_and_idle_the_wait_between_requests() {
    let g = Gomail::start("http_timeouts:\n  read: 1s\n  idle: 120s\n");
    let mut kept = Raw::connect(&g);
    kept.send("GET /health HTTP/1.1\r\nHost: g\r\n\r\n");
    assert_eq!(kept.response().0, "HTTP/1.1 200 OK");

    // Started after `kept`'s answer: a head that stops coming is cut at
    // `read` from its first octet.
    let mut slow = Raw::connect(&g);
    slow.send("GET /health HTTP/1.1\r\nHost:");
    let t0 = Instant::now();
    assert!(
        slow.closed_by_server(),
        "a stalled head is closed after read"
    );
    assert!(t0.elapsed() >= Duration::from_millis(900));

    // `kept` has waited longer than `read` for its next request, and
    // `idle` is what applies to that wait.
    kept.send("GET /health HTTP/1.1\r\nHost: g\r\n\r\n");
    assert_eq!(kept.response().0, "HTTP/1.1 200 OK");
}

#[test]
fn write_closes_a_client_that_does_not_take_its_responses() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("gomail.log");
    let g = Gomail::start(&format!(
        "http_timeouts:\n  write: 1s\nlog_format: json\nlog_file: \"{}\"\n",
        log.display()
    ));
    // A small receive window: the server's writes stall at once.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&g.api.into()).unwrap();
    let mut s: TcpStream = sock.into();
    // About 10 MB of scrapes (25 KB each), pipelined and never read.
    const REQUESTS: usize = 400;
    let requests = "GET /metrics HTTP/1.1\r\nHost: g\r\n\r\n".repeat(REQUESTS);
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may close before it has read every request.
    let _ = s.write_all(requests.as_bytes());

    wait_until(
        Duration::from_secs(20),
        "an http_write_timeout event",
        || !log_events(&log, "http_write_timeout").is_empty(),
    );
    let events = log_events(&log, "http_write_timeout");
    assert_eq!(events.len(), 1, "logged once: {events:?}");
    assert_eq!(events[0]["ip"], "127.0.0.1");
    assert_eq!(events[0]["level"], "warn");

    // What was sent before the close can still be read; then the
    // connection ends, short of the responses asked for.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut tmp = [0u8; 64 * 1024];
    let end = loop {
        match s.read(&mut tmp) {
            Ok(0) => break "eof",
            Ok(n) => got.extend_from_slice(&tmp[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break "still open"
            }
            Err(_) => break "reset",
        }
    };
    assert_ne!(end, "still open", "the server closed the connection");
    let answered = got.windows(12).filter(|w| w == b"HTTP/1.1 200").count();
    assert!(answered < REQUESTS, "{answered} of {REQUESTS} answered");
    // The API still serves everyone else.
    assert_eq!(super::harness::http(g.api, "GET", "/health").0, 200);
}

#[test]
fn shutdown_lets_a_request_in_flight_at_sigterm_finish() {
    let mut g = Gomail::start(&format!(
        "admin_token: {ADMIN}\nhttp_timeouts:\n  shutdown: 5s\n"
    ));
    let mut c = Raw::connect(&g);
    let (head, body) = inbound_request("in flight at SIGTERM");
    c.send(&head);
    assert_eq!(c.response().0, "HTTP/1.1 100 Continue");
    let (first, rest) = body.split_at(body.len() / 2);
    c.send(first);

    unsafe { libc::kill(g.child.id() as i32, libc::SIGTERM) };
    wait_until(Duration::from_secs(10), "the API to stop accepting", || {
        TcpStream::connect(g.api).is_err()
    });
    c.send(rest);
    let (status, headers, answer) = c.response();
    assert_eq!(status, "HTTP/1.1 200 OK", "{answer}");
    assert!(answer.contains("\"status\":\"success\""), "{answer}");
    assert!(headers.contains("connection: close"), "{headers}");
    assert!(c.closed_by_server());

    let t0 = Instant::now();
    let exit = loop {
        if let Some(status) = g.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "gomail did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    // The message was spooled before the answer, and stored on the way out.
    let stored = super::harness::stored(&g.data_dir);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].1["subject"], "in flight at SIGTERM");
}
