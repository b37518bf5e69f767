//! Faults on real servers (killed, frozen, restarted, slow) and what the
//! store does about them: breaker, read and write policies, deadlines,
//! timeouts and retries; the store recovers without being rebuilt.

mod policies;
mod restart;
mod suite;
mod timeouts;
