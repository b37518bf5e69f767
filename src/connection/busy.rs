//! A claim on a piece of background work that must run once at a time (a
//! connection's follow-up `PING`, a cluster connection being remade): taken
//! with [`Busy::claim`], given back when dropped, so a task that is
//! cancelled (its runtime shutting down) does not keep it for ever.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Held while the work runs.
pub(crate) struct Busy(Arc<AtomicBool>);

impl Busy {
    /// The claim on `flag`, unless another holds it.
    pub(crate) fn claim(flag: &Arc<AtomicBool>) -> Option<Busy> {
        (!flag.swap(true, Ordering::AcqRel)).then(|| Busy(Arc::clone(flag)))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_claim_at_a_time_given_back_on_drop() {
        let flag = Arc::new(AtomicBool::new(false));
        let first = Busy::claim(&flag);
        assert!(first.is_some() && Busy::claim(&flag).is_none());
        drop(first);
        assert!(Busy::claim(&flag).is_some());
    }
}
