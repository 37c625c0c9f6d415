//! Debian's `pebble` test CA and `pebble-challtestsrv` (its mock DNS),
//! started per test on loopback, and a stand-in for DigitalOcean's records
//! API that turns record creation and deletion into challtestsrv's
//! `set-txt` / `clear-txt`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::it::harness::require_tool;

/// `N` distinct ports free on 127.0.0.1 for both TCP and UDP just now
/// (pebble and challtestsrv take fixed ports from their command line); all
/// are held until the last is found, so none repeats.
fn free_ports<const N: usize>() -> [u16; N] {
    let mut held = Vec::new();
    while held.len() < N {
        let t = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if let Ok(u) = UdpSocket::bind(("127.0.0.1", port)) {
            held.push((t, u, port));
        }
    }
    std::array::from_fn(|i| held[i].2)
}

/// Waits until `addr` accepts; `false` if `child` exited first (a port
/// taken meanwhile by another test: the caller starts again).
fn wait_listening(addr: SocketAddr, what: &str, child: &mut Child) -> bool {
    let t0 = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{what} not listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// A running pebble + challtestsrv pair.
pub(crate) struct Pebble {
    /// The ACME directory URL.
    pub(crate) directory: String,
    /// challtestsrv's DNS server (for `dns_servers`).
    pub(crate) dns: SocketAddr,
    /// challtestsrv's management API.
    pub(crate) challtest: SocketAddr,
    /// pebble's management API (its issuing root at /roots/0).
    pub(crate) management: SocketAddr,
    /// The port pebble's validator connects to for http-01.
    pub(crate) http_port: u16,
    /// The test CA that signed pebble's listener certificate
    /// (`acme_ca_file`).
    pub(crate) ca_file: PathBuf,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Pebble {
    /// Starts both, with `blocked` in pebble's domain block list.
    pub(crate) fn start(blocked: &[&str]) -> Pebble {
        for _ in 0..5 {
            if let Some(p) = Pebble::try_start(blocked) {
                return p;
            }
        }
        panic!("pebble or pebble-challtestsrv kept exiting at start (ports taken?)");
    }

    fn try_start(blocked: &[&str]) -> Option<Pebble> {
        let pebble = require_tool("pebble");
        let challtestsrv = require_tool("pebble-challtestsrv");
        let dir = tempfile::tempdir().unwrap();
        // pebble's own HTTPS listener: a test CA and a leaf for 127.0.0.1.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gomail test CA for pebble");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
                .unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        std::fs::write(dir.path().join("pebble.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("pebble.key"), leaf_key.serialize_pem()).unwrap();

        let [listen, management, dns, challtest, http, tls] = free_ports::<6>();
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.path().join("pebble.pem"),
            "privateKey": dir.path().join("pebble.key"),
            "httpPort": http, "tlsPort": tls,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "domainBlocklist": blocked,
        }});
        let config_file = dir.path().join("pebble.json");
        std::fs::write(&config_file, config.to_string()).unwrap();

        let mut cts = Command::new(challtestsrv)
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-management", &format!("127.0.0.1:{challtest}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv runs");
        let challtest_addr: SocketAddr = format!("127.0.0.1:{challtest}").parse().unwrap();
        if !wait_listening(challtest_addr, "pebble-challtestsrv", &mut cts) {
            return None;
        }
        let mut pb = Command::new(pebble)
            .args(["-config"])
            .arg(&config_file)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble runs");
        let listen_addr: SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();
        let management_addr: SocketAddr = format!("127.0.0.1:{management}").parse().unwrap();
        if !wait_listening(listen_addr, "pebble", &mut pb)
            || !wait_listening(management_addr, "pebble (management)", &mut pb)
        {
            for c in [&mut pb, &mut cts] {
                let _ = c.kill();
                let _ = c.wait();
            }
            return None;
        }
        Some(Pebble {
            directory: format!("https://127.0.0.1:{listen}/dir"),
            dns: format!("127.0.0.1:{dns}").parse().unwrap(),
            challtest: challtest_addr,
            management: management_addr,
            http_port: http,
            ca_file,
            children: vec![pb, cts],
            _dir: dir,
        })
    }

    /// pebble's issuing root (PEM), from its management API.
    pub(crate) fn root_pem(&self) -> String {
        let cfg = crate::it::harness::tls_client(
            &self.ca_file,
            &[&rustls::version::TLS13, &rustls::version::TLS12],
        );
        let tcp = TcpStream::connect(self.management).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (mut tls, _) = crate::it::harness::tls_handshake(tcp, cfg, "127.0.0.1").unwrap();
        write!(
            tls,
            "GET /roots/0 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw);
        let raw = String::from_utf8_lossy(&raw).to_string();
        let body = raw.split_once("\r\n\r\n").unwrap().1.to_string();
        assert!(body.contains("BEGIN CERTIFICATE"), "{raw}");
        body
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One HTTP/1.1 POST of JSON to challtestsrv's management API.
fn challtest_post(addr: SocketAddr, path: &str, body: &serde_json::Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: challtestsrv\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    assert!(
        raw.starts_with("HTTP/1.1 200"),
        "challtestsrv {path}: {raw}"
    );
}

/// What the DigitalOcean stand-in holds and was asked.
#[derive(Default)]
pub(crate) struct DoState {
    /// Live records: id → (zone, relative name, value).
    pub(crate) records: BTreeMap<u64, (String, String, String)>,
    pub(crate) created: u64,
    pub(crate) deleted: u64,
    /// Requests refused for a wrong token.
    pub(crate) unauthorized: u64,
    next_id: u64,
}

/// The DigitalOcean records API on loopback (plain HTTP).
pub(crate) struct FakeDo {
    pub(crate) url: String,
    pub(crate) state: Arc<Mutex<DoState>>,
}

impl FakeDo {
    /// Serves `zones` for `token`; records go to challtestsrv at
    /// `challtest`, unless `publish` is false (they are then accepted and
    /// never appear in DNS).
    pub(crate) fn start(
        token: &str,
        zones: &[&str],
        challtest: SocketAddr,
        publish: bool,
    ) -> FakeDo {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(DoState {
            next_id: 1000,
            ..Default::default()
        }));
        let token = token.to_string();
        let zones: Vec<String> = zones.iter().map(|z| z.to_string()).collect();
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let _ = serve(conn, &token, &zones, challtest, publish, &st);
            }
        });
        FakeDo { url, state }
    }
}

fn serve(
    conn: TcpStream,
    token: &str,
    zones: &[String],
    challtest: SocketAddr,
    publish: bool,
    state: &Mutex<DoState>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(conn.try_clone()?);
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut len = 0usize;
        let mut auth = String::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or((h, ""));
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "authorization" => auth = v.trim().to_string(),
                _ => {}
            }
        }
        assert!(len < 1 << 16, "request body too large");
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        let (status, answer) = if auth != format!("Bearer {token}") {
            state.lock().unwrap().unauthorized += 1;
            (
                401,
                serde_json::json!({"id": "Unauthorized", "message": "Unable to authenticate you"}),
            )
        } else {
            route(&method, &path, &body, zones, challtest, publish, state)
        };
        let text = answer.to_string();
        let reason = match status {
            200 => "OK",
            201 => "Created",
            204 => "No Content",
            401 => "Unauthorized",
            _ => "Not Found",
        };
        let text = if status == 204 { String::new() } else { text };
        write!(
            w,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        )?;
    }
}

fn route(
    method: &str,
    path: &str,
    body: &[u8],
    zones: &[String],
    challtest: SocketAddr,
    publish: bool,
    state: &Mutex<DoState>,
) -> (u16, serde_json::Value) {
    let not_found = (
        404,
        serde_json::json!({"id": "not_found", "message": "The resource you were accessing could not be found."}),
    );
    let rest = path.strip_prefix("/v2/domains/").unwrap_or("");
    let mut seg = rest.split('/');
    let zone = seg.next().unwrap_or("").to_string();
    if !zones.contains(&zone) {
        return not_found;
    }
    let fqdn = |name: &str| {
        if name == "@" {
            format!("{zone}.")
        } else {
            format!("{name}.{zone}.")
        }
    };
    match (method, seg.next(), seg.next()) {
        ("GET", None, _) => (200, serde_json::json!({"domain": {"name": zone}})),
        ("POST", Some("records"), None) => {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(v["type"], "TXT", "{v}");
            assert!(v["ttl"].as_u64().is_some(), "{v}");
            let name = v["name"].as_str().unwrap().to_string();
            let data = v["data"].as_str().unwrap().to_string();
            if publish {
                challtest_post(
                    challtest,
                    "/set-txt",
                    &serde_json::json!({"host": fqdn(&name), "value": data}),
                );
            }
            let mut st = state.lock().unwrap();
            st.next_id += 1;
            let id = st.next_id;
            st.records
                .insert(id, (zone.clone(), name.clone(), data.clone()));
            st.created += 1;
            (
                201,
                serde_json::json!({"domain_record": {"id": id, "type": "TXT", "name": name, "data": data}}),
            )
        }
        ("DELETE", Some("records"), Some(id)) => {
            let mut st = state.lock().unwrap();
            let Some((_, name, _)) = id.parse().ok().and_then(|id| st.records.remove(&id)) else {
                return not_found;
            };
            st.deleted += 1;
            // challtestsrv clears every value of a name: put back the
            // values of the other records of the same name.
            challtest_post(
                challtest,
                "/clear-txt",
                &serde_json::json!({"host": fqdn(&name)}),
            );
            for (_, n, value) in st.records.values() {
                if *n == name && publish {
                    challtest_post(
                        challtest,
                        "/set-txt",
                        &serde_json::json!({"host": fqdn(n), "value": value}),
                    );
                }
            }
            (204, serde_json::Value::Null)
        }
        _ => not_found,
    }
}

/// The TXT values of `name` that `dns` serves now.
pub(crate) fn txt_values(dns: SocketAddr, name: &str) -> Vec<String> {
    use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
    use mail_auth::hickory_resolver::net::runtime::TokioRuntimeProvider;
    use mail_auth::hickory_resolver::proto::rr::RData;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut ns = NameServerConfig::udp_and_tcp(dns.ip());
        for c in &mut ns.connections {
            c.port = dns.port();
        }
        let mut opts = ResolverOpts::default();
        opts.cache_size = 0;
        let r = mail_auth::hickory_resolver::TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .unwrap();
        match r.txt_lookup(name).await {
            Ok(l) => l
                .answers()
                .iter()
                .filter_map(|a| match &a.data {
                    RData::TXT(t) => Some(t.to_string()),
                    _ => None,
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    })
}

/// Reads a PEM file's first certificate (DER).
pub(crate) fn first_cert_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}
