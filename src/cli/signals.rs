//! The signals `gomail server` waits for on its main thread.

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (shards inherit the
/// mask, so only this thread ever receives them).
pub(crate) fn block_signals() -> libc::sigset_t {
    // SAFETY: plain signal-mask manipulation on a zeroed sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits up to `secs` for one of the blocked signals; `None` on timeout.
pub(crate) fn wait_signal(set: &libc::sigset_t, secs: i64) -> Option<i32> {
    let timeout = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    // SAFETY: waits on the set blocked by block_signals.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) };
    (sig > 0).then_some(sig)
}
