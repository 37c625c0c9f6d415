//! TLS for the load generator: STARTTLS (RFC 3207) or implicit TLS
//! (`smtps`, RFC 8314), with rustls on the aws-lc-rs provider, as gomail
//! itself uses.
//!
//! [`Tls`] holds the client configuration of a run: the protocol versions
//! allowed, the server name to send, and how the server certificate is
//! checked: against `--ca` when given, otherwise not at all
//! ([`AcceptAnyCert`], for load testing against self-signed certificates
//! only). Session resumption is off unless asked for, so every connection
//! pays for a full handshake. [`Stream`] lets one connection switch from
//! plain TCP to TLS in the middle of the session.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

#[cfg(test)]
mod tests;

/// Server name sent when `--server` is an address and `--sni` is not given.
pub(crate) const DEFAULT_SNI: &str = "mx.example.test";

/// When the TLS handshake happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsMode {
    /// After EHLO, on the server's 220 to STARTTLS.
    Starttls,
    /// Right after the TCP connect, before the greeting.
    Implicit,
}

impl TlsMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TlsMode::Starttls => "starttls",
            TlsMode::Implicit => "implicit",
        }
    }
}

/// `--tls-version`: the one protocol version allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TlsVersion {
    #[value(name = "1.2")]
    V12,
    #[value(name = "1.3")]
    V13,
}

/// What the TLS flags asked for.
#[derive(Debug, Clone)]
pub(crate) struct TlsOptions {
    pub(crate) mode: TlsMode,
    /// PEM certificates to verify the server against; `None`: accept any.
    pub(crate) ca_pem: Option<Vec<u8>>,
    /// Only this version; `None`: TLS 1.2 and 1.3.
    pub(crate) version: Option<TlsVersion>,
    /// Server name: a DNS name (sent as SNI) or an IP address (not sent).
    pub(crate) sni: String,
    /// Keep sessions for resumption (otherwise every handshake is full).
    pub(crate) resume: bool,
}

/// The TLS client of a run, shared by all sessions.
pub(crate) struct Tls {
    pub(crate) mode: TlsMode,
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("mode", &self.mode)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Builds the client configuration; errors name the flag at fault.
    pub(crate) fn new(opts: &TlsOptions) -> Result<Tls, String> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = match opts.version {
            Some(TlsVersion::V12) => &[&rustls::version::TLS12],
            Some(TlsVersion::V13) => &[&rustls::version::TLS13],
            None => rustls::ALL_VERSIONS,
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| format!("--tls-version: {e}"))?;
        let mut config = match &opts.ca_pem {
            Some(pem) => builder
                .with_root_certificates(roots(pem).map_err(|e| format!("--ca: {e}"))?)
                .with_no_client_auth(),
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert::new(&provider)))
                .with_no_client_auth(),
        };
        if !opts.resume {
            config.resumption = Resumption::disabled();
        }
        let server_name = ServerName::try_from(opts.sni.clone())
            .map_err(|_| format!("--sni: `{}` is not a DNS name or an address", opts.sni))?;
        Ok(Tls {
            mode: opts.mode,
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The TLS handshake over an open connection.
    pub(crate) async fn handshake(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        self.connector.connect(self.server_name.clone(), tcp).await
    }
}

/// The default server name for `--server host:port`: the host if it is a
/// name, else [`DEFAULT_SNI`].
pub(crate) fn default_sni(server: &str) -> String {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(':') || host.parse::<IpAddr>().is_ok() {
        DEFAULT_SNI.to_string()
    } else {
        host.to_string()
    }
}

/// The trust anchors in a PEM text (at least one certificate).
fn roots(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("bad PEM: {e}"))?;
        store
            .add(cert)
            .map_err(|e| format!("unusable certificate: {e}"))?;
    }
    if store.is_empty() {
        return Err("no certificate in the PEM file".to_string());
    }
    Ok(store)
}

/// What a handshake settled on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Negotiated {
    /// `TLSv1_3`, `TLSv1_2`.
    pub(crate) version: String,
    /// `TLS13_AES_256_GCM_SHA384`, ...
    pub(crate) cipher: String,
    /// Key exchange group: `X25519MLKEM768`, `X25519`, ...
    pub(crate) kx_group: String,
}

impl Negotiated {
    pub(crate) fn of(conn: &ClientConnection) -> Negotiated {
        let name = |s: Option<String>| s.unwrap_or_else(|| "unknown".to_string());
        Negotiated {
            version: name(conn.protocol_version().map(|v| format!("{v:?}"))),
            cipher: name(
                conn.negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite())),
            ),
            kx_group: name(
                conn.negotiated_key_exchange_group()
                    .map(|g| format!("{:?}", g.name())),
            ),
        }
    }
}

/// A certificate verifier that accepts every server certificate, whatever
/// its issuer, names or dates.
///
/// FOR LOAD TESTING ONLY: it makes the connection open to anyone in the
/// middle. It exists because load tests run against servers with
/// self-signed certificates; give `--ca` to verify instead. It still checks
/// the handshake signatures, so the client does the same cryptographic work
/// as a verifying one, less the chain validation.
#[derive(Debug)]
struct AcceptAnyCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AcceptAnyCert {
    fn new(provider: &CryptoProvider) -> AcceptAnyCert {
        AcceptAnyCert {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A connection, plain or encrypted.
pub(crate) enum Stream {
    Plain(TcpStream),
    /// Boxed: the TLS state is large, and moves once per connection.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The negotiated parameters, for an encrypted connection.
    pub(crate) fn negotiated(&self) -> Option<Negotiated> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => Some(Negotiated::of(s.get_ref().1)),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
