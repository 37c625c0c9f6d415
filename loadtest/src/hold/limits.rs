//! What the machine allows a hold run: file descriptors (RLIMIT_NOFILE),
//! ephemeral ports per source address (`net.ipv4.ip_local_port_range`),
//! and the server's resident memory (`VmRSS` in `/proc/PID/status`). The
//! parsers and checks are pure; the readers are thin wrappers.

/// Descriptors kept back for the runtime, stdio, the probe and the report.
pub(crate) const FD_RESERVE: u64 = 64;

/// Ports per address when the range cannot be read: Linux's default,
/// 32768-60999.
pub(crate) const DEFAULT_PORTS: u64 = 60_999 - 32_768 + 1;

const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the soft
/// limit now in force (unchanged if raising it failed).
pub(crate) fn raise_nofile() -> Result<u64, String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!(
            "reading RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        ));
    }
    // An unlimited hard limit still stops at fs.nr_open.
    let target = if lim.rlim_max == libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(lim.rlim_cur)
    } else {
        lim.rlim_max
    };
    if target > lim.rlim_cur {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(target);
        }
    }
    Ok(lim.rlim_cur)
}

/// Whether `count` held connections fit in `limit` descriptors.
pub(crate) fn check_fds(count: u64, limit: u64) -> Result<(), String> {
    let need = count + FD_RESERVE;
    if need > limit {
        return Err(format!(
            "{count} connections need about {need} file descriptors, but RLIMIT_NOFILE allows \
             {limit} (raised to its hard limit); raise the hard limit (ulimit -Hn, \
             LimitNOFILE=) or hold fewer"
        ));
    }
    Ok(())
}

/// Usable ephemeral ports per source address, from the kernel's range.
pub(crate) fn ports_per_source() -> u64 {
    std::fs::read_to_string(PORT_RANGE)
        .ok()
        .and_then(|s| parse_port_range(&s))
        .unwrap_or(DEFAULT_PORTS)
}

/// `32768\t60999\n` to the number of ports in it.
pub(crate) fn parse_port_range(text: &str) -> Option<u64> {
    let mut it = text.split_ascii_whitespace().map(str::parse::<u64>);
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    (lo <= hi && it.next().is_none()).then(|| hi - lo + 1)
}

/// Whether `count` connections fit in the ports of `sources` addresses
/// (`0`: no bind, one address the kernel picks).
pub(crate) fn check_ports(count: u64, sources: usize, per_source: u64) -> Result<(), String> {
    let have = sources.max(1) as u64;
    let per_source = per_source.max(1);
    if count > have * per_source {
        return Err(format!(
            "{count} connections need at least {} source addresses at {per_source} ephemeral \
             ports each ({PORT_RANGE}); --sources gives {have}",
            count.div_ceil(per_source)
        ));
    }
    Ok(())
}

/// The `VmRSS` line of `/proc/PID/status`, in kB.
pub(crate) fn parse_vm_rss(status: &str) -> Option<u64> {
    let rest = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim();
    rest.strip_suffix("kB")?.trim().parse().ok()
}

/// The resident memory of process `pid`, in kB.
pub(crate) fn vm_rss_kb(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    parse_vm_rss(&status).ok_or_else(|| format!("{path} has no VmRSS line"))
}

/// Memory per held connection in bytes: the RSS growth over `held`.
pub(crate) fn per_conn_bytes(before_kb: u64, after_kb: u64, held: usize) -> Option<f64> {
    if held == 0 {
        return None;
    }
    let delta = (after_kb as f64 - before_kb as f64) * 1024.0;
    Some(delta / held as f64)
}
