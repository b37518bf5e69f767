//! Noticing a command given up before its reply: the store's deadline, or a
//! dropped request, can end the wait before redis-rs's own timeout, which
//! is then never seen. A connection that went silent must still be found
//! out (`renewing.rs`, `cluster.rs`).

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
