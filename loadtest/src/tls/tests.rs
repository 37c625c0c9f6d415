//! TLS tests: flag defaults, trust anchors, and whole sessions against an
//! in-process SMTP server (STARTTLS and implicit TLS) on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::ServerConfig;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::client::{Commands, Conn, Dial};

/// The name in the test server's certificate.
const HOST: &str = "mx.example.test";

#[test]
fn sni_defaults() {
    assert_eq!(default_sni("127.0.0.1:2525"), DEFAULT_SNI);
    assert_eq!(default_sni("[::1]:25"), DEFAULT_SNI);
    assert_eq!(default_sni("::1"), DEFAULT_SNI);
    assert_eq!(default_sni(":25"), DEFAULT_SNI);
    assert_eq!(default_sni("localhost:2525"), "localhost");
    assert_eq!(default_sni("mail.example.net:465"), "mail.example.net");
    assert_eq!(default_sni("mail.example.net"), "mail.example.net");
}

fn options(mode: TlsMode) -> TlsOptions {
    TlsOptions {
        mode,
        ca_pem: None,
        version: None,
        sni: HOST.to_string(),
        resume: false,
    }
}

#[test]
fn configuration_errors() {
    let mut o = options(TlsMode::Starttls);
    o.sni = "not a name".to_string();
    assert!(Tls::new(&o).unwrap_err().starts_with("--sni"));
    o.sni = "127.0.0.1".to_string();
    assert!(Tls::new(&o).is_ok(), "an address is a valid server name");
    o.ca_pem = Some(b"no PEM here".to_vec());
    assert!(Tls::new(&o)
        .unwrap_err()
        .starts_with("--ca: no certificate"));
    let made = rcgen::generate_simple_self_signed(vec![HOST.to_string()]).unwrap();
    o.ca_pem = Some(made.cert.pem().into_bytes());
    o.version = Some(TlsVersion::V12);
    assert!(Tls::new(&o).is_ok());
}

/// A one-connection SMTP server: `implicit` TLS, or STARTTLS offered.
struct Server {
    addr: SocketAddr,
    ca_pem: Vec<u8>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn server(implicit: bool, offer_starttls: bool) -> Server {
    let made = rcgen::generate_simple_self_signed(vec![HOST.to_string()]).unwrap();
    let key = PrivatePkcs8KeyDer::from(made.signing_key.serialize_der());
    let config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![made.cert.der().clone()], key.into())
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        if implicit {
            let tls = acceptor.accept(tcp).await?;
            smtp(tls, true, false).await?;
        } else if let Some(tcp) = smtp(tcp, true, offer_starttls).await? {
            let tls = acceptor.accept(tcp).await?;
            smtp(tls, false, false).await?;
        }
        Ok(())
    });
    Server {
        addr,
        ca_pem: made.cert.pem().into_bytes(),
        task,
    }
}

/// Serves SMTP until QUIT (`None`) or STARTTLS (the stream, to encrypt).
async fn smtp<S>(io: S, greet: bool, starttls: bool) -> std::io::Result<Option<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut io = BufReader::new(io);
    if greet {
        io.write_all(b"220 mx.example.test ESMTP test\r\n").await?;
    }
    let mut line = String::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" if starttls => b"250-mx.example.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n",
            "EHLO" => b"250-mx.example.test\r\n250 PIPELINING\r\n",
            "STAR" => {
                io.write_all(b"220 2.0.0 go ahead\r\n").await?;
                return Ok(Some(io.into_inner()));
            }
            "DATA" => {
                io.write_all(b"354 go on\r\n").await?;
                loop {
                    line.clear();
                    if io.read_line(&mut line).await? == 0 || line == ".\r\n" {
                        break;
                    }
                }
                b"250 2.0.0 queued\r\n"
            }
            "QUIT" => {
                io.write_all(b"221 2.0.0 bye\r\n").await?;
                io.shutdown().await?;
                return Ok(None);
            }
            _ => b"250 2.0.0 ok\r\n",
        };
        io.write_all(reply).await?;
    }
}

/// Opens a session to `server` with `opts`; sends one message unless
/// `handshake_only`; says QUIT.
async fn session(
    server: &Server,
    opts: &TlsOptions,
    handshake_only: bool,
) -> Result<Option<Negotiated>, String> {
    let tls = Tls::new(opts)?;
    let cmds = Commands::new("client.test", "a@example.org", "b@example.test", 1);
    let dial = Dial {
        server: server.addr,
        source: None,
        tls: Some(&tls),
        handshake_only,
        io_timeout: Duration::from_secs(10),
    };
    let opened = Conn::open(dial, &cmds).await?;
    assert!(opened.handshake.is_some());
    let mut conn = opened.conn;
    let negotiated = conn.negotiated();
    if !handshake_only {
        assert!(conn.pipelining(), "EHLO after STARTTLS was read");
        conn.send(&cmds, b"Subject: t\r\n\r\nhi\r\n.\r\n", true)
            .await?;
    }
    conn.quit().await?;
    Ok(negotiated)
}

#[tokio::test]
async fn starttls_any_certificate_tls12() {
    let s = server(false, true).await;
    let mut o = options(TlsMode::Starttls);
    o.version = Some(TlsVersion::V12);
    let n = session(&s, &o, false).await.unwrap().unwrap();
    assert_eq!(n.version, "TLSv1_2");
    assert!(n.cipher.starts_with("TLS_ECDHE_"), "{}", n.cipher);
    s.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn starttls_handshake_only() {
    let s = server(false, true).await;
    let n = session(&s, &options(TlsMode::Starttls), true).await;
    assert_eq!(n.unwrap().unwrap().version, "TLSv1_3");
    s.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn implicit_tls_verified_against_ca() {
    let s = server(true, false).await;
    let mut o = options(TlsMode::Implicit);
    o.ca_pem = Some(s.ca_pem.clone());
    let n = session(&s, &o, false).await.unwrap().unwrap();
    assert_eq!(n.version, "TLSv1_3");
    assert!(n.cipher.starts_with("TLS13_"), "{}", n.cipher);
    s.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn ca_rejects_wrong_name() {
    let s = server(false, true).await;
    let mut o = options(TlsMode::Starttls);
    o.ca_pem = Some(s.ca_pem.clone());
    o.sni = "other.example.test".to_string();
    let e = session(&s, &o, false).await.unwrap_err();
    assert!(e.starts_with("TLS handshake: "), "{e}");
    assert!(s.task.await.unwrap().is_err(), "the server saw the alert");
}

#[tokio::test]
async fn starttls_not_offered() {
    let s = server(false, false).await;
    let e = session(&s, &options(TlsMode::Starttls), false)
        .await
        .unwrap_err();
    assert_eq!(e, "EHLO: the server does not advertise STARTTLS");
}
