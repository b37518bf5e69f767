//! What a backend knows of its servers' clocks, for the write deadlines the
//! scripts enforce (`scripts.rs`, "Write deadlines").
//!
//! A deadline is a moment on the *server's* clock, after which a write must
//! not run. We learn each server's clock from replies that carry its time
//! (`TIME`, and every timed script): the server read its clock before the
//! reply left, so `server time - our time at arrival` is a lower bound of
//! the offset between the clocks. A deadline computed with a lower bound is
//! early, never late: safe. Our side uses a monotonic clock, so a step of
//! this machine's wall clock changes nothing.
//!
//! One estimate per server we route to by ourselves (a partition member).
//! Behind a Cluster or Sentinel connection several servers answer in turn,
//! so there the estimate keeps the *lowest* bound seen (early for every one
//! of them); elsewhere the *highest* (the tightest). Either is replaced
//! after [`FRESH_FOR`], so a server whose clock was stepped is followed;
//! and at once by a reply that shows it too high (the server's time less
//! the moment we sent is an upper bound): a clock stepped back, or another
//! server behind the same address after a failover. Until that first reply
//! of the new server, one write may carry a deadline as late as the two
//! clocks are apart.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// How long one estimate is improved on before the next observation replaces it.
const FRESH_FOR: Duration = Duration::from_secs(10);

/// Not known yet.
const UNKNOWN: i64 = i64::MIN;

/// Milliseconds on our monotonic clock (since the first call).
pub(crate) fn now_ms() -> i64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    i64::try_from(START.elapsed().as_millis()).unwrap_or(i64::MAX)
}

/// The clocks of one backend's servers.
#[derive(Debug)]
pub(crate) struct ServerClocks {
    offsets: Vec<Estimate>,
    /// Several servers share each estimate (Cluster, Sentinel).
    shared: bool,
}

#[derive(Debug)]
struct Estimate {
    /// The server's clock (ms since the Unix epoch) minus [`now_ms`], at least.
    offset: AtomicI64,
    /// When (by [`now_ms`]) the estimate was last replaced.
    since: AtomicI64,
}

impl ServerClocks {
    /// For `members` servers we route to ourselves, or one estimate shared by
    /// the servers behind a Cluster or Sentinel connection.
    pub(crate) fn new(members: usize, shared: bool) -> ServerClocks {
        let offsets = (0..members.max(1))
            .map(|_| Estimate { offset: AtomicI64::new(UNKNOWN), since: AtomicI64::new(0) })
            .collect();
        ServerClocks { offsets, shared }
    }

    fn estimate(&self, member: usize) -> &Estimate {
        &self.offsets[member.min(self.offsets.len() - 1)]
    }

    /// Whether member `member`'s clock is known.
    pub(crate) fn known(&self, member: usize) -> bool {
        self.estimate(member).offset.load(Ordering::Relaxed) != UNKNOWN
    }

    /// The moment on member `member`'s clock (ms since the epoch) that lies
    /// `after` past `from` (a [`now_ms`] reading), or `None` when its clock
    /// is not known.
    pub(crate) fn deadline(&self, member: usize, from: i64, after: Duration) -> Option<u64> {
        let offset = self.estimate(member).offset.load(Ordering::Relaxed);
        if offset == UNKNOWN {
            return None;
        }
        let after = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        u64::try_from(from.saturating_add(offset).saturating_add(after)).ok()
    }

    /// A reply from member `member` carried its clock, `server_ms`; the
    /// command was sent at `sent` (a [`now_ms`] reading).
    pub(crate) fn observe(&self, member: usize, server_ms: i64, sent: i64) {
        let now = now_ms();
        // Less one: the server's clock was read truncated to the millisecond.
        let bound = server_ms.saturating_sub(now).saturating_sub(1);
        // The server read its clock after we sent (even a command re-sent
        // later), so the offset is at most this. An estimate above it is no
        // lower bound any more: the clock was stepped back, or another
        // server answers now (a failover): replaced at once, else deadlines
        // would run late until it is stale.
        let ceiling = server_ms.saturating_sub(sent);
        let estimate = self.estimate(member);
        let current = estimate.offset.load(Ordering::Relaxed);
        let stale = now.saturating_sub(estimate.since.load(Ordering::Relaxed)) > FRESH_FOR.as_millis() as i64;
        let better = if self.shared { bound < current } else { bound > current };
        if current == UNKNOWN || stale || current > ceiling {
            estimate.offset.store(bound, Ordering::Relaxed);
            estimate.since.store(now, Ordering::Relaxed);
        } else if better {
            estimate.offset.store(bound, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_is_never_later_than_the_servers_clock_allows() {
        let clocks = ServerClocks::new(2, false);
        assert_eq!(clocks.deadline(0, now_ms(), Duration::from_secs(1)), None);
        let server_now = 1_000_000_000_000; // the server's wall clock, ms
        clocks.observe(0, server_now, now_ms());
        let at = clocks.deadline(0, now_ms(), Duration::from_secs(1)).unwrap();
        assert!(at <= server_now as u64 + 1000, "{at}");
        assert!(at >= server_now as u64 + 990, "{at}");
        assert!(!clocks.known(1), "members are apart");
        // A looser bound (a slower reply) does not replace a tighter one.
        clocks.observe(0, server_now - 500, now_ms() - 600);
        assert!(clocks.deadline(0, now_ms(), Duration::ZERO).unwrap() >= server_now as u64 - 10);
        // Shared: the lowest bound wins.
        let shared = ServerClocks::new(1, true);
        shared.observe(0, server_now, now_ms());
        shared.observe(0, server_now - 3000, now_ms());
        assert!(shared.deadline(0, now_ms(), Duration::ZERO).unwrap() <= server_now as u64 - 2990);
    }

    #[test]
    fn a_clock_stepped_back_is_followed_at_its_first_reply() {
        let clocks = ServerClocks::new(1, false);
        let server_now = 1_000_000_000_000;
        clocks.observe(0, server_now, now_ms());
        // Stepped back 5 s (or another server answers, after a failover):
        // the old estimate would put every deadline 5 s late.
        clocks.observe(0, server_now - 5000, now_ms());
        let at = clocks.deadline(0, now_ms(), Duration::from_secs(1)).unwrap();
        assert!(at <= (server_now - 5000 + 1000) as u64 + 5, "{at}");
    }
}
