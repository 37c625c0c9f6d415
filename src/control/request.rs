//! Who is asking, and under which id: the request id (`X-Request-ID`) and
//! the client address behind trusted proxies (`X-Forwarded-For`).

use std::net::IpAddr;

use crate::admission::Networks;

/// The longest `X-Request-ID` taken from a client.
pub const MAX_REQUEST_ID: usize = 128;

/// The client's `X-Request-ID` when it is sane (1 to 128 visible ASCII
/// characters), else a new random UUID.
pub fn request_id(given: Option<&[u8]>) -> String {
    match given {
        Some(v)
            if !v.is_empty()
                && v.len() <= MAX_REQUEST_ID
                && v.iter().all(|b| (0x21..=0x7e).contains(b)) =>
        {
            String::from_utf8_lossy(v).into_owned()
        }
        _ => new_uuid(),
    }
}

/// A random (version 4) UUID.
fn new_uuid() -> String {
    let mut b: [u8; 16] = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The client's address: the socket's peer, or, when the peer is one of
/// `trusted_proxies`, the last address in `X-Forwarded-For` that is not a
/// trusted proxy (the one the nearest trusted proxy saw). `X-Forwarded-For`
/// from anyone else is ignored: it is only a claim.
pub fn client_ip(peer: IpAddr, forwarded: Option<&str>, proxies: &Networks) -> IpAddr {
    let peer = peer.to_canonical();
    if !proxies.contains(peer) {
        return peer;
    }
    let Some(chain) = forwarded else {
        return peer;
    };
    let mut client = peer;
    for hop in chain.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip.to_canonical();
                if !proxies.contains(client) {
                    break;
                }
            }
            // A hop that is not an address: stop at what we know.
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_request_ids_are_kept_and_others_replaced() {
        assert_eq!(request_id(Some(b"abc-123")), "abc-123");
        let long = vec![b'a'; 129];
        for bad in [&b""[..], b"has space", b"tab\t", &long, "é".as_bytes()] {
            let id = request_id(Some(bad));
            assert_eq!(id.len(), 36, "{bad:?} -> {id}");
            assert_eq!(&id[14..15], "4");
        }
        assert_ne!(request_id(None), request_id(None));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies = Networks(vec!["10.0.0.0/8".parse().unwrap()]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let xff = Some("198.51.100.9, 203.0.113.5, 10.1.1.1");
        assert_eq!(client_ip(ip("192.0.2.1"), xff, &proxies), ip("192.0.2.1"));
        assert_eq!(client_ip(ip("10.0.0.2"), xff, &proxies), ip("203.0.113.5"));
        assert_eq!(client_ip(ip("10.0.0.2"), None, &proxies), ip("10.0.0.2"));
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("junk"), &proxies),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("10.9.9.9"), &proxies),
            ip("10.9.9.9")
        );
    }
}
