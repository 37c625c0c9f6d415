//! Source addresses to bind before connecting, so that many connections
//! spread over many (source address, port) pairs instead of exhausting the
//! ephemeral ports of one address. All of 127.0.0.0/8 is on `lo` on Linux.

use std::net::{IpAddr, Ipv4Addr};

/// Most addresses a range may hold.
const MAX_SOURCES: u32 = 65_536;

/// Parses `--sources`: `A-B` (an inclusive IPv4 range), a single address,
/// or `any` (no bind; the kernel picks). Returns the list, empty for `any`.
pub(crate) fn parse(spec: &str) -> Result<Vec<IpAddr>, String> {
    let spec = spec.trim();
    if spec.eq_ignore_ascii_case("any") {
        return Ok(Vec::new());
    }
    let Some((a, b)) = spec.split_once('-') else {
        let ip: IpAddr = spec
            .parse()
            .map_err(|_| format!("`{spec}` is not an address, a range A-B, or `any`"))?;
        return Ok(vec![ip]);
    };
    let parse4 = |s: &str| -> Result<u32, String> {
        s.trim()
            .parse::<Ipv4Addr>()
            .map(u32::from)
            .map_err(|_| format!("`{}` is not an IPv4 address", s.trim()))
    };
    let (lo, hi) = (parse4(a)?, parse4(b)?);
    if lo > hi {
        return Err(format!("range {spec} is empty (start after end)"));
    }
    if hi - lo >= MAX_SOURCES {
        return Err(format!(
            "range {spec} holds more than {MAX_SOURCES} addresses"
        ));
    }
    Ok((lo..=hi).map(|n| IpAddr::V4(Ipv4Addr::from(n))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = parse("127.0.1.1-127.0.1.64").unwrap();
        assert_eq!(r.len(), 64);
        assert_eq!(r[0], "127.0.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(r[63], "127.0.1.64".parse::<IpAddr>().unwrap());
        assert_eq!(parse("127.0.0.255-127.0.1.0").unwrap().len(), 2);
        assert_eq!(parse("127.0.0.1").unwrap().len(), 1);
        assert_eq!(parse("::1").unwrap().len(), 1);
        assert!(parse("any").unwrap().is_empty());
        assert!(parse("127.0.0.9-127.0.0.1").is_err());
        assert!(parse("127.0.0.1-").is_err());
        assert!(parse("10.0.0.0-10.255.255.255").is_err());
    }
}
