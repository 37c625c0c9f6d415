//! One SMTP client connection: connect from a chosen source address, read
//! the greeting, EHLO, run mail transactions, QUIT. With TLS, the handshake
//! comes right after the connect (implicit TLS) or after EHLO and STARTTLS,
//! followed by a second EHLO.
//!
//! Every failure comes back as a short text naming the step (`RCPT: 550
//! 5.1.1 ...`, `connect: Connection refused ...`); the caller counts it and
//! drops the connection. Each network wait is bounded by the I/O timeout.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use crate::reply::{read_reply, Reply};
use crate::tls::{Negotiated, Stream, Tls, TlsMode};

/// The tail of the DATA stream written as one piece after the clock starts:
/// small messages go in a single write, large ones write their bulk first.
const FINAL_WRITE: usize = 64 * 1024;

/// The fixed commands of a run, formatted once.
#[derive(Debug, Clone)]
pub(crate) struct Commands {
    pub(crate) ehlo: Vec<u8>,
    pub(crate) mail: Vec<u8>,
    /// One `RCPT TO` per recipient.
    pub(crate) rcpt: Vec<Vec<u8>>,
    /// MAIL, RCPT and DATA in one piece, for PIPELINING.
    pub(crate) batch: Vec<u8>,
}

impl Commands {
    /// `rcpts` recipients: `to`, then `to` with 1, 2 … appended to its
    /// local part.
    pub(crate) fn new(helo: &str, from: &str, to: &str, rcpts: usize) -> Commands {
        let mail = format!("MAIL FROM:<{from}>\r\n").into_bytes();
        let (local, domain) = to.rsplit_once('@').unwrap_or((to, ""));
        let rcpt: Vec<Vec<u8>> = (0..rcpts.max(1))
            .map(|i| match i {
                0 => format!("RCPT TO:<{to}>\r\n").into_bytes(),
                i => format!("RCPT TO:<{local}{i}@{domain}>\r\n").into_bytes(),
            })
            .collect();
        let batch = [&mail[..], &rcpt.concat()[..], b"DATA\r\n"].concat();
        Commands {
            ehlo: format!("EHLO {helo}\r\n").into_bytes(),
            mail,
            rcpt,
            batch,
        }
    }
}

/// Where and how to connect.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dial<'a> {
    pub(crate) server: SocketAddr,
    /// Bound before connecting, if given.
    pub(crate) source: Option<IpAddr>,
    pub(crate) tls: Option<&'a Tls>,
    /// Stop once TLS is up: no EHLO after STARTTLS (`--handshake-only`).
    pub(crate) handshake_only: bool,
    pub(crate) io_timeout: Duration,
}

/// A new session and what its opening took.
pub(crate) struct Opened {
    pub(crate) conn: Conn,
    /// TCP connect to greeting read (with implicit TLS, the handshake too).
    pub(crate) connected: Duration,
    /// The TLS handshake alone, from its first write to its completion.
    pub(crate) handshake: Option<Duration>,
}

/// An open, greeted session.
pub(crate) struct Conn {
    io: BufReader<Stream>,
    scratch: Vec<u8>,
    /// The server advertised PIPELINING.
    pipelining: bool,
    io_timeout: Duration,
}

/// A TCP connection to `server`, from `source` if given (bound first, the
/// kernel picking the port), with Nagle off.
pub(crate) async fn connect(server: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Runs `fut` under `limit`, naming `step` in any error.
async fn timed<T>(
    limit: Duration,
    step: &str,
    fut: impl Future<Output = io::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{step}: {e}")),
        Err(_) => Err(format!("{step}: no answer within {}s", limit.as_secs_f64())),
    }
}

impl Conn {
    /// Connects (binding `source` first if given), reads the greeting and
    /// says EHLO, with TLS as `dial.tls` asks.
    pub(crate) async fn open(dial: Dial<'_>, cmds: &Commands) -> Result<Opened, String> {
        let Dial {
            server,
            source,
            io_timeout,
            ..
        } = dial;
        let started = Instant::now();
        let tcp = timed(io_timeout, "connect", connect(server, source)).await?;
        let mut stream = Stream::Plain(tcp);
        let mut handshake = None;
        if let Some(tls) = dial.tls.filter(|t| t.mode == TlsMode::Implicit) {
            let (s, took) = Conn::handshake(tls, stream, io_timeout).await?;
            stream = s;
            handshake = Some(took);
        }
        let mut conn = Conn::new(stream, io_timeout);
        conn.expect("greeting", |r| r.code == 220).await?;
        let connected = started.elapsed();
        conn.write("EHLO", &cmds.ehlo).await?;
        let mut ehlo = conn.expect("EHLO", Reply::is_positive).await?;
        if let Some(tls) = dial.tls.filter(|t| t.mode == TlsMode::Starttls) {
            if !ehlo.has_extension("STARTTLS") {
                return Err("EHLO: the server does not advertise STARTTLS".to_string());
            }
            conn.write("STARTTLS", b"STARTTLS\r\n").await?;
            conn.expect("STARTTLS", |r| r.code == 220).await?;
            if !conn.io.buffer().is_empty() {
                return Err("STARTTLS: the server sent more after its 220".to_string());
            }
            let plain = conn.io.into_inner();
            let (s, took) = Conn::handshake(tls, plain, io_timeout).await?;
            handshake = Some(took);
            conn = Conn::new(s, io_timeout);
            if !dial.handshake_only {
                conn.write("EHLO after STARTTLS", &cmds.ehlo).await?;
                ehlo = conn
                    .expect("EHLO after STARTTLS", Reply::is_positive)
                    .await?;
            }
        }
        conn.pipelining = ehlo.has_extension("PIPELINING");
        Ok(Opened {
            conn,
            connected,
            handshake,
        })
    }

    fn new(stream: Stream, io_timeout: Duration) -> Conn {
        Conn {
            io: BufReader::with_capacity(4096, stream),
            scratch: Vec::with_capacity(512),
            pipelining: false,
            io_timeout,
        }
    }

    /// The TLS handshake over a plain connection; also returns its time.
    async fn handshake(
        tls: &Tls,
        stream: Stream,
        io_timeout: Duration,
    ) -> Result<(Stream, Duration), String> {
        let Stream::Plain(tcp) = stream else {
            return Err("TLS handshake: the connection is already encrypted".to_string());
        };
        let started = Instant::now();
        let s = timed(io_timeout, "TLS handshake", tls.handshake(tcp)).await?;
        Ok((Stream::Tls(Box::new(s)), started.elapsed()))
    }

    /// The negotiated TLS parameters, if the connection is encrypted.
    pub(crate) fn negotiated(&self) -> Option<Negotiated> {
        self.io.get_ref().negotiated()
    }

    /// Whether the server advertised PIPELINING.
    pub(crate) fn pipelining(&self) -> bool {
        self.pipelining
    }

    /// One mail transaction; `wire` is the stuffed message and terminator.
    /// Returns the time from writing the end of data to the final reply.
    pub(crate) async fn send(
        &mut self,
        cmds: &Commands,
        wire: &[u8],
        pipeline: bool,
    ) -> Result<Duration, String> {
        if pipeline && self.pipelining {
            self.write("MAIL", &cmds.batch).await?;
            self.expect("MAIL", Reply::is_positive).await?;
            for _ in &cmds.rcpt {
                self.expect("RCPT", Reply::is_positive).await?;
            }
        } else {
            self.write("MAIL", &cmds.mail).await?;
            self.expect("MAIL", Reply::is_positive).await?;
            for rcpt in &cmds.rcpt {
                self.write("RCPT", rcpt).await?;
                self.expect("RCPT", Reply::is_positive).await?;
            }
            self.write("DATA", b"DATA\r\n").await?;
        }
        self.expect("DATA", |r| r.code == 354).await?;
        let split = wire.len().saturating_sub(FINAL_WRITE);
        if split > 0 {
            self.write("message", &wire[..split]).await?;
        }
        let sent = Instant::now();
        self.write("end of data", &wire[split..]).await?;
        self.expect("end of data", Reply::is_positive).await?;
        Ok(sent.elapsed())
    }

    /// Says QUIT, waits for the reply, and closes.
    pub(crate) async fn quit(mut self) -> Result<(), String> {
        self.write("QUIT", b"QUIT\r\n").await?;
        self.expect("QUIT", Reply::is_positive).await?;
        let _ = timed(self.io_timeout, "close", self.io.get_mut().shutdown()).await;
        Ok(())
    }

    async fn write(&mut self, step: &str, bytes: &[u8]) -> Result<(), String> {
        let io = self.io.get_mut();
        // TLS writes go out as they are made; the flush is for certainty
        // (and a no-op on plain TCP).
        timed(self.io_timeout, step, async {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await
    }

    /// Reads a reply; one `ok` refuses is an error showing the reply.
    async fn expect(&mut self, step: &str, ok: impl Fn(&Reply) -> bool) -> Result<Reply, String> {
        let reply = timed(
            self.io_timeout,
            step,
            read_reply(&mut self.io, &mut self.scratch),
        )
        .await?;
        if ok(&reply) {
            Ok(reply)
        } else {
            Err(format!("{step}: {reply}"))
        }
    }
}
