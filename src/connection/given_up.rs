//! Noticing a command given up before its reply: the store's deadline, or a
//! dropped request, can end the wait before redis-rs's own timeout, which
//! is then never seen. A connection that went silent must still be found
//! out (`renewing.rs`, `cluster.rs`, `sentinel.rs`): the command leaves a
//! `PING` behind on it, given the whole socket timeout.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use redis::RedisResult;

use super::busy::Busy;

/// Armed while a command waits for its reply; dropped armed, it runs
/// `then` (which leaves a `PING` behind to judge the connection by).
pub(crate) struct Unanswered<F: FnOnce()> {
    then: Option<F>,
}

impl<F: FnOnce()> Unanswered<F> {
    pub(crate) fn new(then: F) -> Self {
        Unanswered { then: Some(then) }
    }

    /// The reply came (or redis-rs's own error did): nothing to do.
    pub(crate) fn answered(mut self) {
        self.then = None;
    }
}

impl<F: FnOnce()> Drop for Unanswered<F> {
    fn drop(&mut self) {
        if let Some(then) = self.then.take() {
            then();
        }
    }
}

/// Runs `ping` (a `PING` on the connection a command was given up on) in
/// the background and hands its outcome to `judge`; one at a time per
/// `claim`, and only inside a runtime.
pub(crate) fn leave_ping<T: Send + 'static>(
    claim: &Arc<AtomicBool>,
    ping: impl Future<Output = RedisResult<T>> + Send + 'static,
    judge: impl FnOnce(RedisResult<T>) + Send + 'static,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let Some(busy) = Busy::claim(claim) else { return };
    runtime.spawn(async move {
        let _busy = busy;
        judge(ping.await);
    });
}
