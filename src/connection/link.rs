//! One server's connection: a reconnecting `ConnectionManager` that writes
//! the commands of concurrent requests together (automatic pipelining).
//!
//! redis-rs writes each command as soon as it is queued, so many requests in
//! flight on one connection cost one `writev` (and, with `TCP_NODELAY`, one
//! packet and one wake-up of the server) per command. Here the first command
//! of a batch spawns a flush task that yields once, letting every request
//! that is ready to run queue its command, then sends the whole batch as one
//! pipeline. Nothing waits for a timer or for earlier replies: a batch is
//! sent as soon as the runtime gets back to the flush task, and the next batch
//! starts while this one is in flight. With one request at a time, a batch is
//! one command.
//!
//! Each command keeps its own reply, server errors included; a connection
//! error or timeout is every command's error. The flush runs in its own task,
//! so a request dropped mid-way (a client that went away) never strands the
//! commands queued with it.

use std::sync::{Arc, Mutex, PoisonError};

use redis::aio::ConnectionManager;
use redis::{Cmd, Pipeline, RedisResult, Value};
use tokio::sync::oneshot;

/// The commands queued for the next batch.
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
    /// The next batch; `None` when no flush task is pending.
    next: Arc<Mutex<Option<Batch>>>,
    /// Batches sent, for the tests.
    #[cfg(test)]
    batches: Arc<std::sync::atomic::AtomicUsize>,
}

impl Link {
    pub(crate) fn new(manager: ConnectionManager) -> Link {
        Link {
            manager,
            next: Arc::new(Mutex::new(None)),
            #[cfg(test)]
            batches: Arc::default(),
        }
    }

    /// The connection itself, for a caller's own pipelines (sent as they are).
    pub(crate) fn manager(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// Sends one command along with the others queued at this moment, and
    /// reads its reply.
    pub(crate) async fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
        let (reply, receiver) = oneshot::channel();
        let first = {
            let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
            let first = next.is_none();
            let batch = next.get_or_insert_with(Batch::new);
            batch.pipe.add_command(cmd.clone());
            batch.waiters.push(reply);
            first
        };
        if first {
            #[cfg(test)]
            self.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(flush(self.manager.clone(), self.next.clone()));
        }
        match receiver.await {
            Ok(reply) => reply,
            // Only if the runtime shut down under the flush task.
            Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "the batch was dropped unsent"))),
        }
    }
}

/// Lets every ready request queue its command, then sends the batch.
async fn flush(mut manager: ConnectionManager, next: Arc<Mutex<Option<Batch>>>) {
    tokio::task::yield_now().await;
    let Some(batch) = next.lock().unwrap_or_else(PoisonError::into_inner).take() else { return };
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
    use std::sync::atomic::Ordering;

    async fn link(server: &RedisServer) -> Link {
        let client = server.client().unwrap();
        Link::new(client.get_connection_manager().await.unwrap())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn commands_queued_together_go_in_one_batch_each_with_its_reply() {
        let server = RedisServer::start().unwrap();
        let link = link(&server).await;
        let set: Vec<Cmd> = (0..64).map(|i| redis::cmd("SET").arg(format!("k{i}")).arg(i).clone()).collect();
        let replies = futures_util::future::join_all(set.iter().map(|cmd| link.query(cmd))).await;
        assert!(replies.iter().all(|r| matches!(r, Ok(Value::Okay))), "{replies:?}");
        assert_eq!(link.batches.load(Ordering::Relaxed), 1, "64 commands queued in one poll, one batch");

        // Mixed with a server error: each reply is its own command's.
        let _: () = redis::cmd("RPUSH").arg("list").arg("x").query_async(&mut link.manager()).await.unwrap();
        let mut get: Vec<Cmd> = (0..64).map(|i| redis::cmd("GET").arg(format!("k{i}")).clone()).collect();
        get[7] = redis::cmd("GET").arg("list").clone();
        let replies = futures_util::future::join_all(get.iter().map(|cmd| link.query(cmd))).await;
        assert_eq!(link.batches.load(Ordering::Relaxed), 2);
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
    async fn one_command_at_a_time_is_a_batch_of_one() {
        let server = RedisServer::start().unwrap();
        let link = link(&server).await;
        for i in 0..5 {
            let reply = link.query(redis::cmd("INCR").arg("n")).await.unwrap();
            assert_eq!(reply, Value::Int(i + 1));
        }
        assert_eq!(link.batches.load(Ordering::Relaxed), 5);
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
