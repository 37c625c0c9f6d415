//! One SMTP client connection: connect from a chosen source address, read
//! the greeting, EHLO, run mail transactions, QUIT.
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

/// The tail of the DATA stream written as one piece after the clock starts:
/// small messages go in a single write, large ones write their bulk first.
const FINAL_WRITE: usize = 64 * 1024;

/// The fixed commands of a run, formatted once.
#[derive(Debug, Clone)]
pub(crate) struct Commands {
    pub(crate) ehlo: Vec<u8>,
    pub(crate) mail: Vec<u8>,
    pub(crate) rcpt: Vec<u8>,
    /// MAIL, RCPT and DATA in one piece, for PIPELINING.
    pub(crate) batch: Vec<u8>,
}

impl Commands {
    pub(crate) fn new(helo: &str, from: &str, to: &str) -> Commands {
        let mail = format!("MAIL FROM:<{from}>\r\n").into_bytes();
        let rcpt = format!("RCPT TO:<{to}>\r\n").into_bytes();
        let batch = [&mail[..], &rcpt[..], b"DATA\r\n"].concat();
        Commands {
            ehlo: format!("EHLO {helo}\r\n").into_bytes(),
            mail,
            rcpt,
            batch,
        }
    }
}

/// An open, greeted session.
pub(crate) struct Conn {
    io: BufReader<TcpStream>,
    scratch: Vec<u8>,
    /// The server advertised PIPELINING.
    pipelining: bool,
    io_timeout: Duration,
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
    /// says EHLO. Also returns the connect + greeting time.
    pub(crate) async fn open(
        server: SocketAddr,
        source: Option<IpAddr>,
        cmds: &Commands,
        io_timeout: Duration,
    ) -> Result<(Conn, Duration), String> {
        let started = Instant::now();
        let connect = async {
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
        };
        let stream = timed(io_timeout, "connect", connect).await?;
        let mut conn = Conn {
            io: BufReader::with_capacity(4096, stream),
            scratch: Vec::with_capacity(512),
            pipelining: false,
            io_timeout,
        };
        conn.expect("greeting", |r| r.code == 220).await?;
        let connected = started.elapsed();
        conn.write("EHLO", &cmds.ehlo).await?;
        let ehlo = conn.expect("EHLO", Reply::is_positive).await?;
        conn.pipelining = ehlo.has_extension("PIPELINING");
        Ok((conn, connected))
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
            self.expect("RCPT", Reply::is_positive).await?;
        } else {
            self.write("MAIL", &cmds.mail).await?;
            self.expect("MAIL", Reply::is_positive).await?;
            self.write("RCPT", &cmds.rcpt).await?;
            self.expect("RCPT", Reply::is_positive).await?;
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
        timed(self.io_timeout, step, self.io.get_mut().write_all(bytes)).await
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
