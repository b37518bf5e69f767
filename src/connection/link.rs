//! One server's connection: a reconnecting `ConnectionManager` that, with
//! [`Backend::auto_pipeline`](crate::Backend::auto_pipeline), writes the
//! commands of concurrent requests together.
//!
//! redis-rs writes each command as soon as it is queued, so many requests in
//! flight on one connection cost one `writev` (and, with `TCP_NODELAY`, one
//! packet and one wake-up of the server) per command. A `Link` sends a
//! command at once when the connection is idle. Otherwise the command is
//! queued, and the first command of a queue spawns a flush task, which
//! yields (`tokio::task::yield_now`: the runtime runs its other ready tasks,
//! which queue their commands) and then sends the queue as one pipeline.
//! Nothing waits for a timer or for earlier replies, and the next batch can
//! start while this one is in flight. The wait is at most one turn of the
//! runtime's scheduler (tokio wakes yielded tasks whenever it polls for I/O).
//!
//! It pays when the client is busy with many commands in flight (many
//! concurrent requests per connection, `TCP_NODELAY`): fewer system calls,
//! packets and server wake-ups. With fewer requests in flight it costs
//! latency, since the server no longer works on the first command while the
//! client prepares the rest. `BENCHMARKS.md` has both.
//!
//! Each command keeps its own reply, server errors included; a connection
//! error or timeout is every command's error of that batch. The flush runs
//! in its own task, so a request dropped mid-way (a client that went away)
//! never strands the commands queued with it.

use std::sync::{Arc, Mutex, PoisonError};

use redis::aio::ConnectionManager;
use redis::{Cmd, Pipeline, RedisResult, Value};
use tokio::sync::oneshot;

/// What is in flight and what waits.
#[derive(Default)]
struct State {
    /// Commands sent straight to the connection and not answered yet.
    direct: usize,
    /// The next batch, whose flush task is spawned.
    queue: Option<Batch>,
    /// Writes so far (direct commands and batches), for the tests.
    #[cfg(test)]
    sends: usize,
}

/// Commands waiting to be sent together.
struct Batch {
    pipe: Pipeline,
    waiters: Vec<oneshot::Sender<RedisResult<Value>>>,
}

impl Batch {
    fn new() -> Batch {
        let mut pipe = redis::pipe();
        // Each command gets its own reply, errors included.
        pipe.ignore_errors();
        Batch { pipe, waiters: Vec::new() }
    }
}

/// A connection to one server.
pub(crate) struct Link {
    manager: ConnectionManager,
    /// With automatic pipelining.
    state: Option<Arc<Mutex<State>>>,
}

/// Counts a direct command as answered, even when its request is dropped.
struct DirectGuard<'a>(&'a Mutex<State>);

impl Drop for DirectGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).direct -= 1;
    }
}

impl Link {
    pub(crate) fn new(manager: ConnectionManager, auto_pipeline: bool) -> Link {
        Link { manager, state: auto_pipeline.then(Arc::default) }
    }

    /// The connection itself, for a caller's own pipelines (sent as they are).
    pub(crate) fn manager(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// Sends one command, at once when the connection is idle, else with the
    /// others queued by the tasks ready to run; reads its reply.
    pub(crate) async fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
        let Some(shared) = &self.state else {
            return send(self.manager.clone(), cmd).await;
        };
        let receiver = {
            let mut state = shared.lock().unwrap_or_else(PoisonError::into_inner);
            if state.direct == 0 && state.queue.is_none() {
                state.direct += 1;
                #[cfg(test)]
                {
                    state.sends += 1;
                }
                None
            } else {
                let (reply, receiver) = oneshot::channel();
                let first = state.queue.is_none();
                let batch = state.queue.get_or_insert_with(Batch::new);
                batch.pipe.add_command(cmd.clone());
                batch.waiters.push(reply);
                if first {
                    tokio::spawn(flush(self.manager.clone(), shared.clone()));
                }
                Some(receiver)
            }
        };
        let Some(receiver) = receiver else {
            let _answered = DirectGuard(shared);
            return send(self.manager.clone(), cmd).await;
        };
        match receiver.await {
            Ok(reply) => reply,
            // Only if the runtime shut down under the flush task.
            Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "the batch was dropped unsent"))),
        }
    }
}

/// One command, straight to the connection. Boxed: redis-rs's future is over
/// 1 KB, and every `.await` level above would move it by value (the store's
/// own futures stay small; see `operation_futures_stay_small`).
async fn send(mut manager: ConnectionManager, cmd: &Cmd) -> RedisResult<Value> {
    Box::pin(async move { manager.send_packed_command(cmd).await }).await
}

/// Lets the tasks that are ready to run queue their commands, then sends the
/// queue as one pipeline.
async fn flush(mut manager: ConnectionManager, state: Arc<Mutex<State>>) {
    // `yield_now` rather than a self-wake (back of the run queue): with its
    // longer wait, batches are larger; at 64 tasks, 90k requests/s against 61k.
    tokio::task::yield_now().await;
    let Some(batch) = ({
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        #[cfg(test)]
        {
            state.sends += 1;
        }
        state.queue.take()
    }) else {
        return;
    };
    let count = batch.waiters.len();
    match manager.send_packed_commands(&batch.pipe, 0, count).await {
        Ok(replies) if replies.len() == count => {
            for (waiter, reply) in batch.waiters.into_iter().zip(replies) {
                let _ = waiter.send(Ok(reply));
            }
        }
        Ok(replies) => {
            let err = redis::RedisError::from((
                redis::ErrorKind::Client,
                "pipeline reply count mismatch",
                format!("{} replies for {count} commands", replies.len()),
            ));
            for waiter in batch.waiters {
                let _ = waiter.send(Err(err.clone()));
            }
        }
        Err(err) => {
            for waiter in batch.waiters {
                let _ = waiter.send(Err(err.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::RedisServer;

    fn sends(link: &Link) -> usize {
        link.state.as_ref().unwrap().lock().unwrap().sends
    }

    async fn link(server: &RedisServer) -> Link {
        let client = server.client().unwrap();
        Link::new(client.get_connection_manager().await.unwrap(), true)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn commands_queued_together_go_in_one_batch_each_with_its_reply() {
        let server = RedisServer::start().unwrap();
        let link = link(&server).await;
        let set: Vec<Cmd> = (0..64).map(|i| redis::cmd("SET").arg(format!("k{i}")).arg(i).clone()).collect();
        let replies = futures_util::future::join_all(set.iter().map(|cmd| link.query(cmd))).await;
        assert!(replies.iter().all(|r| matches!(r, Ok(Value::Okay))), "{replies:?}");
        // The first went straight out; the 63 queued meanwhile went together.
        assert_eq!(sends(&link), 2, "64 commands queued in one poll: one direct, one batch");

        // Mixed with a server error: each reply is its own command's.
        let _: () = redis::cmd("RPUSH").arg("list").arg("x").query_async(&mut link.manager()).await.unwrap();
        let mut get: Vec<Cmd> = (0..64).map(|i| redis::cmd("GET").arg(format!("k{i}")).clone()).collect();
        get[7] = redis::cmd("GET").arg("list").clone();
        let replies = futures_util::future::join_all(get.iter().map(|cmd| link.query(cmd))).await;
        assert_eq!(sends(&link), 4);
        for (i, reply) in replies.into_iter().enumerate() {
            let reply = reply.unwrap().extract_error();
            if i == 7 {
                assert_eq!(reply.unwrap_err().code(), Some("WRONGTYPE"));
            } else {
                assert_eq!(redis::from_redis_value::<i64>(reply.unwrap()).unwrap(), i as i64);
            }
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_command_at_a_time_goes_straight_out() {
        let server = RedisServer::start().unwrap();
        let link = link(&server).await;
        for i in 0..5 {
            let reply = link.query(redis::cmd("INCR").arg("n")).await.unwrap();
            assert_eq!(reply, Value::Int(i + 1));
        }
        assert_eq!(sends(&link), 5);
        assert!(link.state.as_ref().unwrap().lock().unwrap().queue.is_none(), "no flush task was needed");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_dead_server_fails_every_command_of_the_batch() {
        let mut server = RedisServer::start().unwrap();
        let link = link(&server).await;
        server.kill();
        let cmds: Vec<Cmd> = (0..8).map(|_| redis::cmd("PING")).collect();
        let replies = futures_util::future::join_all(cmds.iter().map(|cmd| link.query(cmd))).await;
        assert!(replies.iter().all(Result::is_err), "{replies:?}");
    }
}
