//! One server's connection: a reconnecting `ConnectionManager` that, with
//! [`Backend::auto_pipeline`](crate::Backend::auto_pipeline) (the default),
//! writes the commands of concurrent requests together once the connection
//! is busy.
//!
//! redis-rs hands each command to its connection task as it comes, and under
//! tokio's multi-thread scheduler that task usually runs at once, so many
//! requests in flight on one connection cost one `writev` (and, with
//! `TCP_NODELAY`, one packet and one wake-up of the server) per command.
//!
//! The rule here: a command goes out at once when nothing is in flight.
//! Otherwise it joins the next batch, which is sent, as one pipeline, as soon
//! as one of these holds:
//! * it holds at least a third as many commands as are in flight (when a
//!   command joins it, or when answers shrink what is in flight);
//! * the runtime has run the other tasks that were ready when the batch was
//!   started (a flush task spawned with the batch yields once, then sends it
//!   whatever its size).
//!
//! The first keeps a busy client and the server both at work: under load the
//! commands settle into a few batches that take turns, some being served
//! while the client prepares the next. The second bounds the wait to one
//! turn of the scheduler, so across a slow link nothing waits for a round
//! trip. Nothing waits for a timer. (Other rules were measured too:
//! `BENCHMARKS.md`.)
//!
//! Each command keeps its own reply, server errors included; a connection
//! error or timeout is every command's error of that batch.
//!
//! A link for writes that wait for replicas ([`Link::waiting`]) ends every
//! send, a lone command or a batch, with `WAIT`: one `WAIT` covers every
//! write before it on the connection, so under load a batch of writes costs
//! one replication round trip, not one each (a group commit). A reply is the
//! command's own once enough replicas acknowledged it, else an error for
//! every command of that send. Batches are sent
//! from a task of their own, so a request dropped mid-way (a client that went
//! away) never strands the commands queued with it.

use std::sync::{Arc, Mutex, PoisonError};

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisResult, Value};
use tokio::sync::oneshot;

use super::renewing::Renewing;
use super::replication::{Wait, acknowledged, end_with_wait};

/// What is in flight and what waits.
#[derive(Default)]
struct State {
    /// Commands written and not answered yet (on their own or in batches).
    in_flight: usize,
    /// One send in flight at a time (a link whose sends end with `WAIT`:
    /// the server runs them one after the other anyway, each waiting for
    /// the replicas, so the fewer and larger the better).
    one_at_a_time: bool,
    /// The next batch.
    queue: Option<Batch>,
    /// Batches started so far: tells a batch's idle flush whether the queue
    /// is still its batch.
    started: u64,
    /// Writes so far (direct commands and batches), for the tests.
    #[cfg(test)]
    sends: usize,
}

impl State {
    /// The queued batch, when it is due: once it holds a third as many
    /// commands as are in flight (so a few batches of about equal size take
    /// turns, some on the server while the client prepares the next), or when
    /// nothing is in flight. Counts it as in flight.
    fn due(&mut self) -> Option<Batch> {
        let len = self.queue.as_ref().map_or(0, |b| b.waiters.len());
        if len == 0 || 3 * len < self.in_flight || (self.one_at_a_time && self.in_flight > 0) {
            return None;
        }
        self.take()
    }

    /// The queued batch, counted as in flight.
    fn take(&mut self) -> Option<Batch> {
        let batch = self.queue.take()?;
        self.in_flight += batch.waiters.len();
        #[cfg(test)]
        {
            self.sends += 1;
        }
        Some(batch)
    }

    /// `count` commands in flight were answered (or dropped): the batch
    /// that is due now, if any.
    fn answered(&mut self, count: usize) -> Option<Batch> {
        self.in_flight -= count;
        self.due()
    }
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

/// What a link's connection must do: a [`Renewing`] `ConnectionManager` (one
/// server) or a `MultiplexedConnection` (a Sentinel's master).
pub(crate) trait Conn: ConnectionLike + Clone + Send + Sync + 'static {}
impl<C: ConnectionLike + Clone + Send + Sync + 'static> Conn for C {}

/// A connection to one server.
pub(crate) struct Link<C: Conn = Renewing> {
    manager: C,
    /// A second link for writes that wait for replicas (`WAIT` holds up
    /// every later command of its connection), when the backend waits.
    writes: Option<Box<Link<C>>>,
    /// Replicas every send waits for, and for how long (ms): a writes link.
    wait: Option<Wait>,
    /// With automatic pipelining.
    state: Option<Arc<Mutex<State>>>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts a direct command as answered once it is (or its request is
/// dropped), and sends the queued batch if that made it due.
struct DirectGuard<'a, C: Conn> {
    link: &'a Link<C>,
    state: &'a Arc<Mutex<State>>,
}

impl<C: Conn> Drop for DirectGuard<'_, C> {
    fn drop(&mut self) {
        let next = lock(self.state).answered(1);
        if let Some(batch) = next {
            start_flush(self.link.manager.clone(), self.link.wait, self.state.clone(), batch);
        }
    }
}

impl<C: Conn> Link<C> {
    pub(crate) fn new(manager: C, auto_pipeline: bool) -> Link<C> {
        Link { manager, writes: None, wait: None, state: auto_pipeline.then(Arc::default) }
    }

    /// A link for writes acknowledged once `replicas` replicas hold them
    /// (`WAIT replicas millis` ends each send; see the module docs). Always
    /// pipelining: that is what lets one `WAIT` cover many writes.
    pub(crate) fn waiting(manager: C, wait: Wait) -> Link<C> {
        let state = State { one_at_a_time: true, ..State::default() };
        Link { manager, writes: None, wait: Some(wait), state: Some(Arc::new(Mutex::new(state))) }
    }

    /// With `writes` carrying the writes that wait for replicas.
    pub(crate) fn with_writes(mut self, writes: Link<C>) -> Link<C> {
        self.writes = Some(Box::new(writes));
        self
    }

    /// The link for writes that wait for replicas, when the backend waits.
    pub(crate) fn writes(&self) -> Option<&Link<C>> {
        self.writes.as_deref()
    }

    /// The connection itself, for a caller's own pipelines (sent as they are).
    pub(crate) fn manager(&self) -> C {
        self.manager.clone()
    }

    /// Sends one command, at once when nothing is in flight, else in the
    /// next batch; reads its reply (on a [`waiting`](Self::waiting) link,
    /// once the replicas acknowledged it).
    pub(crate) async fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
        let Some(shared) = &self.state else {
            return send(self.manager.clone(), self.wait, cmd).await;
        };
        let receiver = {
            let mut state = lock(shared);
            if state.in_flight == 0 && state.queue.is_none() {
                state.in_flight += 1;
                #[cfg(test)]
                {
                    state.sends += 1;
                }
                None
            } else {
                let (reply, receiver) = oneshot::channel();
                if state.queue.is_none() && !state.one_at_a_time {
                    state.started += 1;
                    // Outside a runtime there is no idle flush; the batch
                    // still leaves when answers make it due.
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        let (manager, wait) = (self.manager.clone(), self.wait);
                        runtime.spawn(flush_when_idle(manager, wait, shared.clone(), state.started));
                    }
                }
                let batch = state.queue.get_or_insert_with(Batch::new);
                batch.pipe.add_command(cmd.clone());
                batch.waiters.push(reply);
                if let Some(batch) = state.due() {
                    drop(state);
                    start_flush(self.manager.clone(), self.wait, shared.clone(), batch);
                }
                Some(receiver)
            }
        };
        let Some(receiver) = receiver else {
            let _answered = DirectGuard { link: self, state: shared };
            return send(self.manager.clone(), self.wait, cmd).await;
        };
        match receiver.await {
            Ok(reply) => reply,
            // Only if the runtime shut down before the batch was sent.
            Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "the batch was dropped unsent"))),
        }
    }
}

/// One command, straight to the connection (followed by `WAIT` with
/// `wait`). Boxed: redis-rs's future is over 1 KB, and every `.await` level
/// above would move it by value (the store's own futures stay small; see
/// `operation_futures_stay_small`).
async fn send<C: Conn>(mut manager: C, wait: Option<Wait>, cmd: &Cmd) -> RedisResult<Value> {
    Box::pin(async move {
        let Some(wait) = wait else {
            return manager.req_packed_command(cmd).await;
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors().add_command(cmd.clone());
        end_with_wait(&mut pipe, wait);
        let replies = acknowledged(manager.req_packed_commands(&pipe, 0, 2).await?, wait)?;
        replies.into_iter().next().ok_or_else(|| mismatch(0, 1))
    })
    .await
}

fn mismatch(got: usize, count: usize) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "pipeline reply count mismatch",
        format!("{got} replies for {count} commands"),
    ))
}

/// Sends `batch` from a task of its own, so that no request's drop can
/// strand the commands queued with it.
fn start_flush<C: Conn>(manager: C, wait: Option<Wait>, state: Arc<Mutex<State>>, batch: Batch) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(flush(manager, wait, state, batch));
        }
        // Dropped outside a runtime (it is shutting down): nothing can be
        // sent any more. The waiters see their batch dropped unsent.
        Err(_) => {
            let mut state = lock(&state);
            let mut count = batch.waiters.len();
            while let Some(next) = state.answered(count) {
                count = next.waiters.len();
            }
        }
    }
}

/// Lets the tasks that were ready run (they may add to the batch), then
/// sends batch number `started` if it is still waiting.
async fn flush_when_idle<C: Conn>(manager: C, wait: Option<Wait>, state: Arc<Mutex<State>>, started: u64) {
    tokio::task::yield_now().await;
    let batch = {
        let mut state = lock(&state);
        if state.started != started {
            return;
        }
        state.take()
    };
    if let Some(batch) = batch {
        flush(manager, wait, state, batch).await;
    }
}

/// Counts a sent batch as answered when dropped unanswered (its task was
/// cancelled, or its runtime shut down), and sends the batch that made due:
/// without it the count would stay up, and a link that waits for an empty
/// connection before sending would hold its queue for ever.
struct Sent<C: Conn> {
    state: Arc<Mutex<State>>,
    count: usize,
    manager: C,
    wait: Option<Wait>,
    armed: bool,
}

impl<C: Conn> Drop for Sent<C> {
    fn drop(&mut self) {
        if self.armed
            && let Some(next) = lock(&self.state).answered(self.count)
        {
            start_flush(self.manager.clone(), self.wait, self.state.clone(), next);
        }
    }
}

/// Sends `batch` (ended by one `WAIT` with `wait`), then each next batch
/// that its answer makes due.
async fn flush<C: Conn>(mut manager: C, wait: Option<Wait>, state: Arc<Mutex<State>>, mut batch: Batch) {
    loop {
        let count = batch.waiters.len();
        let mut sent = Sent { state: state.clone(), count, manager: manager.clone(), wait, armed: true };
        if let Some(wait) = wait {
            end_with_wait(&mut batch.pipe, wait);
        }
        let commands = count + usize::from(wait.is_some());
        let replies = manager.req_packed_commands(&batch.pipe, 0, commands).await.and_then(|replies| {
            if replies.len() != commands {
                return Err(mismatch(replies.len(), commands));
            }
            match wait {
                Some(wait) => acknowledged(replies, wait),
                None => Ok(replies),
            }
        });
        match replies {
            Ok(replies) => {
                for (waiter, reply) in batch.waiters.into_iter().zip(replies) {
                    let _ = waiter.send(Ok(reply));
                }
            }
            Err(err) => {
                for waiter in batch.waiters {
                    let _ = waiter.send(Err(err.clone()));
                }
            }
        }
        sent.armed = false;
        let next = lock(&state).answered(count);
        match next {
            Some(next) => batch = next,
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::RedisServer;

    fn sends<C: Conn>(link: &Link<C>) -> usize {
        link.state.as_ref().unwrap().lock().unwrap().sends
    }

    async fn link(server: &RedisServer) -> Link {
        let client = server.client().unwrap();
        let config = redis::aio::ConnectionManagerConfig::new();
        Link::new(Renewing::new(client, config).unwrap(), true)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn commands_queued_together_go_in_one_batch_each_with_its_reply() {
        let server = RedisServer::start().unwrap();
        let link = link(&server).await;
        let set: Vec<Cmd> = (0..64).map(|i| redis::cmd("SET").arg(format!("k{i}")).arg(i).clone()).collect();
        let replies = futures_util::future::join_all(set.iter().map(|cmd| link.query(cmd))).await;
        assert!(replies.iter().all(|r| matches!(r, Ok(Value::Okay))), "{replies:?}");
        // 64 commands in one poll, before any answer: the first went straight
        // out, then each batch left once it held a third as many commands as
        // were in flight (1, 1, 1, 2, 2, 3, 4, 5, 7, 9, 12, 16).
        assert_eq!(sends(&link), 13, "one direct command and twelve batches");

        // Mixed with a server error: each reply is its own command's.
        let _: () = redis::cmd("RPUSH").arg("list").arg("x").query_async(&mut link.manager()).await.unwrap();
        let mut get: Vec<Cmd> = (0..64).map(|i| redis::cmd("GET").arg(format!("k{i}")).clone()).collect();
        get[7] = redis::cmd("GET").arg("list").clone();
        let replies = futures_util::future::join_all(get.iter().map(|cmd| link.query(cmd))).await;
        assert_eq!(sends(&link), 26);
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
        let state = link.state.as_ref().unwrap().lock().unwrap();
        assert!(state.queue.is_none() && state.in_flight == 0, "nothing queued, nothing left in flight");
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

    #[tokio::test(flavor = "current_thread")]
    async fn requests_dropped_mid_way_leave_nothing_in_flight() {
        use futures_util::FutureExt;

        let server = RedisServer::start().unwrap();
        let link = link(&server).await;
        let cmds: Vec<Cmd> = (0..64).map(|i| redis::cmd("SET").arg(format!("d{i}")).arg(i).clone()).collect();
        // One poll, then every request is dropped: the direct one mid-way,
        // the queued ones with their batches already handed to tasks.
        assert!(futures_util::future::join_all(cmds.iter().map(|cmd| link.query(cmd))).now_or_never().is_none());
        // The batches still go out and are counted as answered.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let idle = {
                let state = link.state.as_ref().unwrap().lock().unwrap();
                state.in_flight == 0 && state.queue.is_none()
            };
            if idle {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "commands stuck in flight");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let sent = sends(&link);
        assert_eq!(link.query(redis::cmd("GET").arg("d63")).await.unwrap(), Value::BulkString(b"63".to_vec()));
        assert_eq!(sends(&link), sent + 1, "an idle connection again: the next command goes straight out");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_leaves_once_the_ready_tasks_ran_without_waiting_for_answers() {
        let server = RedisServer::start().unwrap();
        let link = Arc::new(link(&server).await);
        // The server answers nothing for a while (less than the connection's
        // 500 ms response timeout); what the client sends meanwhile shows.
        let _: () = redis::cmd("CLIENT")
            .arg(&["PAUSE", "250", "ALL"])
            .query_async(&mut server.client().unwrap().get_multiplexed_async_connection().await.unwrap())
            .await
            .unwrap();
        let requests = tokio::spawn({
            let link = link.clone();
            async move {
                let cmds: Vec<Cmd> = (0..5).map(|i| redis::cmd("SET").arg(format!("p{i}")).arg(i).clone()).collect();
                futures_util::future::join_all(cmds.iter().map(|cmd| link.query(cmd))).await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // One direct, three batches of one (each due at once), and the fifth,
        // not due against the four in flight, sent by its idle flush.
        assert_eq!(sends(&link), 5, "the last batch left before any answer");
        let replies = requests.await.unwrap();
        assert!(replies.iter().all(|r| matches!(r, Ok(Value::Okay))), "{replies:?}");
    }

    /// Group commit: concurrent writes on a waiting link go out as one
    /// direct command and then one batch, each ended by a `WAIT`; without a
    /// replica every write is an error.
    #[tokio::test(flavor = "current_thread")]
    async fn a_waiting_link_sends_one_wait_per_batch_and_refuses_unreplicated_writes() {
        let master = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]).unwrap();
        let lonely = Link::waiting(master.client().unwrap().get_connection_manager().await.unwrap(), (1, 20));
        let err = lonely.query(redis::cmd("SET").arg("k").arg(1)).await.unwrap_err();
        assert!(super::super::replication::is_not_replicated(&err), "{err}");

        let port = master.port().to_string();
        let _replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).unwrap();
        let link = Link::waiting(master.client().unwrap().get_connection_manager().await.unwrap(), (1, 1000));
        let probe = redis::cmd("SET").arg("probe").arg(1).clone();
        for _ in 0..200 {
            if link.query(&probe).await.is_ok() {
                break;
            }
        }
        let before = sends(&link);
        let set: Vec<Cmd> = (0..64).map(|i| redis::cmd("SET").arg(format!("k{i}")).arg(i).clone()).collect();
        let replies = futures_util::future::join_all(set.iter().map(|cmd| link.query(cmd))).await;
        assert!(replies.iter().all(|r| matches!(r, Ok(Value::Okay))), "{replies:?}");
        assert_eq!(sends(&link) - before, 2, "one direct command, then the other 63 in one batch");
    }
}
