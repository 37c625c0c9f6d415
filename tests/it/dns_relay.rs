//! A DNS relay on loopback in front of the test DNS server that misbehaves
//! for one zone: it goes quiet (a DNS blocklist that stops answering) or
//! answers SERVFAIL (a broken authoritative server), as real resolvers do.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the relay does with queries for names at or under its zone.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    /// No answer at all.
    Silent,
    /// An answer with RCODE 2 (SERVFAIL).
    ServFail,
}

/// A running relay; stops when dropped.
pub(crate) struct DnsRelay {
    pub(crate) addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for DnsRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Relays queries to `upstream` over UDP, except those for names at or
/// under `zone`, which get `fault`.
pub(crate) fn relay(upstream: SocketAddr, zone: &str, fault: Fault) -> DnsRelay {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    let under = format!(".{zone}");
    let stopped = stop.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while !stopped.load(Ordering::Relaxed) {
            let Ok((n, client)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let query = buf[..n].to_vec();
            let name = qname(&query);
            if n >= 12 && (name == zone || name.ends_with(&under)) {
                if let Fault::ServFail = fault {
                    // The query, turned into a response (QR) with recursion
                    // available and RCODE 2.
                    let mut answer = query;
                    answer[2] |= 0x80;
                    answer[3] = 0x80 | 2;
                    let _ = sock.send_to(&answer, client);
                }
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
    DnsRelay { addr, stop }
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
