//! Test harness: the real `gomail` binary as a child process, a raw SMTP
//! client over real sockets, and store inspection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `gomail server` child process on a temporary data_dir.
pub(crate) struct Gomail {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    /// The control plane (health, metrics).
    pub(crate) api: SocketAddr,
    /// The first implicit-TLS address (`smtps_listen`), if any.
    pub(crate) tls_addr: Option<SocketAddr>,
    pub(crate) data_dir: PathBuf,
    pub(crate) config: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Gomail {
    /// Starts gomail with `extra` YAML appended to a base test config.
    pub(crate) fn start(extra: &str) -> Gomail {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        let mut g = Gomail::start_on(&data_dir, extra);
        g._tmp = Some(tmp);
        g
    }

    /// Starts gomail on a given data_dir (for restarts).
    pub(crate) fn start_on(data_dir: &Path, extra: &str) -> Gomail {
        Gomail::start_listening(data_dir, "127.0.0.1:0", extra)
    }

    /// Starts gomail on a given data_dir and SMTP address.
    pub(crate) fn start_listening(data_dir: &Path, listen: &str, extra: &str) -> Gomail {
        let config = data_dir.with_extension("yaml");
        std::fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
        std::fs::write(
            &config,
            format!(
                "smtp_listen: [\"{listen}\"]\nprimary_domain: example.test\nadditional_domains: [other.test]\n\
                 mail_hostname: mx.example.test\ndata_dir: \"{}\"\n{level}{port}{auth}{extra}",
                data_dir.display(),
                port = if extra.lines().any(|l| l.starts_with("port:")) { "" } else { "port: 0\n" },
                level = if extra.lines().any(|l| l.starts_with("log_level:")) { "" } else { "log_level: warn\n" },
                // Hermetic by default: authentication checks only in the
                // tests that bring their own DNS server.
                auth = if extra.contains("dns_servers") {
                    ""
                } else {
                    "spf_enabled: false\ndkim_enabled: false\ndmarc_enabled: false\n"
                },
            ),
        )
        .unwrap();
        let mut child = Command::new(gomail_bin())
            .args(["server", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("gomail binary runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "gomail: SMTP on A, B (TLS) (N shards), ..."
        let list = line
            .strip_prefix("gomail: SMTP on ")
            .and_then(|r| r.split(" shards)").next())
            .and_then(|r| r.rsplit_once(" ("))
            .map(|(l, _)| l.to_string())
            .unwrap_or_else(|| panic!("gomail did not start: {line:?}"));
        let mut addr = None;
        let mut tls_addr = None;
        for a in list.split(", ") {
            match a.strip_suffix(" (TLS)") {
                Some(t) => tls_addr = tls_addr.or(t.parse().ok()),
                None => addr = addr.or(a.parse().ok()),
            }
        }
        let addr = addr.unwrap_or_else(|| panic!("no SMTP address in {line:?}"));
        let api = line
            .split("; API on ")
            .nth(1)
            .and_then(|r| r.split(';').next())
            .and_then(|r| r.split(", ").next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no API address in {line:?}"));
        Gomail {
            child,
            addr,
            tls_addr,
            api,
            data_dir: data_dir.to_path_buf(),
            config,
            _tmp: None,
        }
    }

    /// `kill -9`.
    pub(crate) fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait; returns the exit status.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

/// The binary under test: this build's, or `GOMAIL_TEST_BIN` (to run the
/// integration tests against a release binary, or an older build to see a
/// regression test fail without its fix).
pub(crate) fn gomail_bin() -> PathBuf {
    std::env::var_os("GOMAIL_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_gomail")))
}

impl Drop for Gomail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every JSON file in the store, parsed, keyed by queue id.
pub(crate) fn stored(data_dir: &Path) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    let mut dirs = vec![data_dir.join("inbox")];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                let name = p.file_stem().unwrap().to_string_lossy().to_string();
                let id = name.rsplit('_').next().unwrap().to_string();
                let bytes = std::fs::read(&p).unwrap();
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                // One compact line with every object's keys in alphabetical
                // order, as GoMail wrote them: what re-serializing gives.
                let mut canonical = serde_json::to_vec(&v).unwrap();
                canonical.push(b'\n');
                assert!(
                    bytes == canonical,
                    "{} is not compact JSON with sorted keys",
                    p.display()
                );
                out.push((id, v));
            }
        }
    }
    out
}

/// Waits until the store holds at least `n` messages.
pub(crate) fn wait_stored(data_dir: &Path, n: usize) -> Vec<(String, serde_json::Value)> {
    let t0 = Instant::now();
    loop {
        let s = stored(data_dir);
        if s.len() >= n || t0.elapsed() > Duration::from_secs(20) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A byte stream the client can speak SMTP over (plain TCP or TLS).
pub(crate) trait Rw: Read + Write + Send {}
impl<T: Read + Write + Send> Rw for T {}

/// A raw SMTP client: exact bytes out, exact replies in.
pub(crate) struct Client {
    s: Box<dyn Rw>,
    tcp: TcpStream,
    buf: Vec<u8>,
    /// What the TLS handshake negotiated, once STARTTLS is done.
    pub(crate) tls: Option<TlsSeen>,
}

/// What a client saw of the server's TLS.
#[derive(Debug, Clone)]
pub(crate) struct TlsSeen {
    pub(crate) version: rustls::ProtocolVersion,
    pub(crate) cipher: rustls::CipherSuite,
    /// The server's end-entity certificate (DER).
    pub(crate) cert: Vec<u8>,
}

/// A TLS client configuration trusting the PEM certificate at `ca`.
pub(crate) fn tls_client(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_protocol_versions(versions)
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Runs a TLS client handshake over `tcp`.
pub(crate) fn tls_handshake(
    tcp: TcpStream,
    cfg: std::sync::Arc<rustls::ClientConfig>,
    name: &str,
) -> std::io::Result<(
    rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    TlsSeen,
)> {
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(cfg, server_name).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    let seen = TlsSeen {
        version: tls.conn.protocol_version().unwrap(),
        cipher: tls.conn.negotiated_cipher_suite().unwrap().suite(),
        cert: tls.conn.peer_certificates().unwrap()[0].to_vec(),
    };
    Ok((tls, seen))
}

impl Client {
    pub(crate) fn connect(addr: SocketAddr) -> Client {
        Client::connect_from(addr, None)
    }

    /// Connects from a chosen loopback source address.
    pub(crate) fn connect_from(addr: SocketAddr, src: Option<std::net::IpAddr>) -> Client {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if let Some(ip) = src {
            sock.bind(&SocketAddr::new(ip, 0).into()).unwrap();
        }
        sock.connect(&addr.into()).unwrap();
        let s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Body and final dot go out in separate writes: without NODELAY,
        // Nagle plus the server's delayed ACK would add 40 ms per message.
        s.set_nodelay(true).unwrap();
        let mut c = Client {
            s: Box::new(s.try_clone().unwrap()),
            tcp: s,
            buf: Vec::new(),
            tls: None,
        };
        let greeting = c.reply();
        assert!(greeting.starts_with("220 "), "{greeting}");
        c
    }

    /// Connects to an implicit-TLS listener.
    pub(crate) fn connect_tls(
        addr: SocketAddr,
        cfg: std::sync::Arc<rustls::ClientConfig>,
        name: &str,
    ) -> Client {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.set_nodelay(true).unwrap();
        let (tls, seen) = tls_handshake(tcp.try_clone().unwrap(), cfg, name).unwrap();
        let mut c = Client {
            s: Box::new(tls),
            tcp,
            buf: Vec::new(),
            tls: Some(seen),
        };
        let greeting = c.reply();
        assert!(greeting.starts_with("220 "), "{greeting}");
        c
    }

    /// A second handle on the underlying TCP socket.
    pub(crate) fn raw_tcp(&self) -> TcpStream {
        self.tcp.try_clone().unwrap()
    }

    /// STARTTLS, then the handshake; the session continues inside TLS.
    pub(crate) fn starttls(
        &mut self,
        cfg: std::sync::Arc<rustls::ClientConfig>,
        name: &str,
    ) -> std::io::Result<()> {
        let r = self.cmd("STARTTLS");
        assert_eq!(r, "220 2.0.0 Ready to start TLS\r\n");
        assert!(
            self.buf.is_empty(),
            "the server sent more after 220: {:?}",
            self.buf
        );
        let (tls, seen) = tls_handshake(self.tcp.try_clone()?, cfg, name)?;
        self.s = Box::new(tls);
        self.tls = Some(seen);
        Ok(())
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Reads one complete (possibly multi-line) reply.
    pub(crate) fn reply(&mut self) -> String {
        let mut lines = String::new();
        loop {
            let line = self.line();
            lines.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return lines;
            }
        }
    }

    fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let l: Vec<u8> = self.buf.drain(..=i).collect();
                return String::from_utf8(l).unwrap();
            }
            let mut tmp = [0u8; 4096];
            let n = self.s.read(&mut tmp).expect("reply before timeout");
            if n == 0 {
                return String::new();
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// Sends a command and returns the reply.
    pub(crate) fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// True if the server closes the connection (anything it sends first,
    /// such as a TLS alert, is read and ignored); false if it stays open
    /// for the read timeout.
    pub(crate) fn closed(&mut self) -> bool {
        let mut b = [0u8; 512];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                }
            }
        }
    }

    /// A whole transaction; returns the final reply to the message.
    pub(crate) fn mail(&mut self, from: &str, to: &[&str], body: &str) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert!(r.starts_with("250"), "{r}");
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>"));
            assert!(r.starts_with("250"), "{r}");
        }
        let r = self.cmd("DATA");
        assert!(r.starts_with("354"), "{r}");
        self.send(body.as_bytes());
        self.send(b"\r\n.\r\n");
        self.reply()
    }
}

/// The queue id of a `250` reply; fails the test with the reply otherwise.
pub(crate) fn queued(reply: &str) -> String {
    queue_id(reply).unwrap_or_else(|| panic!("not accepted: {reply}"))
}

/// The queue id from a `250 2.0.0 Ok: queued as ID` reply.
pub(crate) fn queue_id(reply: &str) -> Option<String> {
    reply
        .trim_end()
        .strip_prefix("250 2.0.0 Ok: queued as ")
        .map(str::to_string)
}

/// Finds a Debian tool or fails loudly: CI installs every tool the tests use.
pub(crate) fn require_tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("`{name}` is not installed; run .ci/run (or `apt-get install {name}`) to install the test tools");
}

/// Standard base64, from the `base64` crate.
pub(crate) fn b64encode(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// One HTTP/1.1 request; returns (status, content-type, body).
pub(crate) fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let (status, headers, body) = http_with(addr, method, path, &[], "");
    let ctype = headers.get("content-type").cloned().unwrap_or_default();
    (status, ctype, body)
}

/// One HTTP/1.1 request with extra header lines and a body; returns the
/// status, the response headers (names lower case) and the body.
pub(crate) fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, std::collections::BTreeMap<String, String>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: gomail\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// Sums a metric over shards (lines `name{shard="N"...} value`).
pub(crate) fn sum(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `ok()` holds, polling every 20 ms; fails the test with
/// `what` after `within`.
pub(crate) fn wait_until(within: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < within, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A metric summed over shards and labels, read from the running server.
pub(crate) fn metric(g: &Gomail, name: &str) -> f64 {
    sum(&http(g.api, "GET", "/metrics").2, &format!("{name}{{"))
}

/// A metric's value on the lines carrying `label` (e.g. `reason="per_ip"`;
/// empty for all), summed over shards; unlabelled metrics too.
pub(crate) fn metric_where(g: &Gomail, name: &str, label: &str) -> f64 {
    http(g.api, "GET", "/metrics")
        .2
        .lines()
        .filter(|l| {
            (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                && l.contains(label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A free port for the control plane, so that the CLI finds it in the config.
pub(crate) fn api_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the `gomail` command line on `g`'s config file.
pub(crate) fn gomail_cli(g: &Gomail, args: &[&str]) -> (bool, String, String) {
    let mut args = args.to_vec();
    args.extend(["--config", g.config.to_str().unwrap()]);
    super::cli::gomail(&args)
}

/// Connects from `src` and reads the server's first reply line (its
/// greeting, or a refusal); the connection stays open for more.
pub(crate) fn greet_from(
    addr: SocketAddr,
    src: std::net::IpAddr,
) -> (BufReader<TcpStream>, String) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(src, 0).into()).unwrap();
    sock.connect(&addr.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    (r, line)
}

/// The lines of a `log_format: json` log file whose `event` is `event`,
/// each as one flat object: the top-level `event`, `ip`, `request_id` and
/// `message` with the `details` merged in.
pub(crate) fn log_events(log: &Path, event: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .map(|v| {
            let mut flat = v["details"].as_object().cloned().unwrap_or_default();
            for k in ["event", "ip", "request_id", "message", "level", "time"] {
                if let Some(x) = v.get(k) {
                    flat.insert(k.to_string(), x.clone());
                }
            }
            serde_json::Value::Object(flat)
        })
        .collect()
}
