//! Steering connections to shards by the client's address.
//!
//! Every shard has its own `SO_REUSEPORT` listener on each address. Left to
//! itself the kernel hashes the whole 4-tuple, so two connections from one
//! client may land on two shards. A classic BPF program attached to the
//! group (`SO_ATTACH_REUSEPORT_CBPF`) instead picks the listener from the
//! source address alone: an IPv4 address, or the /64 of an IPv6 one, always
//! lands on the same shard, on every listen address. Per-address counters
//! can then be shard-local and still exact.
//!
//! The program returns an index into the group in the order its sockets
//! started listening, so [`bind_group`] creates them all on one thread in
//! shard order. [`shard_for`] computes the same function in Rust.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use crate::{listen_socket, ShardsError};

/// `SKF_NET_OFF`: classic BPF's offset base for the network header.
const SKF_NET_OFF: i32 = -0x100000;
/// Knuth's multiplicative constant (2^32 / φ): spreads neighbouring
/// addresses over shards.
const MIX: u32 = 0x9E37_79B1;

// Classic BPF opcodes (linux/filter.h).
const LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20)
const TAX: u16 = 0x07; // BPF_MISC | BPF_TAX
const XOR_X: u16 = 0x04 | 0xa0 | 0x08; // BPF_ALU | BPF_XOR | BPF_X
const MUL_K: u16 = 0x04 | 0x20; // BPF_ALU | BPF_MUL | BPF_K
const RSH_K: u16 = 0x04 | 0x70; // BPF_ALU | BPF_RSH | BPF_K
const MOD_K: u16 = 0x04 | 0x90; // BPF_ALU | BPF_MOD | BPF_K
const RET_A: u16 = 0x06 | 0x10; // BPF_RET | BPF_A

fn op(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// The program for an IPv4 or an IPv6 listener: a 32-bit word of the
/// source address (IPv6: the two words of its /64, xor'ed), mixed, modulo
/// the shard count.
fn program(ipv6: bool, shards: usize) -> Vec<libc::sock_filter> {
    let at = |off: i32| (SKF_NET_OFF + off) as u32;
    let mut p = if ipv6 {
        // The source address starts at offset 8 of the IPv6 header.
        vec![
            op(LD_W_ABS, at(8)),
            op(TAX, 0),
            op(LD_W_ABS, at(12)),
            op(XOR_X, 0),
        ]
    } else {
        // ... and at offset 12 of the IPv4 header.
        vec![op(LD_W_ABS, at(12))]
    };
    p.extend([
        op(MUL_K, MIX),
        op(RSH_K, 16),
        op(MOD_K, shards as u32),
        op(RET_A, 0),
    ]);
    p
}

/// The shard (index in bind order) that connections from `ip` land on,
/// as the steering program computes it.
pub fn shard_for(ip: IpAddr, shards: usize) -> usize {
    let word = match ip.to_canonical() {
        IpAddr::V4(v4) => u32::from_be_bytes(v4.octets()),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            u32::from_be_bytes([o[0], o[1], o[2], o[3]])
                ^ u32::from_be_bytes([o[4], o[5], o[6], o[7]])
        }
    };
    ((word.wrapping_mul(MIX) >> 16) % shards.max(1) as u32) as usize
}

fn attach(sock: &socket2::Socket, ipv6: bool, shards: usize) -> io::Result<()> {
    let prog = program(ipv6, shards);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points at `prog`, alive for the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            &fprog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Binds `shards` `SO_REUSEPORT` listeners on `addr`, in shard order on the
/// calling thread, and steers the group by source address. Element `i` is
/// shard `i`'s listener; hand it over with [`adopt`].
///
/// Call it for every address before any client can connect: a socket that
/// joins or leaves the group later shifts the indexes (the `data_dir` lock
/// keeps a second gomail out of the group).
pub fn bind_group(addr: SocketAddr, shards: usize) -> Result<Vec<socket2::Socket>, ShardsError> {
    let err = |source| ShardsError::Bind { addr, source };
    let group = (0..shards.max(1))
        .map(|_| listen_socket(addr, true).map_err(err))
        .collect::<Result<Vec<_>, _>>()?;
    if group.len() > 1 {
        attach(&group[0], addr.is_ipv6(), group.len()).map_err(|e| ShardsError::Bind {
            addr,
            source: io::Error::new(
                e.kind(),
                format!(
                    "cannot steer connections by client address (SO_ATTACH_REUSEPORT_CBPF): {e}"
                ),
            ),
        })?;
    }
    Ok(group)
}

/// Turns a listener from [`bind_group`] into a glommio listener (call it on
/// the shard that serves it).
pub fn adopt(sock: socket2::Socket) -> glommio::net::TcpListener {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the descriptor is a listening TCP socket we own; glommio takes it over.
    unsafe { glommio::net::TcpListener::from_raw_fd(sock.into_raw_fd()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::{Duration, Instant};

    /// Accepts on every listener of the group until one has the
    /// connection; returns its index.
    fn landed(group: &[std::net::TcpListener]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for (i, l) in group.iter().enumerate() {
                if l.accept().is_ok() {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no listener got the connection");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn connect_from(src: IpAddr, to: SocketAddr) -> socket2::Socket {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::for_address(to), Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::new(src, 0).into()).unwrap();
        s.connect(&to.into()).unwrap();
        s
    }

    fn group_on(addr: SocketAddr, n: usize) -> (SocketAddr, Vec<std::net::TcpListener>) {
        let addr = crate::probe_addresses(&[addr]).unwrap()[0];
        let group: Vec<std::net::TcpListener> = bind_group(addr, n)
            .unwrap()
            .into_iter()
            .map(|s| {
                s.set_nonblocking(true).unwrap();
                s.into()
            })
            .collect();
        (addr, group)
    }

    #[test]
    fn each_client_address_always_lands_on_its_shard() {
        let (addr, group) = group_on("127.0.0.1:0".parse().unwrap(), 4);
        let mut seen = [0usize; 4];
        for round in 0..3 {
            for last in 1..=40u8 {
                let src = IpAddr::V4(Ipv4Addr::new(127, 0, 1, last));
                let _c = connect_from(src, addr);
                let got = landed(&group);
                assert_eq!(got, shard_for(src, 4), "{src} in round {round}");
                seen[got] += 1;
            }
        }
        // 40 neighbouring addresses are spread over all four shards.
        assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
    }

    #[test]
    fn ipv6_clients_are_steered_by_their_64() {
        let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
            panic!("IPv6 loopback (::1) is needed for this test");
        };
        drop(probe);
        let (addr, group) = group_on("[::1]:0".parse().unwrap(), 3);
        for _ in 0..10 {
            let _c = connect_from(IpAddr::V6(Ipv6Addr::LOCALHOST), addr);
            assert_eq!(landed(&group), shard_for(Ipv6Addr::LOCALHOST.into(), 3));
        }
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(shard_for(a, 7), shard_for(b, 7));
    }
}
