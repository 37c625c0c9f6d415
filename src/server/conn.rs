//! The per-connection driver: the only IO an SMTP session has.
//!
//! It works in batches: read, feed the session everything held, perform the
//! actions it asks for (spool, STARTTLS), feed back the results, and write
//! all replies of the batch at once (PIPELINING).

use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::server::TlsStream;
use glommio::net::{TcpListener, TcpStream};

use super::accept::{accept_message, verify_and_accept};
use super::contain::contain;
use super::{admit, Live, ShardState};
use crate::admission::table::RefusedBy;
use crate::admission::{client_key, Violation};
use crate::auth::SenderCheck;
use crate::smtp::{Action, Completion, Reply, Session, TlsInfo};
use mail_auth::IprevOutput;

/// Octets read per read call (the size of the shard's one read buffer).
pub(super) const READ_CHUNK: usize = 16 * 1024;

use crate::smtp::session::MAX_PENDING_REPLIES;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long closing a connection may take (a TLS close_notify).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A client connection, before or after TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while the stream is handed to the TLS handshake.
    Upgrading,
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Upgrading => Poll::Ready(Ok(0)),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Upgrading => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Upgrading => Poll::Ready(Ok(())),
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_close(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
            Conn::Upgrading => Poll::Ready(Ok(())),
        }
    }
}

/// Runs the TLS handshake on `tcp` with the current TLS configuration.
/// Counts and logs a failure; the caller then drops the connection.
async fn handshake(
    state: &Rc<ShardState>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<(TlsStream<TcpStream>, TlsInfo)> {
    let config = state.tls.as_ref()?.load();
    let acceptor = futures_rustls::TlsAcceptor::from((*config).clone());
    let result = future::or(async { Some(acceptor.accept(tcp).await) }, async {
        glommio::timer::sleep(HANDSHAKE_TIMEOUT).await;
        None
    })
    .await;
    match result {
        Some(Ok(tls)) => {
            let conn = tls.get_ref().1;
            let info = TlsInfo {
                version: conn
                    .protocol_version()
                    .and_then(|v| v.as_str())
                    .unwrap_or("TLS")
                    .replace("TLSv1_", "TLSv1."),
                cipher: conn
                    .negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite()))
                    .unwrap_or_default(),
                sni: conn.server_name().map(str::to_string),
            };
            let mut st = state.stats.borrow_mut();
            st.tls_handshakes += 1;
            *st.tls_by_suite
                .entry(format!("{} {}", info.version, info.cipher))
                .or_default() += 1;
            Some((tls, info))
        }
        other => {
            state.stats.borrow_mut().tls_handshake_failures += 1;
            let reason = match other {
                Some(Err(e)) => e.to_string(),
                _ => format!("no handshake within {HANDSHAKE_TIMEOUT:?}"),
            };
            tracing::info!(event = "tls_handshake_failed", shard = state.id, ip = %peer.ip(), %reason, "TLS handshake failed");
            None
        }
    }
}

pub(super) async fn accept_loop(state: Rc<ShardState>, listener: TcpListener, implicit_tls: bool) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(shard = state.id, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = match stream.peer_addr() {
            Ok(p) => p,
            Err(_) => continue,
        };
        state.stats.borrow_mut().connections_accepted += 1;
        // The settings this connection lives by, from admission to close.
        let live = state.live();
        let (admitted, banned) = match admit::admit(&state, &live.admission, peer.ip()) {
            admit::Decision::Serve(a) => (a, None),
            admit::Decision::Banned(a, reply) => (a, Some(reply)),
            admit::Decision::Refuse(reply) => {
                let timeout = live.admission.write_timeout;
                glommio::spawn_local(async move {
                    let mut stream = stream;
                    refuse_and_close(&mut stream, &reply, implicit_tls, timeout).await;
                })
                .detach();
                continue;
            }
        };
        state.active.set(state.active.get() + 1);
        let st = state.clone();
        glommio::spawn_local(async move {
            let work = connection(&st, &live, stream, peer, implicit_tls, &admitted, banned);
            if let Err(what) = contain(work).await {
                st.stats.borrow_mut().connection_panics += 1;
                tracing::error!(shard = st.id, client = %peer.ip(), panic = %what, "a connection's task panicked (a bug in gomail): that connection is dropped, the shard goes on; a message it had not been answered 250 for was not accepted");
            }
            drop(admitted);
            st.active.set(st.active.get() - 1);
        })
        .detach();
    }
}

/// How a write to a client ended.
#[derive(Debug, PartialEq, Eq)]
enum Written {
    /// All of it was sent (flushed, for TLS).
    Done,
    /// The client did not take it within the deadline.
    TimedOut,
    /// The connection failed.
    Failed,
}

/// Writes and flushes `bytes` unless the client takes longer than
/// `timeout` to take them.
async fn write_within<W: AsyncWrite + Unpin>(
    stream: &mut W,
    bytes: &[u8],
    timeout: Duration,
) -> Written {
    future::or(
        async {
            match stream.write_all(bytes).await {
                Ok(()) if stream.flush().await.is_ok() => Written::Done,
                _ => Written::Failed,
            }
        },
        async {
            glommio::timer::sleep(timeout).await;
            Written::TimedOut
        },
    )
    .await
}

/// Closes the connection, waiting at most [`CLOSE_TIMEOUT`]: a TLS close
/// writes an alert, which a client that does not read would never take.
async fn close_within<W: AsyncWrite + Unpin>(stream: &mut W) {
    future::or(
        async {
            let _ = stream.close().await;
        },
        glommio::timer::sleep(CLOSE_TIMEOUT),
    )
    .await
}

/// Writes one refusal (plaintext listeners only: an implicit-TLS client
/// cannot read one before its handshake) and closes.
async fn refuse_and_close(
    stream: &mut TcpStream,
    reply: &Reply,
    implicit_tls: bool,
    timeout: Duration,
) {
    if !implicit_tls {
        let mut out = Vec::new();
        reply.write_to(&mut out);
        write_within(stream, &out, timeout).await;
    }
    close_within(stream).await;
}

/// One accepted connection: pregreet, blocklists, the TLS handshake for
/// implicit TLS, then the SMTP session.
async fn connection(
    st: &Rc<ShardState>,
    live: &Live,
    mut stream: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
    admitted: &admit::Admitted,
    banned: Option<Reply>,
) {
    let _ = stream.set_nodelay(true);
    let ip = peer.ip().to_canonical();
    let timeout = live.admission.write_timeout;
    if let Some(reply) = banned {
        if implicit_tls {
            close_within(&mut stream).await;
            return;
        }
        let session = Session::refused(live.session.clone(), Instant::now(), reply);
        Box::pin(serve(st, live, Conn::Plain(stream), session, peer)).await;
        return;
    }
    let wait = live.admission.pregreet_wait;
    let pregreet = if !implicit_tls && !wait.is_zero() && !admitted.trusted() {
        match spoke_first(&mut stream, wait).await {
            Some(spoke) => spoke,
            None => return,
        }
    } else {
        false
    };
    if pregreet {
        admit::refused(st, RefusedBy::Pregreet);
        admit::violation(st, client_key(ip), Violation::Pregreet);
        tracing::info!(shard = st.id, client = %ip, wait_ms = wait.as_millis() as u64, "client refused: it sent data before the greeting");
        refuse_and_close(&mut stream, &Reply::pregreet(ip), false, timeout).await;
        return;
    }
    if let Some(zones) = match &st.auth {
        Some(auth) if !admitted.trusted() => Box::pin(auth.dnsbl(peer.ip())).await,
        _ => None,
    } {
        st.stats.borrow_mut().connections_blocked += 1;
        admit::refused(st, RefusedBy::Dnsbl);
        admit::violation(st, client_key(ip), Violation::Dnsbl);
        tracing::info!(shard = st.id, client = %peer.ip(), zones = %zones.join(","), "client refused: listed by DNS blocklists");
        let reply = Reply::new(
            554,
            "5.7.1",
            format!(
                "Service unavailable; client [{}] blocked using {}",
                peer.ip(),
                zones.join(", ")
            ),
        );
        refuse_and_close(&mut stream, &reply, implicit_tls, timeout).await;
        return;
    }
    let conn = if implicit_tls {
        Box::pin(handshake(st, stream, peer))
            .await
            .map(|(tls, info)| {
                let s = Session::new_tls(live.session.clone(), Instant::now(), info);
                (Conn::Tls(Box::new(tls)), s)
            })
    } else {
        Some((
            Conn::Plain(stream),
            Session::new(live.session.clone(), Instant::now()),
        ))
    };
    if let Some((conn, mut session)) = conn {
        if let Some(gate) = admitted.gate(ip) {
            session.set_gate(gate);
        }
        Box::pin(serve(st, live, conn, session, peer)).await;
    }
}

/// Waits `wait` before the greeting: `Some(true)` when the client sent
/// anything meanwhile (a pregreet: spam engines do not wait for the
/// server), `Some(false)` when it waited, `None` when it went away.
async fn spoke_first(stream: &mut TcpStream, wait: Duration) -> Option<bool> {
    let mut probe = [0u8; 64];
    future::or(
        async {
            match stream.read(&mut probe).await {
                Ok(0) | Err(_) => None,
                Ok(_) => Some(true),
            }
        },
        async {
            glommio::timer::sleep(wait).await;
            Some(false)
        },
    )
    .await
}

/// Reads what the client sent into `held`, through the shard's read buffer.
/// The buffer is borrowed only inside each poll, so many connections
/// waiting to read share one buffer.
async fn read_some(
    stream: &mut Conn,
    buf: &std::cell::RefCell<Vec<u8>>,
    held: &mut Vec<u8>,
) -> std::io::Result<usize> {
    future::poll_fn(|cx| {
        let mut b = buf.borrow_mut();
        match Pin::new(&mut *stream).poll_read(cx, &mut b[..]) {
            Poll::Ready(Ok(n)) => {
                held.extend_from_slice(&b[..n]);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    })
    .await
}

enum Event {
    Read(std::io::Result<usize>),
    Timeout,
    Shutdown,
}

async fn serve(
    state: &Rc<ShardState>,
    live: &Live,
    mut stream: Conn,
    mut session: Session,
    peer: SocketAddr,
) {
    let mut out = Vec::new();
    session.greet(&mut out);
    // Only what a read brought and the session has not used yet: empty
    // (no allocation) while the connection is idle.
    let mut held: Vec<u8> = Vec::new();
    let write_timeout = live.admission.write_timeout;
    let mut shutdown_seen = false;
    // Boxed: kept only between MAIL and the end of DATA, so an idle
    // connection's task does not carry its size.
    let mut sender: Option<Box<SenderCheck>> = None;
    // iprev depends only on the client's address: asked once per connection.
    let mut iprev: Option<IprevOutput> = None;
    loop {
        let mut start_tls = false;
        loop {
            #[cfg(feature = "fault-injection")]
            if held.starts_with(b"XFAULT PANIC\r\n") {
                panic!("fault injection: XFAULT PANIC");
            }
            #[cfg(feature = "fault-injection")]
            if let Some(rest) = held.strip_prefix(b"XFAULT DONE-FAIL\r\n") {
                crate::spool::fail_done_writes();
                held = rest.to_vec();
                out.extend_from_slice(b"250 2.0.0 done records now fail\r\n");
            }
            let used = session.handle_input(&held, Instant::now(), &mut out);
            held.drain(..used);
            let mut progressed = false;
            while let Some(action) = session.poll_action() {
                match action {
                    Action::CheckSender { mail_from, helo } => {
                        let verdict = match &state.auth {
                            Some(auth) => {
                                let t0 = Instant::now();
                                let check =
                                    Box::pin(auth.check_sender(peer.ip(), &helo, &mail_from)).await;
                                state
                                    .stats
                                    .borrow_mut()
                                    .auth_latency
                                    .observe(t0.elapsed().as_micros() as u64);
                                let refusal = check.refusal.clone();
                                sender = Some(Box::new(check));
                                refusal
                            }
                            None => None,
                        };
                        session.handle_completion(
                            Completion::Sender(verdict),
                            Instant::now(),
                            &mut out,
                        );
                        progressed = true;
                    }
                    Action::Spool(_) if state.store.is_failing() => {
                        // What is accepted now could not be finished: the
                        // client keeps the message until the store works.
                        state.stats.borrow_mut().store_refusals += 1;
                        session.handle_completion(
                            Completion::Refused(Reply::STORE_FAILING),
                            Instant::now(),
                            &mut out,
                        );
                        progressed = true;
                    }
                    Action::Spool(tx)
                        if live.spool_refusal(&state.spool, tx.body.len()).is_some() =>
                    {
                        // Back-pressure: the receiver is slow or down and the
                        // shard's undelivered backlog is full (in messages or
                        // on disk). The client keeps the message and retries
                        // later.
                        let reply = live
                            .spool_refusal(&state.spool, tx.body.len())
                            .expect("just checked");
                        state.stats.borrow_mut().spool_backlog_refusals += 1;
                        tracing::warn!(shard = state.id, backlog = state.spool.outstanding(), spool_bytes = state.spool.disk_bytes(), client = %peer.ip(), %tx.mail_from, "spool backlog full; message deferred with 452 4.3.1");
                        session.handle_completion(
                            Completion::Refused(reply),
                            Instant::now(),
                            &mut out,
                        );
                        progressed = true;
                    }
                    Action::Spool(tx) => {
                        let c = match &state.auth {
                            Some(auth) => {
                                let check = match sender.take() {
                                    Some(c) => *c,
                                    None => {
                                        Box::pin(auth.check_sender(
                                            peer.ip(),
                                            &tx.helo,
                                            &tx.mail_from,
                                        ))
                                        .await
                                    }
                                };
                                if iprev.is_none() {
                                    iprev = Some(Box::pin(auth.iprev(peer.ip())).await);
                                }
                                let iprev = iprev.as_ref().expect("set above");
                                Box::pin(verify_and_accept(
                                    state, auth, &tx, peer, &check, iprev, None,
                                ))
                                .await
                            }
                            None => Box::pin(accept_message(state, &tx, peer, None, None)).await,
                        };
                        session.handle_completion(c, Instant::now(), &mut out);
                        progressed = true;
                    }
                    Action::StartTls => start_tls = true,
                    Action::Close => {}
                }
            }
            if !progressed
                || held.is_empty()
                || session.is_closed()
                || out.len() >= MAX_PENDING_REPLIES
            {
                break;
            }
        }
        // The session stopped answering at MAX_PENDING_REPLIES: pipelined
        // commands are still held, to be answered before anything more is
        // read.
        let more = out.len() >= MAX_PENDING_REPLIES && !held.is_empty();
        if !out.is_empty() {
            match write_within(&mut stream, &out, write_timeout).await {
                Written::Done => {}
                Written::Failed => break,
                Written::TimedOut => {
                    state.stats.borrow_mut().write_timeouts += 1;
                    tracing::info!(shard = state.id, client = %peer.ip(), pending = out.len(), timeout_s = write_timeout.as_secs(), "client closed: it did not take its replies within smtp_write_timeout");
                    break;
                }
            }
            // Nothing kept for an idle connection.
            out = Vec::new();
        }
        if session.is_closed() {
            break;
        }
        if more && !start_tls {
            continue;
        }
        if start_tls {
            // Promise 4: whatever the client sent after STARTTLS in
            // plaintext is dropped, never replayed inside TLS.
            held.clear();
            let Conn::Plain(tcp) = std::mem::replace(&mut stream, Conn::Upgrading) else {
                break;
            };
            match Box::pin(handshake(state, tcp, peer)).await {
                Some((tls, info)) => {
                    stream = Conn::Tls(Box::new(tls));
                    session.handle_tls_established(info, Instant::now());
                    continue;
                }
                None => return,
            }
        }
        if held.is_empty() {
            held = Vec::new();
        } else if held.capacity() > 2 * held.len() + 1024 {
            held.shrink_to_fit();
        }
        let deadline = session.poll_timeout();
        let read = async { Event::Read(read_some(&mut stream, &state.read_buf, &mut held).await) };
        let timer = async {
            match deadline {
                Some(d) => {
                    glommio::timer::sleep(d.saturating_duration_since(Instant::now())).await;
                    Event::Timeout
                }
                None => future::pending().await,
            }
        };
        let shutdown = async {
            if shutdown_seen {
                future::pending::<()>().await;
            }
            let _ = state.shutdown.recv().await;
            Event::Shutdown
        };
        match future::or(read, future::or(timer, shutdown)).await {
            Event::Read(Ok(0)) | Event::Read(Err(_)) => break,
            Event::Read(Ok(_)) => {}
            Event::Timeout => session.handle_timeout(Instant::now(), &mut out),
            Event::Shutdown => {
                shutdown_seen = true;
                if session.is_idle() {
                    session.shutdown(&mut out);
                }
            }
        }
    }
    close_within(&mut stream).await;
}
