//! The per-connection driver: the only IO an SMTP session has.
//!
//! It works in batches: read, feed the session everything held, perform the
//! actions it asks for (spool), feed back the results, and write all
//! replies of the batch at once (PIPELINING).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::future;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use super::ShardState;
use crate::smtp::{trace, Action, Completion, Reply, Session, Transaction};
use crate::spool::{Envelope, Spooled};

/// Octets read per read call.
const READ_CHUNK: usize = 16 * 1024;

pub(super) async fn accept_loop(state: Rc<ShardState>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(shard = state.id, error = %e, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = match stream.peer_addr() {
            Ok(p) => p,
            Err(_) => continue,
        };
        state.stats.borrow_mut().connections_accepted += 1;
        if state.active.get() >= state.max_connections {
            state.stats.borrow_mut().connections_refused += 1;
            glommio::spawn_local(async move {
                let mut stream = stream;
                let mut out = Vec::new();
                Reply::new(421, "4.7.0", "Error: too many connections, try again later")
                    .write_to(&mut out);
                let _ = stream.write_all(&out).await;
                let _ = stream.close().await;
            })
            .detach();
            continue;
        }
        state.active.set(state.active.get() + 1);
        let st = state.clone();
        glommio::spawn_local(async move {
            serve(&st, stream, peer).await;
            st.active.set(st.active.get() - 1);
        })
        .detach();
    }
}

enum Event {
    Read(std::io::Result<usize>),
    Timeout,
    Shutdown,
}

async fn serve(state: &Rc<ShardState>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut session = Session::new(state.session.clone(), Instant::now());
    let mut out = Vec::with_capacity(1024);
    session.greet(&mut out);
    let mut held: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut rbuf = vec![0u8; READ_CHUNK];
    let mut shutdown_seen = false;
    loop {
        loop {
            let used = session.handle_input(&held, Instant::now(), &mut out);
            held.drain(..used);
            let mut progressed = false;
            while let Some(action) = session.poll_action() {
                if let Action::Spool(tx) = action {
                    let c = accept_message(state, &tx, peer).await;
                    session.handle_completion(c, Instant::now(), &mut out);
                    progressed = true;
                }
            }
            if !progressed || held.is_empty() || session.is_closed() {
                break;
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        if session.is_closed() {
            break;
        }
        let deadline = session.poll_timeout();
        let read = async { Event::Read(stream.read(&mut rbuf).await) };
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
            Event::Read(Ok(n)) => held.extend_from_slice(&rbuf[..n]),
            Event::Timeout => session.handle_timeout(Instant::now(), &mut out),
            Event::Shutdown => {
                shutdown_seen = true;
                if session.is_idle() {
                    session.shutdown(&mut out);
                }
            }
        }
    }
    let _ = stream.close().await;
}

/// Spools one message; the answer becomes the session's completion.
async fn accept_message(state: &Rc<ShardState>, tx: &Transaction, peer: SocketAddr) -> Completion {
    let now = chrono::Utc::now();
    let id = format!("{:016x}", fastrand::u64(..));
    let received = trace::received_header(tx, peer.ip(), &state.hostname, &id, &now.to_rfc2822());
    let mut envelope = Envelope {
        id: id.clone(),
        received_at_ms: now.timestamp_millis(),
        mail_from: tx.mail_from.clone(),
        recipients: tx.recipients.clone(),
        helo: tx.helo.clone(),
        client_ip: peer.ip().to_string(),
        esmtp: tx.esmtp,
        eight_bit: tx.eight_bit,
        smtputf8: tx.smtputf8,
        chunked: tx.chunked,
        shard: state.id,
        spool_us: 0,
    };
    let started = Instant::now();
    match state
        .spool
        .commit(&envelope, received.as_bytes(), &tx.body)
        .await
    {
        Ok(segment) => {
            envelope.spool_us = started.elapsed().as_micros() as u64;
            let mut message = Vec::with_capacity(received.len() + tx.body.len());
            message.extend_from_slice(received.as_bytes());
            message.extend_from_slice(&tx.body);
            {
                let mut s = state.stats.borrow_mut();
                s.messages_accepted += 1;
                s.bytes_accepted += message.len() as u64;
            }
            tracing::debug!(shard = state.id, id = %id, from = %tx.mail_from, rcpts = tx.recipients.len(), size = message.len(), "accepted");
            state.delivery.push(Spooled {
                envelope,
                message,
                segment,
            });
            Completion::Spooled { id }
        }
        Err(e) => {
            state.stats.borrow_mut().spool_failures += 1;
            tracing::error!(shard = state.id, error = %e, client = %peer.ip(), "message refused with 451: spool write failed");
            Completion::SpoolFailed
        }
    }
}
