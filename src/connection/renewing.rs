//! A connection to one server that is replaced once it goes silent.
//!
//! redis-rs's `ConnectionManager` reconnects when the connection drops, but a
//! command that times out leaves it as it is (a timeout says nothing of the
//! connection). A connection whose peer vanished without a reset (a host
//! gone, a load balancer whose target died, a NAT entry that expired) then
//! times out every command until the kernel gives up on it, about a quarter
//! of an hour later, and the circuit breaker's probes go over the same dead
//! socket. So: when a command times out and nothing at all came back on the
//! connection since that command was sent, the next command goes over a new
//! one. A slow server that still answers some commands keeps its connection.
//!
//! A command may also be given up before redis-rs's own timeout: the store's
//! operation deadline can be the shorter wait, and a request can be dropped.
//! Its timeout then never comes, so it leaves one `PING` behind, on the same
//! connection and given the whole timeout, whose outcome is judged the same
//! way (one at a time).
//!
//! Commands sent on the old connection may still run (nothing takes them
//! back: `scripts.rs` says why that is safe).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::given_up::{Unanswered, leave_ping};
use crate::clock;

/// A `ConnectionManager` replaced by a new one when it went silent.
#[derive(Clone)]
pub(crate) struct Renewing {
    shared: Arc<Shared>,
}

struct Shared {
    /// The connection, and how many times it was replaced.
    current: RwLock<(u64, ConnectionManager)>,
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// When (by [`clock::now_ms`]) a reply last came back, an error reply
    /// included.
    last_reply: AtomicI64,
    /// Held while a `PING` left behind by a command given up is in flight
    /// (one at a time, whichever connection it is on).
    following_up: Arc<AtomicBool>,
}

impl Renewing {
    /// A lazily connecting manager to `client`'s server.
    pub(crate) fn new(client: redis::Client, config: ConnectionManagerConfig) -> RedisResult<Renewing> {
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Renewing {
            shared: Arc::new(Shared {
                current: RwLock::new((0, manager)),
                client,
                config,
                last_reply: AtomicI64::new(clock::now_ms()),
                following_up: Arc::new(AtomicBool::new(false)),
            }),
        })
    }

    fn current(&self) -> (u64, ConnectionManager) {
        self.shared.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// After a command of connection `generation`, sent at `sent`, answered
    /// with `result`.
    fn answered<T>(&self, generation: u64, sent: i64, result: &RedisResult<T>) {
        match result {
            Err(err) if err.is_timeout() => {
                if self.shared.last_reply.load(Ordering::Relaxed) < sent {
                    self.renew(generation);
                }
            }
            Err(err) if err.is_io_error() || err.is_connection_dropped() => {}
            // The server answered (an error reply is an answer too). Read
            // first: a write on every reply would bounce the cache line
            // between worker threads; one a millisecond is plenty.
            _ => {
                let now = clock::now_ms();
                if self.shared.last_reply.load(Ordering::Relaxed) < now {
                    self.shared.last_reply.store(now, Ordering::Relaxed);
                }
            }
        }
    }

    /// A command on connection `generation` was given up before its reply
    /// or its timeout: a `PING` on it, in the background, with the whole
    /// timeout, tells whether it went silent (unless it was replaced already).
    fn follow_up(&self, generation: u64) {
        let (current, mut conn) = self.current();
        if current != generation {
            return;
        }
        let (renewing, sent) = (self.clone(), clock::now_ms());
        let ping = async move { conn.send_packed_command(&redis::cmd("PING")).await };
        leave_ping(&self.shared.following_up, ping, move |result| renewing.answered(generation, sent, &result));
    }

    /// Replaces connection `generation`, unless another command did already.
    fn renew(&self, generation: u64) {
        let Ok(fresh) = ConnectionManager::new_lazy_with_config(self.shared.client.clone(), self.shared.config.clone())
        else {
            return;
        };
        let mut current = self.shared.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.0 == generation {
            *current = (generation + 1, fresh);
            tracing::debug!("a command timed out and nothing came back since it was sent: new connection");
        }
    }
}

impl ConnectionLike for Renewing {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut conn) = self.current();
            let sent = clock::now_ms();
            let waiting = Unanswered::new(|| self.follow_up(generation));
            let result = conn.send_packed_command(cmd).await;
            waiting.answered();
            self.answered(generation, sent, &result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipe: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut conn) = self.current();
            let sent = clock::now_ms();
            let waiting = Unanswered::new(|| self.follow_up(generation));
            let result = conn.req_packed_commands(pipe, offset, count).await;
            waiting.answered();
            self.answered(generation, sent, &result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.current().1.get_db()
    }
}
