//! SPF, DKIM and DMARC against a real DNS server on loopback, with mail
//! signed by mail-auth's signer and sent from different loopback addresses
//! (127.0.0.1 is permitted by the test domains' SPF records, 127.0.0.2 is not).

use std::net::IpAddr;

use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;

use super::dns::{serve, txt, TestDns};
use super::dns_relay::{relay, Fault};
use super::harness::{metric, queue_id, stored, Client, Gomail};

/// The test world: DNS zones with SPF, DKIM (Ed25519 `sel`, RSA-2048
/// `rsa`) and DMARC records.
struct World {
    dns: TestDns,
    pkcs8: Vec<u8>,
    /// RSA-2048 private key (PEM) for the independent signer.
    rsa_key: &'static std::path::Path,
}

/// One RSA-2048 key for the whole test run (`openssl genrsa` is slow on
/// two cores, and only its use differs between tests): the PEM path and
/// the base64 public key for the DKIM record.
fn shared_rsa_key() -> &'static (tempfile::TempDir, std::path::PathBuf, String) {
    static KEY: std::sync::OnceLock<(tempfile::TempDir, std::path::PathBuf, String)> =
        std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (path, public) = rsa_key(dir.path());
        (dir, path, public)
    })
}

/// Makes an RSA-2048 key with openssl; returns its PEM path and the
/// base64 SubjectPublicKeyInfo for the DKIM record.
fn rsa_key(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let openssl = super::harness::require_tool("openssl");
    let key = dir.join("rsa.pem");
    let ok = std::process::Command::new(&openssl)
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .unwrap();
    assert!(ok.status.success(), "openssl genrsa failed");
    let der = std::process::Command::new(&openssl)
        .args(["rsa", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(der.status.success());
    (key, super::harness::b64encode(&der.stdout))
}

/// Signs `message` with Python's dkimpy (an implementation independent of
/// gomail's), RSA-SHA256, relaxed/simple canonicalization.
fn dkimpy_sign(key: &std::path::Path, domain: &str, message: &str) -> String {
    dkimpy(&format!(
        "sig=dkim.sign(m,b'rsa',b'{domain}',key,canonicalize=(b'relaxed',b'simple'),include_headers=[b'From',b'To',b'Subject',b'Message-ID'])\nsys.stdout.buffer.write(sig+m)\n"
    ), key, message)
}

/// Adds an ARC set (RFC 8617) to `message` with dkimpy's `arc_sign`, as a
/// forwarder `authserv_id` sealing for `domain` (selector `rsa`) would.
/// `message` must carry that forwarder's `Authentication-Results`.
fn dkimpy_arc_seal(
    key: &std::path::Path,
    domain: &str,
    authserv_id: &str,
    message: &str,
) -> String {
    dkimpy(&format!(
        "h=dkim.arc_sign(m,b'rsa',b'{domain}',key,b'{authserv_id}',include_headers=[b'From',b'To',b'Subject',b'Message-ID'])\nsys.stdout.buffer.write(b''.join(h)+m)\n"
    ), key, message)
}

/// Runs a dkimpy `script` with `m` (the message) and `key` (the PEM) set.
fn dkimpy(script: &str, key: &std::path::Path, message: &str) -> String {
    let script = format!(
        "import dkim,sys\nm=sys.stdin.buffer.read()\nkey=open('{}','rb').read()\n{script}",
        key.display()
    );
    let mut child = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(message.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "dkimpy (with authres, for ARC) is needed (scripts/test.sh installs them: pip install dkimpy authres): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn world() -> World {
    let (_, rsa_path, rsa_public) = shared_rsa_key();
    let rsa_dkim = txt(&format!("v=DKIM1; k=rsa; p={rsa_public}"));
    let pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
    let public = Ed25519Key::from_pkcs8_der(&pkcs8).unwrap().public_key();
    let dkim = txt(&format!(
        "v=DKIM1; k=ed25519; p={}",
        super::harness::b64encode(&public)
    ));
    let spf = txt("v=spf1 ip4:127.0.0.1 -all");
    let mut lookups = String::from("v=spf1");
    for i in 0..11 {
        lookups.push_str(&format!(" include:i{i}.lookups.test"));
    }
    lookups.push_str(" -all");
    let mut lookup_zone = format!("@ IN TXT {}\n", txt(&lookups));
    for i in 0..11 {
        lookup_zone.push_str(&format!("i{i} IN TXT \"v=spf1 ?all\"\n"));
    }
    let dns = serve(&[
        ("pass.test.", format!("@ IN TXT {spf}\nsel._domainkey IN TXT {dkim}\nrsa._domainkey IN TXT {rsa_dkim}\n_dmarc IN TXT \"v=DMARC1; p=reject\"\nmail IN TXT {spf}\n")),
        ("quar.test.", format!("@ IN TXT {spf}\nsel._domainkey IN TXT {dkim}\n_dmarc IN TXT \"v=DMARC1; p=quarantine\"\n")),
        ("none.test.", "@ IN TXT \"v=spf1 ip4:127.0.0.1 ~all\"\n_dmarc IN TXT \"v=DMARC1; p=none\"\n".to_string()),
        ("lookups.test.", lookup_zone),
        ("neutral.test.", "@ IN TXT \"v=spf1 ?all\"\n".to_string()),
        // Publishes strict alignment itself.
        ("strictalign.test.", format!("@ IN TXT {spf}\nsel._domainkey IN TXT {dkim}\n_dmarc IN TXT \"v=DMARC1; p=reject; adkim=s; aspf=s\"\n")),
        // Three includes of names that do not exist: over RFC 7208's limit of two void lookups.
        ("void.test.", "@ IN TXT \"v=spf1 include:n1.void.test include:n2.void.test include:n3.void.test -all\"\n".to_string()),
        ("inc.test.", "@ IN TXT \"v=spf1 include:pass.test -all\"\n".to_string()),
        ("redir.test.", "@ IN TXT \"v=spf1 redirect=pass.test\"\n".to_string()),
        // An SPF record that may be cached for 2 seconds only.
        ("ttl.test.", "@ 2 IN TXT \"v=spf1 ip4:127.0.0.1 -all\"\n".to_string()),
        ("nospf.test.", "www IN A 127.0.0.9\n".to_string()),
        // 127.0.0.2 and 127.0.0.3 are on the blocklist; 127.0.0.3 is also
        // on the allow-list.
        ("bl.test.", "2.0.0.127 IN A 127.0.0.2\n3.0.0.127 IN A 127.0.0.2\n".to_string()),
        ("allow.test.", "3.0.0.127 IN A 127.0.0.5\n".to_string()),
    ]);
    World {
        dns,
        pkcs8,
        rsa_key: rsa_path,
    }
}

impl World {
    fn gomail(&self, extra: &str) -> Gomail {
        Gomail::start(&format!(
            "dns_servers: [\"{}\"]\ndns_timeout: 2s\n{extra}",
            self.dns.addr
        ))
    }

    /// A message From `from`, DKIM-signed for `d=domain` when given.
    fn message(&self, from: &str, sign_as: Option<&str>, body: &str) -> String {
        let raw = format!("From: <{from}>\r\nTo: <r@example.test>\r\nSubject: auth test\r\nMessage-ID: <{}@t>\r\n\r\n{body}\r\n", fastrand::u64(..));
        match sign_as {
            None => raw,
            Some(d) => {
                let key = Ed25519Key::from_pkcs8_der(&self.pkcs8).unwrap();
                let sig = DkimSigner::from_key(key)
                    .domain(d)
                    .selector("sel")
                    .headers(["From", "To", "Subject", "Message-ID"])
                    .sign(raw.as_bytes())
                    .unwrap();
                format!("{}{}", sig.to_header(), raw)
            }
        }
    }
}

/// Sends a message from `src`; returns the reply to MAIL FROM (if refused)
/// or to the end of data.
fn send(g: &Gomail, src: &str, mail_from: &str, message: &str) -> String {
    let ip: IpAddr = src.parse().unwrap();
    let mut c = Client::connect_from(g.addr, Some(ip));
    c.cmd("EHLO client.pass.test");
    let r = c.cmd(&format!("MAIL FROM:<{mail_from}>"));
    if !r.starts_with("250") {
        return r;
    }
    assert!(c.cmd("RCPT TO:<r@example.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(message.as_bytes());
    c.send(b".\r\n");
    c.reply()
}

fn stored_auth(g: &Gomail, id: &str) -> serde_json::Value {
    let t0 = std::time::Instant::now();
    loop {
        if let Some((_, v)) = stored(&g.data_dir).into_iter().find(|(i, _)| i == id) {
            return v;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "{id} never stored"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn spf_strict_refuses_fail_and_records_pass() {
    let w = world();
    let g = w.gomail("spf_enforcement: strict\n");
    let r = send(
        &g,
        "127.0.0.2",
        "a@pass.test",
        &w.message("a@pass.test", None, "x"),
    );
    assert!(
        r.starts_with("550 5.7.23 SPF validation failed: pass.test does not permit 127.0.0.2"),
        "{r}"
    );
    let r = send(
        &g,
        "127.0.0.1",
        "a@pass.test",
        &w.message("a@pass.test", Some("pass.test"), "x"),
    );
    let id = queue_id(&r).unwrap_or_else(|| panic!("{r}"));
    let v = stored_auth(&g, &id);
    let a = &v["authentication"];
    assert_eq!(a["spf"]["result"], "pass");
    assert_eq!(a["spf"]["client_ip"], "127.0.0.1");
    assert_eq!(a["spf"]["mail_from"], "a@pass.test");
    assert_eq!(a["dkim"]["result"], "pass");
    assert_eq!(a["dkim"]["signatures"][0]["domain"], "pass.test");
    assert_eq!(a["dkim"]["signatures"][0]["algorithm"], "ed25519-sha256");
    assert_eq!(a["dkim"]["signatures"][0]["valid"], true);
    assert_eq!(a["dmarc"]["result"], "pass");
    assert_eq!(a["dmarc"]["policy"], "reject");
    assert_eq!(a["iprev"]["result"], "pass");
    // On loopback the resolver answers the PTR itself (RFC 6761:
    // 127.in-addr.arpa is special), so the name is `localhost.`.
    assert!(
        a["iprev"]["ptr"][0].as_str().is_some_and(|p| !p.is_empty()),
        "{a}"
    );
    assert_eq!(a["arc"]["result"], "none");
    assert_eq!(a["arc"]["chain_length"], 0);
    let raw = v["raw"].as_str().unwrap();
    assert!(
        raw.contains("Authentication-Results: mx.example.test;"),
        "{raw}"
    );
    assert!(
        raw.contains("dkim=pass") && raw.contains("spf=pass") && raw.contains("dmarc=pass"),
        "{raw}"
    );
    assert!(
        raw.contains("iprev=pass") && raw.contains("arc=none"),
        "{raw}"
    );
}

#[test]
fn spf_soft_and_none_accept_and_record_failures() {
    let w = world();
    for level in ["soft", "none"] {
        let g = w.gomail(&format!("spf_enforcement: {level}\n"));
        let r = send(
            &g,
            "127.0.0.2",
            "a@none.test",
            &w.message("a@none.test", None, "x"),
        );
        let id = queue_id(&r).unwrap_or_else(|| panic!("{level}: {r}"));
        let v = stored_auth(&g, &id);
        assert_eq!(v["authentication"]["spf"]["result"], "softfail", "{level}");
        let r = send(
            &g,
            "127.0.0.2",
            "a@pass.test",
            &w.message("a@pass.test", None, "x"),
        );
        assert!(queue_id(&r).is_some(), "{level}: {r}");
    }
}

#[test]
fn dmarc_relaxed_enforces_the_published_policy() {
    let w = world();
    let g = w.gomail("dmarc_enforcement: relaxed\n");
    // SPF fails (127.0.0.2) and the body was tampered after signing: reject.
    let signed = w.message("a@pass.test", Some("pass.test"), "original");
    let tampered = signed.replace("original", "tampered");
    let r = send(&g, "127.0.0.2", "a@pass.test", &tampered);
    assert!(
        r.starts_with("550 5.7.1 Message rejected: DMARC policy of pass.test (p=reject)"),
        "{r}"
    );
    // The untampered message passes DKIM, so DMARC passes despite SPF.
    let r = send(&g, "127.0.0.2", "a@pass.test", &signed);
    let id = queue_id(&r).unwrap_or_else(|| panic!("{r}"));
    let v = stored_auth(&g, &id);
    assert_eq!(v["authentication"]["spf"]["result"], "fail");
    assert_eq!(v["authentication"]["dmarc"]["result"], "pass");
    // p=quarantine: accepted and marked.
    let r = send(
        &g,
        "127.0.0.2",
        "a@quar.test",
        &w.message("a@quar.test", None, "q"),
    );
    let id = queue_id(&r).unwrap_or_else(|| panic!("{r}"));
    let v = stored_auth(&g, &id);
    assert_eq!(v["authentication"]["quarantine"], true);
    assert!(v["raw"]
        .as_str()
        .unwrap()
        .contains("X-Gomail-Quarantine: yes"));
    // dmarc_enforcement none would have accepted the tampered one.
    let g2 = w.gomail("dmarc_enforcement: none\n");
    let r = send(&g2, "127.0.0.2", "a@pass.test", &tampered);
    let id = queue_id(&r).unwrap_or_else(|| panic!("{r}"));
    let v = stored_auth(&g2, &id);
    assert_ne!(v["authentication"]["dkim"]["result"], "pass");
    assert_eq!(v["authentication"]["dmarc"]["result"], "fail");
}

#[test]
fn strict_alignment_refuses_what_relaxed_alignment_accepts() {
    let w = world();
    // From a subdomain, signed by the organizational domain, SPF failing:
    // relaxed alignment passes via DKIM, strict alignment does not.
    let msg = w.message("a@mail.pass.test", Some("pass.test"), "sub");
    let relaxed = w.gomail("dmarc_enforcement: relaxed\n");
    let r = send(&relaxed, "127.0.0.2", "a@mail.pass.test", &msg);
    assert!(queue_id(&r).is_some(), "relaxed: {r}");
    let strict = w.gomail("dmarc_enforcement: strict\n");
    let r = send(&strict, "127.0.0.2", "a@mail.pass.test", &msg);
    assert!(r.starts_with("550 5.7.1 "), "strict: {r}");
}

#[test]
fn spf_lookup_limit_gives_permerror() {
    let w = world();
    let g = w.gomail("");
    let r = send(
        &g,
        "127.0.0.1",
        "a@lookups.test",
        &w.message("a@lookups.test", None, "x"),
    );
    let id = queue_id(&r).unwrap_or_else(|| panic!("{r}"));
    assert_eq!(
        stored_auth(&g, &id)["authentication"]["spf"]["result"],
        "permerror"
    );
}

#[test]
fn a_dns_server_that_does_not_answer_gives_451() {
    // A UDP socket that never answers, and no TCP listener.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let g = Gomail::start(&format!(
        "dns_servers: [\"{}\"]\ndns_timeout: 1s\nspf_enforcement: strict\n",
        silent.local_addr().unwrap()
    ));
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO client.pass.test");
    let r = c.cmd("MAIL FROM:<a@pass.test>");
    assert!(r.starts_with("451 4.7.24 "), "{r}");
    // Everyone else is still served.
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 OK\r\n");
}

#[test]
fn independent_signer_rsa_2048_passes_and_tampering_fails() {
    let w = world();
    let g = w.gomail("dmarc_enforcement: relaxed\n");
    let signed = dkimpy_sign(
        w.rsa_key,
        "pass.test",
        &w.message("a@pass.test", None, "from dkimpy"),
    );
    // SPF fails from 127.0.0.2, so DMARC rests on the dkimpy signature.
    let r = send(&g, "127.0.0.2", "a@pass.test", &signed);
    let id = queue_id(&r).unwrap_or_else(|| panic!("{r}"));
    let v = stored_auth(&g, &id);
    let sig = &v["authentication"]["dkim"]["signatures"][0];
    assert_eq!(sig["algorithm"], "rsa-sha256");
    assert_eq!(sig["selector"], "rsa");
    assert_eq!(sig["valid"], true);
    assert_eq!(v["authentication"]["dkim"]["signed_by"][0], "pass.test");
    assert_eq!(v["authentication"]["dmarc"]["result"], "pass");
    let r = send(
        &g,
        "127.0.0.2",
        "a@pass.test",
        &signed.replace("from dkimpy", "from someone else"),
    );
    assert!(r.starts_with("550 5.7.1 "), "{r}");
}

/// Connects from `src` and returns the server's first line.
fn first_line(addr: std::net::SocketAddr, src: &str) -> String {
    use std::io::{BufRead, BufReader};
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let ip: IpAddr = src.parse().unwrap();
    sock.bind(&std::net::SocketAddr::new(ip, 0).into()).unwrap();
    sock.connect(&addr.into()).unwrap();
    let s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

#[test]
fn dns_blocklists_refuse_listed_clients_at_connect() {
    let w = world();
    let g = w.gomail("dnsbl: [\"bl.test*2\", \"allow.test*-5\"]\ndnsbl_threshold: 2\n");
    assert_eq!(
        first_line(g.addr, "127.0.0.2"),
        "554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test\r\n"
    );
    assert!(
        first_line(g.addr, "127.0.0.1").starts_with("220 "),
        "unlisted"
    );
    assert!(
        first_line(g.addr, "127.0.0.3").starts_with("220 "),
        "allow-listed"
    );
}

#[test]
fn a_blocklist_that_never_answers_costs_at_most_the_deadline() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let g = Gomail::start(&format!(
        "dns_servers: [\"{}\"]\ndns_timeout: 20s\ndnsbl: [\"bl.test\"]\ndnsbl_timeout: 1s\nspf_enabled: false\ndkim_enabled: false\ndmarc_enabled: false\n",
        silent.local_addr().unwrap()
    ));
    let t0 = std::time::Instant::now();
    assert!(first_line(g.addr, "127.0.0.2").starts_with("220 "));
    // Bounded by dnsbl_timeout (1 s), not by the 20 s DNS timeout; the
    // margin is wide on purpose: this is a bound, not a benchmark.
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn a_quiet_blocklist_does_not_hide_the_answer_of_another() {
    let w = world();
    // silent.test never answers; bl.test lists 127.0.0.2. The quiet zone
    // comes first: asked in turn, it would use up the whole deadline.
    let relay = relay(w.dns.addr, "silent.test", Fault::Silent);
    let g = Gomail::start(&format!(
        "dns_servers: [\"{}\"]\ndns_timeout: 20s\ndnsbl: [\"silent.test*2\", \"bl.test*2\"]\ndnsbl_threshold: 2\ndnsbl_timeout: 8s\nspf_enabled: false\ndkim_enabled: false\ndmarc_enabled: false\n",
        relay.addr
    ));
    let t0 = std::time::Instant::now();
    assert_eq!(
        first_line(g.addr, "127.0.0.2"),
        "554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test\r\n"
    );
    // Refused as soon as bl.test answered: the quiet zone could only add
    // to the score (a bound with a wide margin against the 8 s deadline).
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(4),
        "{:?}",
        t0.elapsed()
    );
    let t0 = std::time::Instant::now();
    // An unlisted client waits for the quiet zone, but no longer than the
    // deadline (a bound with a wide margin, not a benchmark).
    assert!(first_line(g.addr, "127.0.0.1").starts_with("220 "));
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(16),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn spf_results_land_in_the_json() {
    let w = world();
    let g = w.gomail("");
    for (src, from, want) in [
        ("127.0.0.1", "a@inc.test", "pass"),
        ("127.0.0.2", "a@inc.test", "fail"),
        ("127.0.0.2", "a@redir.test", "fail"),
        ("127.0.0.1", "a@redir.test", "pass"),
        ("127.0.0.1", "a@neutral.test", "neutral"),
        ("127.0.0.1", "a@nospf.test", "none"),
    ] {
        let r = send(&g, src, from, &w.message(from, None, "m"));
        let id = queue_id(&r).unwrap_or_else(|| panic!("{from}: {r}"));
        let spf = &stored_auth(&g, &id)["authentication"]["spf"];
        assert_eq!(spf["result"], want, "{src} {from}: {spf}");
    }
    // The null sender is checked with the HELO identity.
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO pass.test");
    let r = c.mail(
        "",
        &["r@example.test"],
        &w.message("postmaster@pass.test", None, "bounce"),
    );
    let id = queue_id(&r).unwrap_or_else(|| panic!("{r}"));
    let spf = &stored_auth(&g, &id)["authentication"]["spf"];
    assert_eq!(
        (
            spf["result"].as_str(),
            spf["helo_domain"].as_str(),
            spf["mail_from"].as_str()
        ),
        (Some("pass"), Some("pass.test"), Some(""))
    );
    // A resolver that never answers: temperror, recorded, accepted (enforcement none).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let g = Gomail::start(&format!(
        "dns_servers: [\"{}\"]\ndns_timeout: 1s\ndkim_enabled: false\ndmarc_enabled: false\n",
        silent.local_addr().unwrap()
    ));
    let r = send(
        &g,
        "127.0.0.1",
        "a@pass.test",
        &w.message("a@pass.test", None, "m"),
    );
    let id = queue_id(&r).unwrap_or_else(|| panic!("{r}"));
    assert_eq!(
        stored_auth(&g, &id)["authentication"]["spf"]["result"],
        "temperror"
    );
}

#[test]
fn a_domain_publishing_strict_alignment_is_held_to_it_under_relaxed_enforcement() {
    let w = world();
    let g = w.gomail("dmarc_enforcement: relaxed\n");
    // From a subdomain, signed by the organizational domain, SPF failing:
    // the domain's own adkim=s makes this unaligned, so p=reject applies.
    let msg = w.message("a@mail.strictalign.test", Some("strictalign.test"), "s");
    let r = send(&g, "127.0.0.2", "a@mail.strictalign.test", &msg);
    assert!(r.starts_with("550 5.7.1 "), "{r}");
    // Exact alignment passes.
    let msg = w.message("a@strictalign.test", Some("strictalign.test"), "s");
    let r = send(&g, "127.0.0.2", "a@strictalign.test", &msg);
    let id = queue_id(&r).unwrap_or_else(|| panic!("{r}"));
    let d = &stored_auth(&g, &id)["authentication"]["dmarc"];
    assert_eq!(
        (d["result"].as_str(), d["dkim_alignment"].as_str()),
        (Some("pass"), Some("strict"))
    );
}

#[test]
fn spf_void_lookup_limit_gives_permerror() {
    let w = world();
    let g = w.gomail("");
    let r = send(
        &g,
        "127.0.0.1",
        "a@void.test",
        &w.message("a@void.test", None, "v"),
    );
    let id = queue_id(&r).unwrap_or_else(|| panic!("{r}"));
    assert_eq!(
        stored_auth(&g, &id)["authentication"]["spf"]["result"],
        "permerror"
    );
}

#[test]
fn an_arc_chain_sealed_by_an_independent_sealer_is_validated() {
    let w = world();
    let g = w.gomail("");
    // A forwarder (mx.forwarder.test) checked the message, recorded that in
    // its Authentication-Results and sealed it for pass.test with dkimpy.
    let received = format!(
        "Authentication-Results: mx.forwarder.test; spf=pass smtp.mailfrom=a@pass.test\r\n{}",
        w.message("a@pass.test", None, "forwarded once")
    );
    let sealed = dkimpy_arc_seal(w.rsa_key, "pass.test", "mx.forwarder.test", &received);
    assert!(sealed.starts_with("ARC-Seal: i=1; cv=none"), "{sealed}");

    let reply = send(&g, "127.0.0.1", "a@pass.test", &sealed);
    let id = queue_id(&reply).unwrap_or_else(|| panic!("{reply}"));
    let v = stored_auth(&g, &id);
    let arc = &v["authentication"]["arc"];
    assert_eq!(arc["result"], "pass", "{v}");
    assert_eq!(arc["chain_length"], 1, "{v}");
    let raw = v["raw"].as_str().unwrap();
    assert!(raw.contains("arc=pass"), "{raw}");

    // Changed after sealing: the ARC-Message-Signature no longer matches.
    let altered = sealed.replace("forwarded once", "forwarded twice");
    let reply = send(&g, "127.0.0.1", "a@pass.test", &altered);
    let id = queue_id(&reply).unwrap_or_else(|| panic!("{reply}"));
    let v = stored_auth(&g, &id);
    assert_eq!(v["authentication"]["arc"]["result"], "fail", "{v}");
    assert!(v["raw"].as_str().unwrap().contains("arc=fail"));

    // A sealed header changed: the ARC-Seal no longer matches.
    let reseal = sealed.replace(
        "ARC-Authentication-Results: i=1; mx.forwarder.test;",
        "ARC-Authentication-Results: i=1; mx.other.test;",
    );
    assert_ne!(reseal, sealed);
    let reply = send(&g, "127.0.0.1", "a@pass.test", &reseal);
    let id = queue_id(&reply).unwrap_or_else(|| panic!("{reply}"));
    let v = stored_auth(&g, &id);
    assert_eq!(v["authentication"]["arc"]["result"], "fail", "{v}");
}

#[test]
fn answers_and_absences_are_cached_and_lookups_timed() {
    let w = world();
    // One shard: the cache is per shard.
    let g = w.gomail("shards: 1\n");
    let send_one = || {
        let m = w.message("a@pass.test", Some("pass.test"), "cached");
        let reply = send(&g, "127.0.0.1", "a@pass.test", &m);
        assert!(reply.starts_with("250"), "{reply}");
    };
    // The first message fills the cache: SPF, the DKIM key,
    // _dmarc.pass.test, and the absence of _dmarc.test (DMARC's walk up
    // the tree). One connection per message.
    send_one();
    send_one();
    let misses = metric(&g, "gomail_dns_cache_misses_total");
    let hits = metric(&g, "gomail_dns_cache_hits_total");
    let timed = metric(&g, "gomail_dns_lookup_seconds_count");
    assert!(timed >= 4.0, "lookups timed: {timed}");
    for _ in 0..10 {
        send_one();
    }
    // Every answer, absences included, now comes from the cache.
    assert_eq!(
        metric(&g, "gomail_dns_cache_misses_total"),
        misses,
        "a warm cache still missed"
    );
    assert!(metric(&g, "gomail_dns_cache_hits_total") >= hits + 10.0 * 4.0);
    assert_eq!(metric(&g, "gomail_dns_lookup_seconds_count"), timed);
}

#[test]
fn only_the_first_dkim_signatures_are_verified() {
    let w = world();
    let g = w.gomail("");
    // A valid signature on top, then 40 more that an attacker could add
    // for free (each would cost a body hash and a key lookup).
    let signed = w.message("a@pass.test", Some("pass.test"), "many signatures");
    let (first, rest) = signed.split_at(signed.find("\r\nFrom: ").unwrap() + 2);
    let mut message = first.to_string();
    for i in 0..40 {
        message.push_str(&format!(
            "DKIM-Signature: v=1; a=rsa-sha256; d=x{i}.pass.test; s=sel; c=relaxed/relaxed;\r\n\th=from; bh=AAAA; b=AAAA\r\n"
        ));
    }
    message.push_str(rest);
    let reply = send(&g, "127.0.0.1", "a@pass.test", &message);
    let id = queue_id(&reply).unwrap_or_else(|| panic!("{reply}"));
    let dkim = &stored_auth(&g, &id)["authentication"]["dkim"];
    assert_eq!(dkim["result"], "pass", "{dkim}");
    let sigs = dkim["signatures"].as_array().unwrap();
    assert_eq!(sigs.len(), 5, "{dkim}");
    assert_eq!(sigs[0]["domain"], "pass.test");
    assert_eq!(sigs[0]["valid"], true);
}

#[test]
fn servfail_is_a_temporary_error_never_a_pass() {
    let w = world();
    // SPF: the sender domain's server fails.
    let spf = relay(w.dns.addr, "inc.test", Fault::ServFail);
    let g = Gomail::start(&format!(
        "dns_servers: [\"{}\"]\ndns_timeout: 2s\nspf_enforcement: strict\n",
        spf.addr
    ));
    let m = w.message("a@inc.test", None, "servfail");
    let reply = send(&g, "127.0.0.1", "a@inc.test", &m);
    assert!(reply.starts_with("451 4.7.24 "), "{reply}");
    drop(g);

    // DMARC: only the policy record's server fails, while SPF and DKIM
    // pass; the policy is unknown, so the message is deferred.
    let dmarc = relay(w.dns.addr, "_dmarc.pass.test", Fault::ServFail);
    let g = Gomail::start(&format!(
        "dns_servers: [\"{}\"]\ndns_timeout: 2s\ndmarc_enforcement: relaxed\n",
        dmarc.addr
    ));
    let m = w.message("a@pass.test", Some("pass.test"), "servfail");
    let reply = send(&g, "127.0.0.1", "a@pass.test", &m);
    assert!(reply.starts_with("451 4.7.5 "), "{reply}");
    // Monitoring only: accepted, and the JSON says temperror.
    let g = Gomail::start(&format!(
        "dns_servers: [\"{}\"]\ndns_timeout: 2s\ndmarc_enforcement: none\n",
        dmarc.addr
    ));
    let reply = send(&g, "127.0.0.1", "a@pass.test", &m);
    let id = queue_id(&reply).unwrap_or_else(|| panic!("{reply}"));
    let v = stored_auth(&g, &id);
    assert_eq!(v["authentication"]["dmarc"]["result"], "temperror", "{v}");
}

#[test]
fn cached_answers_expire_with_their_ttl() {
    let w = world();
    let g = w.gomail("shards: 1\ndkim_enabled: false\ndmarc_enabled: false\n");
    let send_one = || {
        let m = w.message("a@ttl.test", None, "ttl");
        let reply = send(&g, "127.0.0.1", "a@ttl.test", &m);
        assert!(reply.starts_with("250"), "{reply}");
    };
    send_one();
    let misses = metric(&g, "gomail_dns_cache_misses_total");
    send_one();
    assert_eq!(
        metric(&g, "gomail_dns_cache_misses_total"),
        misses,
        "cached"
    );
    // Past the record's 2 s TTL the SPF record is asked again.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    send_one();
    assert_eq!(
        metric(&g, "gomail_dns_cache_misses_total"),
        misses + 1.0,
        "expired"
    );
}
