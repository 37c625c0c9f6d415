//! Containing a panic in one connection's task, so that a bug costs that
//! connection, not the shard; and telling the process's panic hook which
//! panics are contained (it ends the process for any other).

use futures_lite::future;

thread_local! {
    /// Set while a contained task is being polled on this thread: the
    /// binary's panic hook then lets the panic unwind to [`contain`]
    /// instead of ending the process.
    static CONTAINED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True while the current thread polls a task whose panics [`contain`]
/// catches (for the process's panic hook).
pub fn panic_is_contained() -> bool {
    CONTAINED.with(|c| c.get())
}

/// Runs `work`, containing a panic in it: glommio does not catch a task's
/// panic, so one would unwind through the executor and take the whole shard
/// (every connection on it, its listener) down with it. Returns the panic's
/// message.
pub(super) async fn contain(work: impl std::future::Future<Output = ()>) -> Result<(), String> {
    use futures_util::FutureExt;
    /// Restores the flag however the poll ends, unwinding included.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            CONTAINED.with(|c| c.set(self.0));
        }
    }
    let mut work = std::pin::pin!(work);
    let flagged = future::poll_fn(move |cx| {
        let _restore = Restore(CONTAINED.with(|c| c.replace(true)));
        work.as_mut().poll(cx)
    });
    std::panic::AssertUnwindSafe(flagged)
        .catch_unwind()
        .await
        .map_err(|p| {
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into())
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// A panic in one connection's task is contained: the executor (the
    /// shard) keeps running its other tasks.
    #[test]
    fn a_panicking_connection_does_not_take_the_shard_down() {
        let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
        let (caught, other) = ex.run(async {
            let other = glommio::spawn_local(async {
                glommio::timer::sleep(Duration::from_millis(20)).await;
                42
            });
            let bad = glommio::spawn_local(super::contain(async {
                glommio::timer::sleep(Duration::from_millis(5)).await;
                panic!("a parser bug");
            }));
            (bad.await, other.await)
        });
        assert_eq!(caught, Err("a parser bug".to_string()));
        assert_eq!(other, 42);
        // The flag the process's panic hook reads is cleared again after
        // the unwind: a later panic outside a connection still ends the
        // process.
        assert!(!super::panic_is_contained());
    }
}
