//! The command line's client of the running server's API (`gomail queue
//! retry`, `gomail security`): address and `admin_token` from the
//! configuration, one HTTP/1.1 request per call.

use anyhow::Context;
use gomail::config::Config;

/// A minimal HTTP/1.1 request to the local control plane.
pub(crate) fn api_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: gomail\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, answer) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, answer.to_string()))
}

/// The running server's API address and token, from the configuration.
pub(crate) fn api_of(c: &Config, what: &str) -> anyhow::Result<(std::net::SocketAddr, String)> {
    let token = c.text("admin_token").with_context(|| {
        format!("admin_token must be set: {what} goes through the running server's management API")
    })?;
    // Where the server runs, which may differ from the file's `port` until
    // it restarts.
    let mut addr = gomail::control::advertised(&c.data_dir).unwrap_or(c.api_listen);
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok((addr, token))
}

/// One API call; the answer's JSON on success, the server's error otherwise.
pub(crate) fn api_call(
    c: &Config,
    what: &str,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<serde_json::Value> {
    let (addr, token) = api_of(c, what)?;
    let (status, answer) = api_request(addr, method, path, &token, body)
        .with_context(|| format!("is gomail running? (API {addr})"))?;
    if !(200..300).contains(&status) {
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        match v["message"].as_str() {
            Some(m) => anyhow::bail!("the server answered {status}: {m}"),
            None => anyhow::bail!("the server answered {status}: {answer}"),
        }
    }
    serde_json::from_str(&answer)
        .with_context(|| format!("the server's answer is not JSON: {answer}"))
}
