//! A DNS relay on loopback that goes quiet for one zone: a DNS blocklist
//! that stops answering, for the DNSBL deadline tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A DNS relay on loopback in front of `upstream` that never answers for
/// names under `silent` (a blocklist gone quiet) and relays the rest over
/// UDP. Stops when dropped.
pub(crate) struct QuietZone {
    pub(crate) addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for QuietZone {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub(crate) fn quiet_zone(upstream: SocketAddr, silent: &str) -> QuietZone {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let suffix = format!(".{}", silent.trim_end_matches('.').to_ascii_lowercase());
    let stopped = stop.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while !stopped.load(Ordering::Relaxed) {
            let Ok((n, client)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let query = buf[..n].to_vec();
            if qname(&query).ends_with(&suffix) {
                continue;
            }
            let reply_to = sock.try_clone().unwrap();
            std::thread::spawn(move || {
                let up = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                up.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                up.send_to(&query, upstream).unwrap();
                let mut answer = [0u8; 4096];
                if let Ok(n) = up.recv(&mut answer) {
                    let _ = reply_to.send_to(&answer[..n], client);
                }
            });
        }
    });
    QuietZone { addr, stop }
}

/// The question name of a DNS query, lower case, without the final dot.
fn qname(packet: &[u8]) -> String {
    let mut labels = Vec::new();
    let mut at = 12;
    while let Some(&len) = packet.get(at) {
        let len = len as usize;
        if len == 0 || len > 63 {
            break;
        }
        let Some(label) = packet.get(at + 1..at + 1 + len) else {
            break;
        };
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += 1 + len;
    }
    labels.join(".")
}
