//! [`MultiRedisStore`] and its [`SessionStore`] implementation: **the fan-out
//! rules**, all in this file.
//!
//! Backends keep their configured order. R = backends with `read`, W = with
//! `write`, D = with `delete` or `write`; *sources* = R backends not in W
//! (old servers being drained).
//!
//! | op | rule |
//! |---|---|
//! | `load` | Ask R in order; the first live record wins; when none has it and there are sources, ask the W backends once more (a move may have run between the reads). An error or an undecodable value does not stop the search, but if nothing is found after one, the result is `Err`, never "not found"; and after a W backend failed, only a W backend that every save reached (write policy `all`) may answer, never a source, whose copy may be older. |
//! | copy-on-read | When the winner is not in W: `SET NX PXAT` into every W backend (never overwrites); then check the source still holds the session (`Move`: delete it from the source) and undo the copy if it vanished meanwhile (a logout raced the copy). |
//! | `create` | `SET NX PXAT` on every W backend at once; on a collision undo this attempt's writes and draw a new id; any error undoes and fails. |
//! | `save` | `SET XX PXAT` on every W backend at once. Where it missed, and the session lives in a source (a not-yet-migrated session), write it there too (`SET NX`, then `SET XX` if a copy-on-read was faster); where it lives in no source, write nothing: no resurrection. |
//! | `delete` | `DEL` on every D backend at once; when there are sources, `DEL` again on every W backend once the first round is done. Any failure is an `Err` naming the backends. |
//!
//! Why the second round: every copy into a W backend (copy-on-read, or a
//! `save` filling a W backend that missed) is made from a *source*, which the
//! store never writes, and checks *after* writing that the source still holds
//! the session, undoing the copy otherwise. A copy that lands after the second
//! round started was written after the first round had removed the session
//! from the source, so its check undoes it; a copy that landed earlier is
//! removed by the second round. Either way a logout stays a logout, across
//! processes, without locks. (A W backend is never a witness: its copy may be
//! another request's copy about to be undone.)
//!
//! A copy and its check run in a task of their own (copy-on-read, and a
//! `save` filling W backends), so a request dropped mid-way, such as a
//! client that went away, cannot leave a copy behind unchecked.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use tokio::time::Instant;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::{SessionStore, session_store};
use tracing::Instrument;

use crate::backend::{BackendHealth, Counter, Deadline, Node, SetIf};
use crate::builder::MultiRedisStoreBuilder;
use crate::codec;
use crate::error::Error;
pub use crate::policy::{CopyOnRead, ReadPolicy, WritePolicy};

/// A [`SessionStore`] over an ordered list of Redis backends, each allowed to
/// `read`, `write` and/or `delete`.
///
/// Cheap to clone: clones share the connections.
///
/// ```no_run
/// use tower_sessions_multi_redis_store::{Backend, Modes, MultiRedisStore};
///
/// # async fn run() -> Result<(), tower_sessions_multi_redis_store::Error> {
/// let store = MultiRedisStore::builder()
///     .backend(Backend::url("new", "redis://127.0.0.1:6380/0"))
///     .backend(Backend::url("old", "redis://127.0.0.1:6379/1").modes(Modes::READ_DELETE))
///     .build()
///     .await?;
/// // let layer = tower_sessions::SessionManagerLayer::new(store);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MultiRedisStore {
    inner: Arc<Inner>,
}

/// The store-wide options the builder collects.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    pub(crate) copy_on_read: CopyOnRead,
    pub(crate) read_policy: ReadPolicy,
    pub(crate) write_policy: WritePolicy,
    pub(crate) deadline: Option<Duration>,
    pub(crate) create_attempts: usize,
}

pub(crate) struct Inner {
    pub(crate) nodes: Vec<Node>,
    /// R, in configured order.
    readers: Vec<usize>,
    /// W.
    writers: Vec<usize>,
    /// D (with `delete` or `write`).
    deleters: Vec<usize>,
    /// R without W: where not-yet-migrated sessions are copied from.
    sources: Vec<usize>,
    options: Options,
}

impl fmt::Debug for MultiRedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiRedisStore")
            .field("backends", &self.inner.nodes)
            .field("options", &self.inner.options)
            .finish()
    }
}

impl MultiRedisStore {
    /// Starts describing a store.
    pub fn builder() -> MultiRedisStoreBuilder {
        MultiRedisStoreBuilder::default()
    }

    /// Builds a store from a TOML or JSON file (chosen by extension); see
    /// [`Config`](crate::Config) for the shapes accepted.
    ///
    /// # Errors
    ///
    /// When the file cannot be read or parsed, or the configuration is invalid.
    pub async fn from_config_file(path: impl AsRef<Path>) -> Result<MultiRedisStore, Error> {
        crate::config::Config::from_file(path)?.into_builder()?.build().await
    }

    pub(crate) fn from_nodes(nodes: Vec<Node>, options: Options) -> MultiRedisStore {
        let select = |keep: fn(&Node) -> bool| -> Vec<usize> {
            nodes.iter().enumerate().filter(|(_, n)| keep(n)).map(|(i, _)| i).collect()
        };
        let readers = select(|n| n.modes.can_read());
        let writers = select(|n| n.modes.can_write());
        let deleters = select(|n| n.modes.can_delete());
        let sources = select(|n| n.modes.can_read() && !n.modes.can_write());
        MultiRedisStore { inner: Arc::new(Inner { nodes, readers, writers, deleters, sources, options }) }
    }

    /// The live backends, in configured order.
    pub(crate) fn nodes(&self) -> &[Node] {
        &self.inner.nodes
    }

    /// The backends' names and modes, in configured order.
    pub fn backends(&self) -> impl Iterator<Item = (&str, crate::Modes)> {
        self.inner.nodes.iter().map(|n| (n.name.as_str(), n.modes))
    }

    /// The copy-on-read policy.
    pub fn copy_on_read(&self) -> CopyOnRead {
        self.inner.options.copy_on_read
    }

    /// What the store saw of each backend, in configured order: up or down,
    /// circuit breaker, last error, counters. Sends nothing over the network,
    /// so it is cheap enough for every readiness probe.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use tower_sessions_multi_redis_store::{Backend, BreakerState, MultiRedisStore};
    ///
    /// let store = MultiRedisStore::builder().backend(Backend::url("main", "redis://127.0.0.1:1")).build().await.unwrap();
    /// let health = store.health();
    /// assert_eq!((health[0].name.as_str(), health[0].breaker), ("main", BreakerState::Closed));
    /// # });
    /// ```
    pub fn health(&self) -> Vec<BackendHealth> {
        self.inner.nodes.iter().map(Node::health).collect()
    }

    /// Whether the store can serve: some backend that reads and writes is up
    /// (see [`health`](Self::health)). For readiness probes.
    pub fn is_ready(&self) -> bool {
        self.inner.nodes.iter().any(|n| n.modes.can_read() && n.modes.can_write() && n.health().up)
    }

    fn nodes_at<'a>(&'a self, indices: &'a [usize]) -> impl Iterator<Item = &'a Node> + Clone {
        indices.iter().map(|&i| &self.inner.nodes[i])
    }

    /// Runs `f` on the backends at `indices` concurrently; each with its result.
    async fn fan_out<'a, T, F, Fut>(&'a self, indices: &'a [usize], f: F) -> Vec<(&'a Node, T)>
    where
        F: Fn(&'a Node) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        if let [only] = indices {
            let node = &self.inner.nodes[*only];
            return vec![(node, f(node).await)];
        }
        let nodes = self.nodes_at(indices);
        let results = join_all(nodes.clone().map(&f)).await;
        nodes.zip(results).collect()
    }

    /// When the current operation must be done by.
    fn deadline(&self) -> Deadline {
        self.inner.options.deadline.map(|d| Instant::now() + d)
    }

    /// `Err(Deadline)` once `deadline` has passed.
    fn check_deadline(&self, op: &'static str, deadline: Deadline) -> Result<(), Error> {
        match (deadline, self.inner.options.deadline) {
            (Some(at), Some(after)) if Instant::now() >= at => Err(Error::Deadline { op, after }),
            _ => Ok(()),
        }
    }

    /// `load`: see the module docs.
    async fn load_record(&self, id: &Id) -> Result<Option<Record>, Error> {
        let deadline = self.deadline();
        let mut failures = Vec::new();
        // A failed write backend may hold a newer copy than any later backend
        // except another write backend that every save reached.
        let mut writer_failed = false;
        for &index in &self.inner.readers {
            let node = &self.inner.nodes[index];
            if let Err(err) = self.check_deadline("load", deadline) {
                failures.push(err);
                break;
            }
            let (bytes, record) = match fetch(node, id, deadline).await {
                Ok(Some(found)) => found,
                Ok(None) => {
                    node.count(Counter::Miss);
                    continue;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "load: backend failed");
                    writer_failed |= node.modes.can_write();
                    failures.push(err);
                    if self.inner.options.read_policy == ReadPolicy::StopOnError {
                        break;
                    }
                    continue;
                }
            };
            node.count(Counter::Hit);
            let as_fresh = node.modes.can_write() && self.inner.options.write_policy == WritePolicy::All;
            if writer_failed && !as_fresh {
                // Serving this copy could undo the user's latest changes (or
                // restore a privilege a newer copy dropped): report the failure.
                tracing::warn!(backend = %node.name, "load: found only a possibly older copy; failing");
                break;
            }
            if !codec::is_live(&record) {
                // The key outlived its record (clock skew): authoritative "gone".
                tracing::debug!(backend = %node.name, "load: record expired");
                break;
            }
            if !node.modes.can_write() && self.inner.options.copy_on_read != CopyOnRead::Off {
                // In a task of its own: a load dropped mid-way (a client that
                // went away) must not leave a copy behind unchecked.
                let (store, id, pxat) = (self.clone(), *id, codec::expiry_millis(record.expiry_date));
                let copy = tokio::spawn(async move { store.copy_back(index, &id, &bytes, pxat, deadline).await });
                // The copy is best effort: its failures are logged, and the
                // record is served either way.
                let _ = copy.await;
            }
            return Ok(Some(record));
        }
        if failures.is_empty() && !self.inner.sources.is_empty() {
            // A move from a source into a write backend (the migrator, or
            // copy-on-read `move` elsewhere) may have run between our reads:
            // it writes the target before it deletes the source, so the write
            // backends now hold what the source no longer did.
            for node in self.nodes_at(&self.inner.readers).filter(|n| n.modes.can_write()) {
                match fetch(node, id, deadline).await {
                    Ok(Some((_, record))) if codec::is_live(&record) => {
                        node.count(Counter::Hit);
                        return Ok(Some(record));
                    }
                    Ok(Some(_)) => return Ok(None),
                    Ok(None) => {}
                    Err(err) => failures.push(err),
                }
            }
        }
        if failures.is_empty() { Ok(None) } else { Err(Error::from_failures(failures)) }
    }

    /// Copy-on-read of a record found in backend `source` (not in W) into every W backend.
    async fn copy_back(&self, source: usize, sid: &Id, bytes: &[u8], pxat: u64, deadline: Deadline) {
        let source = &self.inner.nodes[source];
        let write = Write { sid, bytes, pxat, deadline };
        let results = self.fan_out(&self.inner.writers, |w| write.on(w, SetIf::Absent)).await;
        let mut created = Vec::new();
        let mut complete = true;
        for (w, result) in results {
            match result {
                Ok(true) => created.push(w),
                Ok(false) => {}
                Err(err) => {
                    complete = false;
                    tracing::warn!(backend = %w.name, error = %err, "copy-on-read failed");
                }
            }
        }
        if created.is_empty() {
            // Every reachable W backend already had it: whoever wrote it checks.
            return;
        }
        // The check is never cut short by the deadline: an unchecked copy
        // could outlive a logout.
        let moving = self.inner.options.copy_on_read == CopyOnRead::Move && complete && source.modes.can_delete();
        let still_there = if moving { source.del(sid, None).await } else { source.exists(sid, None).await };
        if matches!(still_there, Ok(true)) {
            for w in &created {
                w.count(Counter::Copy);
            }
        } else {
            // The session left the source while we copied it: a logout raced
            // the copy, which would resurrect it (see "Why the second round").
            tracing::debug!(source = %source.name, "copy-on-read raced a delete; undoing the copy");
            undo(&created, sid).await;
        }
    }

    /// `create`: see the module docs.
    async fn create_record(&self, record: &mut Record) -> Result<(), Error> {
        let deadline = self.deadline();
        let any = self.inner.options.write_policy == WritePolicy::Any;
        for _ in 0..self.inner.options.create_attempts {
            self.check_deadline("create", deadline)?;
            let sid = record.id;
            let bytes = encode(record)?;
            let write = Write { sid: &sid, bytes: &bytes, pxat: codec::expiry_millis(record.expiry_date), deadline };
            let results = self.fan_out(&self.inner.writers, |w| write.on(w, SetIf::Absent)).await;
            let mut created = Vec::new();
            let mut failures = Vec::new();
            let mut collided = false;
            for (w, result) in results {
                match result {
                    Ok(true) => created.push(w),
                    Ok(false) => collided = true,
                    Err(err) => failures.push(err),
                }
            }
            if !collided && (failures.is_empty() || (any && !created.is_empty())) {
                for err in &failures {
                    tracing::warn!(error = %err, "create: a write backend failed (write policy `any`)");
                }
                return Ok(());
            }
            undo(&created, &sid).await;
            if !failures.is_empty() {
                return Err(Error::from_failures(failures));
            }
            tracing::debug!("create: session id already taken, drawing another");
            record.id = Id::default();
        }
        Err(Error::IdCollision { attempts: self.inner.options.create_attempts })
    }

    /// `save`: see the module docs.
    async fn save_record(&self, record: &Record) -> Result<(), Error> {
        let bytes = encode(record)?;
        let write = Write {
            sid: &record.id,
            bytes: &bytes,
            pxat: codec::expiry_millis(record.expiry_date),
            deadline: self.deadline(),
        };
        let results = self.fan_out(&self.inner.writers, |w| write.on(w, SetIf::Present)).await;
        let mut misses = Vec::new();
        let mut failures = Vec::new();
        let mut written = 0;
        for (&index, (_, result)) in self.inner.writers.iter().zip(results) {
            match result {
                Ok(true) => written += 1,
                Ok(false) => misses.push(index),
                Err(err) => failures.push(err),
            }
        }
        if !misses.is_empty() && !self.inner.sources.is_empty() {
            // In a task of its own: a save dropped mid-way must not leave a
            // filled copy behind unchecked.
            let (store, sid, pxat, deadline) = (self.clone(), record.id, write.pxat, write.deadline);
            let first_missed = self.inner.nodes[misses[0]].name.clone();
            let fill = tokio::spawn(async move {
                let mut failures = Vec::new();
                let write = Write { sid: &sid, bytes: &bytes, pxat, deadline };
                let written = store.save_missed(&misses, write, &mut failures).await;
                (written, failures)
            });
            match fill.await {
                Ok((filled, errors)) => {
                    written += filled;
                    failures.extend(errors);
                }
                // Only if it panicked or the runtime is shutting down: not a save.
                Err(err) => failures.push(Error::Redis {
                    backend: first_missed,
                    op: "SET NX",
                    source: redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "the task filling write backends ended",
                        err.to_string(),
                    )),
                }),
            }
        }
        let any = self.inner.options.write_policy == WritePolicy::Any;
        if failures.is_empty() || (any && written > 0) {
            for err in &failures {
                tracing::warn!(error = %err, "save: a write backend failed (write policy `any`)");
            }
            Ok(())
        } else {
            Err(Error::from_failures(failures))
        }
    }

    /// The part of `save` for W backends that missed the `SET XX`: fill them
    /// from a source that holds the session, or only update a copy that
    /// landed meanwhile. Returns how many of them now hold the saved record.
    async fn save_missed(&self, misses: &[usize], write: Write<'_>, failures: &mut Vec<Error>) -> usize {
        let misses: Vec<&Node> = misses.iter().map(|&i| &self.inner.nodes[i]).collect();
        let witnesses = self.sources_holding(write.sid, failures, write.deadline).await;
        if !witnesses.is_empty() {
            return self.fill(&misses, &witnesses, write, failures).await;
        }
        // In no source (logged out, expired, moved meanwhile, or only in
        // other W backends): creating it could resurrect it. A copy-on-read
        // may just have landed, though: update that one.
        let retries = join_all(misses.iter().map(|w| write.on(w, SetIf::Present))).await;
        let mut written = 0;
        for result in retries {
            match result {
                Ok(true) => written += 1,
                Ok(false) => {}
                Err(err) => failures.push(err),
            }
        }
        written
    }

    /// The sources that hold the session.
    async fn sources_holding<'a>(&'a self, sid: &Id, failures: &mut Vec<Error>, deadline: Deadline) -> Vec<&'a Node> {
        let found = self.fan_out(&self.inner.sources, |n| n.exists(sid, deadline)).await;
        let mut holding = Vec::new();
        for (node, result) in found {
            match result {
                Ok(true) => holding.push(node),
                Ok(false) => {}
                Err(err) => failures.push(err),
            }
        }
        holding
    }

    /// Writes a saved record into the W backends that missed it, then checks a
    /// witness still holds the session and undoes the writes if none does.
    /// Returns how many backends now hold the saved record.
    async fn fill(&self, targets: &[&Node], witnesses: &[&Node], write: Write<'_>, failures: &mut Vec<Error>) -> usize {
        let results = join_all(targets.iter().map(|w| async move {
            if write.on(w, SetIf::Absent).await? {
                return Ok(true);
            }
            // Someone (a copy-on-read) was faster, maybe with older data: ours wins.
            write.on(w, SetIf::Present).await.map(|_| false)
        }))
        .await;
        let mut created = Vec::new();
        let mut updated = 0;
        for (w, result) in targets.iter().zip(results) {
            match result {
                Ok(true) => created.push(*w),
                Ok(false) => updated += 1,
                Err(err) => failures.push(err),
            }
        }
        if created.is_empty() {
            return updated;
        }
        let checks = join_all(witnesses.iter().map(|n| n.exists(write.sid, None))).await;
        if checks.iter().any(|c| matches!(c, Ok(true))) {
            for w in &created {
                w.count(Counter::Copy);
            }
            updated + created.len()
        } else {
            // Gone from every witness (a logout raced the save), or a witness
            // could not answer: undo either way; the second case is a failure,
            // not a save that "succeeded" without being written.
            tracing::debug!("save could not confirm its copies; undoing them");
            undo(&created, write.sid).await;
            failures.extend(checks.into_iter().filter_map(Result::err));
            updated
        }
    }

    /// `delete`: see the module docs.
    async fn delete_record(&self, id: &Id) -> Result<(), Error> {
        let deadline = self.deadline();
        let mut failures = Vec::new();
        let rounds: &[&[usize]] = if self.inner.sources.is_empty() {
            &[&self.inner.deleters]
        } else {
            &[&self.inner.deleters, &self.inner.writers]
        };
        for round in rounds {
            let results = self.fan_out(round, |n| n.del(id, deadline)).await;
            failures.extend(results.into_iter().filter_map(|(_, r)| r.err()));
        }
        if failures.is_empty() { Ok(()) } else { Err(Error::from_failures(failures)) }
    }
}

/// One record's `SET ... PXAT`, encoded once for every backend it goes to.
#[derive(Clone, Copy)]
struct Write<'a> {
    sid: &'a Id,
    bytes: &'a [u8],
    pxat: u64,
    deadline: Deadline,
}

impl Write<'_> {
    /// The `SET` on `node`, `NX` or `XX`: whether it wrote.
    fn on<'s>(&'s self, node: &'s Node, cond: SetIf) -> impl std::future::Future<Output = Result<bool, Error>> + 's {
        node.set(self.sid, self.bytes, self.pxat, cond, self.deadline)
    }
}

/// `GET` and decode: the stored bytes and the record, if any. An undecodable
/// value is this backend's [`Error::Decode`].
async fn fetch(node: &Node, id: &Id, deadline: Deadline) -> Result<Option<(Vec<u8>, Record)>, Error> {
    let Some(bytes) = node.get(id, deadline).await? else { return Ok(None) };
    match codec::decode(&bytes) {
        Ok(record) => Ok(Some((bytes, record))),
        Err(err) => {
            node.count(Counter::Error);
            Err(Error::Decode { backend: node.name.clone(), reason: err.to_string() })
        }
    }
}

fn encode(record: &Record) -> Result<Vec<u8>, Error> {
    codec::encode(record).map_err(|err| Error::Encode(err.to_string()))
}

/// Best-effort removal of keys this operation created (never cut short).
async fn undo(created: &[&Node], sid: &Id) {
    for (node, result) in created.iter().zip(join_all(created.iter().map(|n| n.del(sid, None))).await) {
        if let Err(err) = result {
            tracing::warn!(backend = %node.name, error = %err, "could not undo a write");
        }
    }
}

/// Runs one store operation in a `session_store` span that records its outcome.
///
/// Not an `async fn`: that would hold `fut` twice (as an argument and inside
/// `Instrumented`), doubling the future tower-sessions boxes on every call.
/// When no subscriber wants the span, the future runs bare (entering and
/// leaving a disabled span on every poll was measurable per request).
fn traced<T>(
    op: &'static str,
    fut: impl std::future::Future<Output = Result<T, Error>>,
) -> impl std::future::Future<Output = session_store::Result<T>> {
    use futures_util::FutureExt;
    use futures_util::future::Either;
    let span = tracing::debug_span!("session_store", op, outcome = tracing::field::Empty);
    if span.is_disabled() {
        return Either::Left(fut.map(|result| Ok(result?)));
    }
    let outcome = span.clone();
    Either::Right(fut.instrument(span).map(move |result| {
        outcome.record("outcome", if result.is_ok() { "ok" } else { "error" });
        Ok(result?)
    }))
}

#[async_trait]
impl SessionStore for MultiRedisStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        traced("create", self.create_record(record)).await
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        traced("save", self.save_record(record)).await
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        traced("load", self.load_record(session_id)).await
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        traced("delete", self.delete_record(session_id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tower-sessions boxes the future of every `load` and `save`, and each
    /// `.await` level moves its child future by value; past ~1 KB, glibc's
    /// malloc leaves its per-thread cache for a slow path. The first profile
    /// of this store found 8 KB futures. Keep them small.
    #[tokio::test]
    async fn operation_futures_stay_small() {
        let store = MultiRedisStore::builder()
            .backend(crate::Backend::url("new", "redis://127.0.0.1:1"))
            .backend(crate::Backend::url("old", "redis://127.0.0.1:1").modes(crate::Modes::READ_DELETE))
            .build()
            .await
            .unwrap();
        let id = Id::default();
        let record = Record { id, data: Default::default(), expiry_date: time::OffsetDateTime::now_utc() };
        let sizes = [
            ("load", std::mem::size_of_val(&*store.load(&id))),
            ("save", std::mem::size_of_val(&*store.save(&record))),
            ("delete", std::mem::size_of_val(&*store.delete(&id))),
        ];
        for (op, size) in sizes {
            assert!(size <= 1024, "the future of `{op}` is {size} bytes");
        }
    }
}
