//! The control plane's socket: a TCP stream that keeps the connection's
//! clocks for `http_timeouts.read`, `.write` and `.idle`.
//!
//! hyper reads and writes through [`TimedStream`]; the connection's service
//! marks each request it handles with [`Activity::begin`]. From that the
//! stream knows which wait the connection is in:
//!
//! - **a request head** (the connection is new, or octets came after the
//!   last request ended): the whole head must arrive within `read` of its
//!   first octet (of the accept, for the first request);
//! - **between requests** (the last one has ended and no octet has come
//!   since): `idle` after the last octet moved either way, unless a
//!   response is still being written;
//! - **a request with its handler**: no read deadline here. The handler is
//!   bounded by `handler` and its body by `read` (both in `mod.rs`), so
//!   `idle` never cuts a request being answered.
//!
//! Octets that arrive while a request is handled may be its body or the
//! next request pipelined behind it; the stream cannot tell which, so they
//! start no clock. If they are only part of the next head, that head has
//! `idle` and then `read` from its next octet: bounded, a little longer.
//!
//! Writes are timed apart: a write the client does not take for `write`
//! (no octet accepted by the socket) fails the connection, however long the
//! response has been flowing before.
//!
//! A deadline that passes is an `io::ErrorKind::TimedOut` error to hyper,
//! which then drops the connection without an answer. This file decides
//! nothing about HTTP.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// The three per-connection timeouts, from `http_timeouts`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    /// `read`: a request head, from its first octet.
    pub(super) read: Duration,
    /// `write`: a write that makes no progress.
    pub(super) write: Duration,
    /// `idle`: a keep-alive connection with nothing to do.
    pub(super) idle: Duration,
}

/// Which wait a connection is in (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request head is coming; its first octet (or the accept) was at
    /// `since`.
    Head { since: Instant },
    /// No request: the last one ended at `since`.
    Between { since: Instant },
    /// This many requests are with their handlers (HTTP/1 has one at a
    /// time; counting keeps the guard right whatever hyper does).
    Handling(usize),
}

/// What a connection is doing, shared by its stream and its service.
#[derive(Debug)]
pub(super) struct Activity(Mutex<Shared>);

#[derive(Debug)]
struct Shared {
    phase: Phase,
    /// The connection's task, left by a read that had no deadline to arm.
    /// hyper may not read again on its own once a request ends (it saw the
    /// socket blocked), so whatever may start a deadline wakes it: the
    /// read is polled again and arms the new one.
    parked: Option<Waker>,
}

impl Activity {
    /// A connection accepted at `now`: its first request head is due.
    pub(super) fn new(now: Instant) -> Arc<Activity> {
        Arc::new(Activity(Mutex::new(Shared {
            phase: Phase::Head { since: now },
            parked: None,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0.lock().expect("connection phase")
    }

    /// A request reached its handler; it stays in flight until the guard
    /// is dropped (its answer returned, or the request abandoned).
    pub(super) fn begin(self: &Arc<Self>) -> Busy {
        let mut s = self.lock();
        s.phase = match s.phase {
            Phase::Handling(n) => Phase::Handling(n + 1),
            _ => Phase::Handling(1),
        };
        Busy(self.clone())
    }

    fn phase(&self) -> Phase {
        self.lock().phase
    }

    /// Octets arrived at `now`: between requests, that starts a head.
    fn received(&self, now: Instant) {
        let mut s = self.lock();
        if let Phase::Between { .. } = s.phase {
            s.phase = Phase::Head { since: now };
        }
    }

    /// A read is pending with no deadline: keep its waker.
    fn park(&self, waker: &Waker) {
        let mut s = self.lock();
        match &s.parked {
            Some(w) if w.will_wake(waker) => {}
            _ => s.parked = Some(waker.clone()),
        }
    }

    /// A deadline may apply now: have the read polled again.
    fn unpark(&self) {
        let parked = self.lock().parked.take();
        if let Some(w) = parked {
            w.wake();
        }
    }
}

/// A request in flight (see [`Activity::begin`]).
#[derive(Debug)]
pub(super) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.phase = match s.phase {
            Phase::Handling(n) if n > 1 => Phase::Handling(n - 1),
            _ => Phase::Between {
                since: Instant::now(),
            },
        };
        drop(s);
        self.0.unpark();
    }
}

/// The deadline the read side is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadDeadline {
    Head(Instant),
    Idle(Instant),
}

impl ReadDeadline {
    fn at(self) -> Instant {
        match self {
            ReadDeadline::Head(t) | ReadDeadline::Idle(t) => t,
        }
    }
}

/// The read deadline for `phase`, given the last octet moved either way
/// and whether a write is waiting for the client. `None`: no deadline (a
/// request is with its handler, a write is stalled and `write` governs, or
/// the timeout is too far off to represent).
fn read_deadline(
    phase: Phase,
    last_progress: Instant,
    write_stalled: bool,
    t: &Timeouts,
) -> Option<ReadDeadline> {
    match phase {
        Phase::Head { since } => since.checked_add(t.read).map(ReadDeadline::Head),
        Phase::Between { since } if !write_stalled => since
            .max(last_progress)
            .checked_add(t.idle)
            .map(ReadDeadline::Idle),
        _ => None,
    }
}

/// A TCP stream with the connection's deadlines (see the module docs).
pub(super) struct TimedStream {
    inner: TcpStream,
    peer: SocketAddr,
    timeouts: Timeouts,
    activity: Arc<Activity>,
    /// The last octet read or written: the idle clock runs from here.
    last_progress: Instant,
    /// Since when the socket has taken nothing of a pending write; `None`
    /// while writes go through.
    write_stalled: Option<Instant>,
    /// Set once `write` has passed: every later write fails at once (and
    /// the event is logged once).
    write_timed_out: bool,
    read_timer: Pin<Box<Sleep>>,
    write_timer: Pin<Box<Sleep>>,
}

impl TimedStream {
    pub(super) fn new(
        inner: TcpStream,
        peer: SocketAddr,
        timeouts: Timeouts,
        activity: Arc<Activity>,
    ) -> TimedStream {
        let now = Instant::now();
        TimedStream {
            inner,
            peer,
            timeouts,
            activity,
            last_progress: now,
            write_stalled: None,
            write_timed_out: false,
            read_timer: Box::pin(tokio::time::sleep_until(now)),
            write_timer: Box::pin(tokio::time::sleep_until(now)),
        }
    }

    /// A read is pending: arm the deadline that applies, and fail the read
    /// once it has passed.
    fn poll_read_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(deadline) = read_deadline(
            self.activity.phase(),
            self.last_progress,
            self.write_stalled.is_some(),
            &self.timeouts,
        ) else {
            self.activity.park(cx.waker());
            return Poll::Pending;
        };
        if self.read_timer.deadline() != deadline.at() {
            self.read_timer.as_mut().reset(deadline.at());
        }
        if self.read_timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let why = match deadline {
            ReadDeadline::Head(_) => {
                tracing::debug!(ip = %self.peer.ip(), timeout_s = self.timeouts.read.as_secs(), "API connection closed: a request head did not arrive within http_timeouts.read");
                "request head not received within http_timeouts.read"
            }
            ReadDeadline::Idle(_) => {
                tracing::debug!(ip = %self.peer.ip(), timeout_s = self.timeouts.idle.as_secs(), "API connection closed: idle for http_timeouts.idle");
                "connection idle for http_timeouts.idle"
            }
        };
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
    }

    /// Times a write, flush or shutdown: one that completes clears the
    /// stall (and counts for the idle clock when `moved` says octets went
    /// out); a stall of `write` fails it, and every later one.
    fn timed_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
        moved: impl FnOnce(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        if self.write_timed_out {
            return Poll::Ready(Err(write_timeout()));
        }
        match polled(Pin::new(&mut self.inner), cx) {
            Poll::Pending => {
                let since = *self.write_stalled.get_or_insert_with(Instant::now);
                let Some(at) = since.checked_add(self.timeouts.write) else {
                    return Poll::Pending;
                };
                if self.write_timer.deadline() != at {
                    self.write_timer.as_mut().reset(at);
                }
                if self.write_timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.write_timed_out = true;
                tracing::warn!(event = "http_write_timeout", ip = %self.peer.ip(), timeout_s = self.timeouts.write.as_secs(), "API client closed: it did not take its response within http_timeouts.write");
                Poll::Ready(Err(write_timeout()))
            }
            Poll::Ready(r) => {
                if let Ok(v) = &r {
                    if moved(v) {
                        self.last_progress = Instant::now();
                    }
                    if self.write_stalled.take().is_some() {
                        // The idle clock may run again.
                        self.activity.unpark();
                    }
                }
                Poll::Ready(r)
            }
        }
    }
}

fn write_timeout() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "response not taken within http_timeouts.write",
    )
}

impl AsyncRead for TimedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let now = Instant::now();
                    this.last_progress = now;
                    this.activity.received(now);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_read_deadline(cx),
        }
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .timed_write(cx, |s, cx| s.poll_write(cx, buf), |n| *n > 0)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .timed_write(cx, |s, cx| s.poll_write_vectored(cx, bufs), |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .timed_write(cx, |s, cx| s.poll_flush(cx), |_| false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .timed_write(cx, |s, cx| s.poll_shutdown(cx), |_| false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        read: Duration::from_secs(30),
        write: Duration::from_secs(30),
        idle: Duration::from_secs(120),
    };

    #[test]
    fn a_head_has_read_from_its_first_octet_whatever_moved_since() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(20);
        for stalled in [false, true] {
            assert_eq!(
                read_deadline(Phase::Head { since: t0 }, later, stalled, &T),
                Some(ReadDeadline::Head(t0 + T.read))
            );
        }
    }

    #[test]
    fn between_requests_idle_runs_from_the_last_octet_either_way() {
        let t0 = Instant::now();
        let ended = Phase::Between { since: t0 };
        assert_eq!(
            read_deadline(ended, t0, false, &T),
            Some(ReadDeadline::Idle(t0 + T.idle))
        );
        // The response went on being written after the handler returned.
        let wrote = t0 + Duration::from_secs(5);
        assert_eq!(
            read_deadline(ended, wrote, false, &T),
            Some(ReadDeadline::Idle(wrote + T.idle))
        );
        // A response the client does not take is `write`'s business.
        assert_eq!(read_deadline(ended, wrote, true, &T), None);
    }

    #[test]
    fn a_request_with_its_handler_has_no_read_deadline() {
        let t0 = Instant::now();
        assert_eq!(read_deadline(Phase::Handling(1), t0, false, &T), None);
    }

    #[test]
    fn the_phase_follows_requests_and_octets() {
        let t0 = Instant::now();
        let a = Activity::new(t0);
        assert_eq!(a.phase(), Phase::Head { since: t0 });
        // Octets of the head being read do not move its start.
        a.received(t0 + Duration::from_secs(1));
        assert_eq!(a.phase(), Phase::Head { since: t0 });
        let busy = a.begin();
        assert_eq!(a.phase(), Phase::Handling(1));
        // The body, or the next request pipelined behind this one.
        a.received(t0 + Duration::from_secs(2));
        assert_eq!(a.phase(), Phase::Handling(1));
        drop(busy);
        let Phase::Between { since } = a.phase() else {
            panic!("{:?}", a.phase());
        };
        let next = since + Duration::from_secs(3);
        a.received(next);
        assert_eq!(a.phase(), Phase::Head { since: next });
    }

    #[test]
    fn a_timeout_too_long_to_represent_is_no_deadline() {
        let t0 = Instant::now();
        let forever = Timeouts {
            read: Duration::MAX,
            write: Duration::MAX,
            idle: Duration::MAX,
        };
        assert_eq!(
            read_deadline(Phase::Head { since: t0 }, t0, false, &forever),
            None
        );
        assert_eq!(
            read_deadline(Phase::Between { since: t0 }, t0, false, &forever),
            None
        );
    }
}
