//! [`MultiRedisStore`] and its [`SessionStore`] implementation: **the fan-out
//! rules**, all in this file.
//!
//! Backends keep their configured order. R = backends with `read`, W = with
//! `write`, D = with `delete` or `write`; *sources* = R backends not in W
//! (old servers being drained).
//!
//! | op | rule |
//! |---|---|
//! | `load` | Ask R in order; the first live record wins; when none has it and there are sources, ask the W backends once more (a move may have run between the reads). An error or an undecodable value does not stop the search, but if nothing is found after one, the result is `Err`, never "not found"; and after a W backend failed, no later backend may answer: its copy may be older (even another W backend's: an instance on another configuration may not write it). After a W backend *missed*, a later backend's record goes through copy-on-read's check (below), for the same reason: a tombstone in the one that missed means "not found". |
//! | copy-on-read | When the winner is a source: *copy* it into every W backend (`SET NX PXAT`, unless a logout left a tombstone there: never overwrites, never resurrects; with policy `Off`, only look for tombstones). A tombstone in any W backend: "not found" (a logout ran, and the source's copy is what its failed or pending `DEL` left); no W backend answering: `Err`. With `Move`, once every W backend holds it, `DEL` it from the source. Nothing is checked or undone afterwards. |
//! | `create` | `SET NX PXAT` on every W backend at once; on a collision undo this attempt's writes (its id is fresh: nobody else holds it) and draw a new id; any error undoes and fails. |
//! | `save` | `SET XX PXAT` on every W backend at once, refused by the server past the moment we stop waiting for it. Where it missed, and the session lives elsewhere (another W backend took the update, or a source holds it), *fill* those backends (`SET`, unless tombstoned, same deadline); where it lives nowhere, only `SET XX` again (a move may just have put it there): never create it. |
//! | `delete` | One round, at once: on every D backend, delete the session and leave a *tombstone* beside it in the same script (a backend this configuration only deletes from may be written by an instance on another configuration during a rolling deploy). Any failure is an `Err` naming the backends. |
//!
//! # Why this keeps a logout a logout, and loses nothing
//!
//! The invariants (DESIGN.md): I1 once `delete` returned Ok no load finds the
//! session; I2 once `save` returned Ok a later load sees it or a later save;
//! I3 a live session never loads as "not found"; I4 what a move removes from
//! a source every W backend holds; I5 a command that failed or timed out may
//! still run, at any later time.
//!
//! * **Only copies could bring a session back.** The store never writes a
//!   source, a `save` only overwrites (`XX`) what is there, and `create` uses
//!   fresh ids. Every other write into a W backend is a copy or a fill, and
//!   each is one script that writes nothing where a tombstone is
//!   (`scripts.rs`). A logout's script removes the session and leaves the
//!   tombstone atomically, on every backend it deletes from, so a copy lands
//!   either before it (and is removed by it) or after it (and is refused),
//!   whenever it was sent and however often it is retried. The tombstone
//!   lives [`tombstone_ttl`](crate::MultiRedisStoreBuilder::tombstone_ttl)
//!   (an hour by default), and every copy carries a deadline, on the
//!   server's clock, of half that after the session was read from its source
//!   (a fill: the save's own deadline, a socket timeout): the read came
//!   before the logout, so no copy can arrive after its tombstone is gone.
//!   (I1, I5)
//! * **Nothing is undone, so nothing newer is deleted.** A copy never has to
//!   be checked against its source and taken back: a copy whose outcome is
//!   unknown (timed out, connection killed) is harmless both ways, and may
//!   be retried. (I2, I5)
//! * **A move deletes the source last.** Copy-on-read `Move` and the
//!   migrator delete a session from a source only once every W backend
//!   answered that it holds it, so a lost or late `DEL` loses nothing; and a
//!   load that missed in W and then in the source asks W again, where the
//!   move put it before deleting it. (I3, I4)
//! * **A logout half done is not undone by the source.** A logout whose
//!   `DEL` on a source failed leaves the session's older copy there, while
//!   the W backends hold a tombstone: a load that finds a record in a source
//!   copies it (or, with `Off`, asks) and answers "not found" on a
//!   tombstone; it fails when no W backend answers, since one of them might
//!   hold one. The same holds for a record a W backend answers after an
//!   earlier W backend missed: during a rolling deploy another
//!   configuration may write (and log out of) the earlier one alone, so the
//!   later one's copy may be older, or logged out there; it is checked the
//!   same way (copied into the other W backends, never moved). (I1, I2)
//! * **Saves never go back.** A save that missed a W backend fills it with
//!   its own record (overwriting a copy, which is older); a copy never
//!   overwrites. A save that timed out could still run later (I5), after a
//!   later save through *another* connection (a paused or frozen server
//!   resumes a connection at a time), and undo it: so each save (and fill)
//!   carries the moment its sender stops waiting, on the server's clock,
//!   and the server refuses it after that (`scripts.rs`, "Write
//!   deadlines"). The session's value format, `tower-sessions-redis-store`'s,
//!   has no room for a version that would refuse it otherwise. With
//!   [`refuse_late_writes(false)`](crate::MultiRedisStoreBuilder::refuse_late_writes)
//!   this guard is off. (I2, I5)
//!
//! A copy runs on the request's own time: a request dropped mid-way leaves
//! either no copy or a final one, never one waiting for a check.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{join, join_all};
use tokio::time::Instant;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::{SessionStore, session_store};
use tracing::Instrument;

use crate::clock;
use crate::codec;
use crate::error::Error;
use crate::health::{BackendHealth, Counter};
use crate::node::{Copied, CopyMode, Deadline, Node};
use crate::policy::{CopyOnRead, ReadPolicy, WritePolicy};
use crate::users::{Cover, Users, unix_ms};

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
    pub(crate) refuse_late_writes: bool,
    pub(crate) tombstone_ttl: Duration,
}

pub(crate) struct Inner {
    pub(crate) nodes: Vec<Node>,
    /// R, in configured order.
    readers: Vec<usize>,
    /// W.
    writers: Vec<usize>,
    /// R without W: where not-yet-migrated sessions are copied from.
    sources: Vec<usize>,
    /// D (with `delete` or `write`).
    deleters: Vec<usize>,
    options: Options,
    /// The per-user index (`users.rs`), when configured.
    users: Option<Users>,
    /// This instance's announcement, once made (`announce.rs`): withdrawn
    /// when the store is dropped.
    pub(crate) announced: std::sync::OnceLock<String>,
    /// Held while [`is_ready`](MultiRedisStore::is_ready)'s background
    /// probe runs.
    probing: Arc<std::sync::atomic::AtomicBool>,
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
    pub(crate) fn from_nodes(nodes: Vec<Node>, options: Options, users: Option<Users>) -> MultiRedisStore {
        let select = |keep: fn(&Node) -> bool| -> Vec<usize> {
            nodes.iter().enumerate().filter(|(_, n)| keep(n)).map(|(i, _)| i).collect()
        };
        let readers = select(|n| n.modes.can_read());
        let writers = select(|n| n.modes.can_write());
        let sources = select(|n| n.modes.can_read() && !n.modes.can_write());
        let deleters = select(|n| n.modes.can_delete());
        let announced = std::sync::OnceLock::new();
        MultiRedisStore {
            inner: Arc::new(Inner {
                nodes,
                readers,
                writers,
                sources,
                deleters,
                options,
                users,
                announced,
                probing: Arc::default(),
            }),
        }
    }

    /// Records this instance's announcement id (`announce.rs`).
    pub(crate) fn announced_as(&self, id: String) {
        let _ = self.inner.announced.set(id);
    }

    pub(crate) fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    pub(crate) fn upgrade(weak: &std::sync::Weak<Inner>) -> Option<MultiRedisStore> {
        weak.upgrade().map(|inner| MultiRedisStore { inner })
    }

    /// The live backends, in configured order.
    pub(crate) fn nodes(&self) -> &[Node] {
        &self.inner.nodes
    }

    /// The store-wide settings.
    pub(crate) fn options(&self) -> &Options {
        &self.inner.options
    }

    /// The per-user index settings, when the store keeps one.
    pub(crate) fn users(&self) -> Option<&Users> {
        self.inner.users.as_ref()
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
    ///
    /// When the answer is no, and inside a Tokio runtime, it also `PING`s in
    /// the background the members of those backends whose last command
    /// failed, unless their circuit breaker is open (during its cool-down),
    /// one round at a time: an unready instance gets no requests (the load
    /// balancer stops routing to it), and without them nothing would find
    /// out that its backends are back. When the answer is yes, nothing is
    /// sent.
    pub fn is_ready(&self) -> bool {
        let serving = |n: &&Node| n.modes.can_read() && n.modes.can_write();
        let ready = self.inner.nodes.iter().filter(serving).any(|n| n.health().up);
        if !ready
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
            && let Some(busy) = crate::connection::busy::Busy::claim(&self.inner.probing)
        {
            let store = self.clone();
            runtime.spawn(async move {
                let _busy = busy;
                join_all(store.inner.nodes.iter().filter(serving).map(Node::probe)).await;
            });
        }
        ready
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

    /// Whether the first backend that reads and writes is among `failures`.
    /// Write policy `any` still needs it: `load` asks it first, and would
    /// serve its older copy (or miss a session created elsewhere).
    fn primary_failed(&self, failures: &[Error]) -> bool {
        let primary = self.nodes_at(&self.inner.readers).find(|n| n.modes.can_write());
        primary.is_some_and(|p| failures.iter().any(|e| e.backend() == Some(p.name.as_str())))
    }

    /// `load`: see the module docs.
    async fn load_record(&self, id: &Id) -> Result<Option<Record>, Error> {
        let deadline = self.deadline();
        let mut failures = Vec::new();
        // A failed write backend may hold a newer copy than any later backend.
        let mut writer_failed = false;
        // A write backend that missed may hold a logout's tombstone: an
        // instance on another configuration (a rolling deploy) may have
        // written, and then logged out of, that backend alone.
        let mut writer_missed = false;
        for &index in &self.inner.readers {
            let node = &self.inner.nodes[index];
            if let Err(err) = self.check_deadline("load", deadline) {
                failures.push(err);
                break;
            }
            // When a source is read: a copy of what it answers carries a
            // deadline counted from now (`scripts.rs`).
            let read_at = clock::now_ms();
            let (bytes, record) = match fetch(node, id, deadline).await {
                Ok(Some(found)) => found,
                Ok(None) => {
                    node.count(Counter::Miss);
                    writer_missed |= node.modes.can_write();
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
            // Not even another W backend: an instance on another configuration
            // (a rolling deploy) may write only the one that failed.
            if writer_failed {
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
            if !node.modes.can_write() || writer_missed {
                // Boxed: only a first touch pays for it, not every load's future.
                return Box::pin(self.found_in_source(index, id, &bytes, record, read_at, deadline)).await;
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

    /// A record found in backend `source` (not in W, or after a W backend
    /// missed), read at `read_at`: copy it into every other W backend,
    /// unless a logout left a tombstone there (with copy-on-read `off`, only
    /// look for tombstones); with `Move`, then delete it from a source that
    /// is not itself written once every W backend holds it.
    ///
    /// A tombstone in any W backend means a logout ran, and the source's copy
    /// is what it left behind (its `DEL` there failed, or is under way): the
    /// session is logged out, and this older copy is not served. A W backend
    /// that already held the session holds a copy or a newer save: that one
    /// is served (the source's may be older). When no W backend could
    /// answer, we cannot tell: fail rather than serve the source's copy.
    async fn found_in_source(
        &self,
        source: usize,
        sid: &Id,
        bytes: &[u8],
        record: Record,
        read_at: i64,
        deadline: Deadline,
    ) -> Result<Option<Record>, Error> {
        let writers: std::borrow::Cow<'_, [usize]> = if self.inner.writers.contains(&source) {
            self.inner.writers.iter().copied().filter(|&w| w != source).collect()
        } else {
            std::borrow::Cow::Borrowed(&self.inner.writers)
        };
        let source = &self.inner.nodes[source];
        let pxat = codec::expiry_millis(record.expiry_date);
        let policy = self.inner.options.copy_on_read;
        let mode = match policy {
            CopyOnRead::Off => CopyMode::Look,
            _ => CopyMode::CopyAndShow,
        };
        let results = self.fan_out(&writers, |w| w.copy(sid, bytes, pxat, read_at, mode, deadline)).await;
        let mut held_by_every_writer = true;
        let mut failures = Vec::new();
        let mut held = None; // a W backend's copy, where it differs from the source's
        for (w, result) in results {
            match result {
                Ok(Copied::Written) => w.count(Counter::Copy),
                Ok(Copied::Present(existing)) => {
                    // The first that `load` itself reads (W keeps read order):
                    // a write-only backend's copy may lag.
                    if held.is_none() && w.modes.can_read() && existing.as_deref().is_some_and(|e| e != bytes) {
                        held = existing.map(|e| (w, e));
                    }
                }
                Ok(Copied::Tombstoned) => {
                    tracing::debug!(backend = %w.name, "load: logged out (tombstone); the source's copy is stale");
                    return Ok(None);
                }
                Err(err) => {
                    held_by_every_writer = false;
                    tracing::warn!(backend = %w.name, error = %err, "copy-on-read failed");
                    failures.push(err);
                }
            }
        }
        if failures.len() == writers.len() {
            return Err(Error::from_failures(failures));
        }
        if let Some(user) = self.user_of(&record) {
            // The copy's index entry, after the copy (until it lands, the
            // source's index names the session: `users.rs`). Boxed: only stores that
            // index users pay for it.
            let writers: Vec<&Node> = self.nodes_at(&writers).collect();
            let write = Write { sid, bytes, pxat, deadline };
            match Box::pin(self.index("copy-on-read (index)", &user, &writers, write, false)).await {
                // Remembered only once the session is written everywhere
                // (`Look` writes nothing).
                Ok(indexed) if indexed.entries.len() == writers.len() => {
                    if held_by_every_writer && mode != CopyMode::Look {
                        self.remember(user, sid, &indexed);
                    }
                }
                // Not moved then: the source's index still names it.
                Ok(_) => held_by_every_writer = false,
                Err(err) => {
                    held_by_every_writer = false;
                    tracing::debug!(error = %err, "copy-on-read: not indexed everywhere for now");
                }
            }
        }
        let written = source.modes.can_write();
        if policy == CopyOnRead::Move && held_by_every_writer && source.modes.can_delete() && !written {
            // Every W backend holds the session now, so whether this DEL runs,
            // fails or runs late, nothing is lost.
            if let Err(err) = source.del(sid, deadline).await {
                tracing::debug!(error = %err, "copy-on-read move: the source keeps its copy for now");
            }
        }
        match held {
            Some((w, existing)) => match codec::decode(&existing) {
                Ok(record) if codec::is_live(&record) => Ok(Some(record)),
                Ok(_) => Ok(None),
                Err(err) => Err(Error::Decode { backend: w.name.clone(), reason: err.to_string() }),
            },
            None => Ok(Some(record)),
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
            let results = self.fan_out(&self.inner.writers, |w| write.create_on(w)).await;
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
            if !collided && (failures.is_empty() || (any && !created.is_empty() && !self.primary_failed(&failures))) {
                for err in &failures {
                    tracing::warn!(error = %err, "create: a write backend failed (write policy `any`)");
                }
                if let Some(user) = self.user_of(record) {
                    // Boxed: only stores that index users pay for it.
                    if let Err(err) = Box::pin(self.index_login(&user, &created, write)).await {
                        undo(&created, &sid).await;
                        return Err(err);
                    }
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
        // Before the session, so that no session is stored with a user or
        // an expiry its index does not cover (`users.rs`), unless this
        // instance's last index write covers it. Boxed: only a save that
        // writes the index pays for it.
        let mut then = None;
        let mut due = None;
        if let Some(users) = self.users()
            && let Some(user) = users.key.user_in(&record.data)
        {
            match users.cover(write.sid, &user, write.pxat) {
                Cover::No => then = Some(Then::Indexed(Box::pin(self.index_save(user.into_owned(), write)).await?)),
                Cover::Due => due = Some(user.into_owned()),
                Cover::Yes => {}
            }
        }
        // The save's own deadline counts from here (after any index write).
        let started = clock::now_ms();
        let results = match due {
            // A due tidy reads the index beside the session write, in the
            // same round trip: the entry already covers the save (as for any
            // covered save), so their order does not matter, and a read
            // costs the server less than an index write. Best effort.
            // Boxed: about once per user, instance and `prune_index_every`
            // (every save with zero, which pays for its strictness).
            Some(user) => {
                let (results, read) =
                    Box::pin(join(self.save_on_writers(&write), self.read_index(&user, write.deadline))).await;
                then = Some(Then::Read(Box::new((user, read))));
                results
            }
            None => self.save_on_writers(&write).await,
        };
        let mut tally = Tally::default();
        let mut missed = Vec::new();
        for (&index, (_, result)) in self.inner.writers.iter().zip(results) {
            match result {
                Ok(false) => missed.push(index),
                other => tally.add(other.map(|_| ())),
            }
        }
        // The session is in every W backend as this instance indexed it
        // only if every `SET XX` hit: else what it remembers may have been
        // pruned there (`users.rs`).
        let everywhere = missed.is_empty() && tally.failures.is_empty();
        if !everywhere && let Some(users) = self.users() {
            users.forget(write.sid);
        }
        if !missed.is_empty() || then.is_some() {
            // Boxed: rare (a session not in every W backend yet, about once
            // per session lifetime and instance, or per user, instance and
            // `prune_index_every`; every save with zero), and large.
            Box::pin(async move {
                if !missed.is_empty() {
                    self.save_missed(&missed, write, record, started, &mut tally).await;
                }
                match then {
                    Some(Then::Indexed(indexed)) => self.after_index_save(*indexed, write, everywhere).await,
                    Some(Then::Read(due_read)) => {
                        let (user, read) = *due_read;
                        // Unless every W backend answered that it missed (a
                        // logout won): a failed write may have landed.
                        let maybe_written = tally.done > 0 || !tally.failures.is_empty();
                        self.after_due_read(user, read, write, maybe_written, everywhere).await;
                    }
                    None => {}
                }
                self.accept("save", tally)
            })
            .await
        } else {
            self.accept("save", tally)
        }
    }

    /// The index write of a save that this instance's memory does not
    /// cover, or whose due read found its own entry lost: the user, and
    /// what the index write returned.
    async fn index_save(&self, user: String, write: Write<'_>) -> Result<Box<(String, Indexed<'_>)>, Error> {
        let writers: Vec<&Node> = self.nodes_at(&self.inner.writers).collect();
        // The other entries only to prune them.
        let others = self.inner.options.refuse_late_writes;
        let indexed = self.index("save (index)", &user, &writers, write, others).await?;
        Ok(Box::new((user, indexed)))
    }

    /// `user`'s index on every W backend, read.
    async fn read_index(&self, user: &str, deadline: Deadline) -> Read<'_> {
        self.fan_out(&self.inner.writers, |w| w.index_entries(user, deadline)).await
    }

    /// After a due save's [`read_index`](Self::read_index): tidies the
    /// user's other entries. Where the save's own entry is missing, or
    /// scored below the session's expiry (an index write lost in a
    /// failover, say: the entry would leave before its session), and the
    /// session `maybe_written` somewhere, writes the index again first, as a
    /// save this instance's memory does not cover does (remembered only
    /// when written `everywhere`), and tidies what that write returns.
    async fn after_due_read(
        &self,
        user: String,
        read: Read<'_>,
        write: Write<'_>,
        maybe_written: bool,
        everywhere: bool,
    ) {
        let own = write.sid.to_string();
        let (indexed, lost) = entries_read(read, Some((&own, write.pxat)));
        if lost && maybe_written {
            match self.index_save(user, write).await {
                Ok(found) => self.after_index_save(*found, write, everywhere).await,
                Err(err) => tracing::debug!(error = %err, "save: the session's lost index entry is not written now"),
            }
        } else {
            self.tidy(&user, indexed, 0, write.deadline).await;
        }
    }

    /// A save's `SET XX` on every W backend (`false`: missed there).
    fn save_on_writers<'a>(
        &'a self,
        write: &'a Write<'a>,
    ) -> impl std::future::Future<Output = Vec<(&'a Node, Result<bool, Error>)>> + 'a {
        self.fan_out(&self.inner.writers, move |w| w.save(write.sid, write.bytes, write.pxat, write.deadline))
    }

    /// After a save that wrote the index: remembers it when the session
    /// was written `everywhere`, and tidies the user's other entries.
    async fn after_index_save(&self, (user, indexed): (String, Indexed<'_>), write: Write<'_>, everywhere: bool) {
        if everywhere {
            self.remember(user.clone(), write.sid, &indexed);
        }
        self.tidy(&user, indexed.entries, 0, write.deadline).await;
    }

    /// Remembers that this instance indexed session `sid` for `user` on
    /// every W backend: its saves up to the score need no index write.
    /// Called only once the session write that goes with the index write
    /// succeeded on every W backend too.
    fn remember(&self, user: String, sid: &Id, indexed: &Indexed<'_>) {
        if indexed.entries.len() == self.inner.writers.len()
            && let Some(users) = self.users()
        {
            users.remember(*sid, user, indexed.score);
        }
    }

    /// Whether a write done on `tally.done` backends and failed on the
    /// others succeeded, by the write policy.
    fn accept(&self, op: &'static str, tally: Tally) -> Result<(), Error> {
        let any = self.inner.options.write_policy == WritePolicy::Any;
        if tally.failures.is_empty() || (any && tally.done > 0 && !self.primary_failed(&tally.failures)) {
            for err in &tally.failures {
                tracing::warn!(error = %err, "{op}: a write backend failed (write policy `any`)");
            }
            Ok(())
        } else {
            Err(Error::from_failures(tally.failures))
        }
    }

    /// Adds the session of `write` to `user`'s index on `nodes`
    /// (`users.rs`), by the write policy; with `others`, the entries each
    /// returned (the user's other sessions there, to [`tidy`](Self::tidy)).
    async fn index<'a>(
        &self,
        op: &'static str,
        user: &str,
        nodes: &[&'a Node],
        write: Write<'_>,
        others: bool,
    ) -> Result<Indexed<'a>, Error> {
        let score = Users::score(write.pxat);
        let results = join_all(nodes.iter().map(|n| n.index(user, write.sid, score, others, write.deadline))).await;
        let mut tally = Tally::default();
        let mut indexed = Vec::with_capacity(nodes.len());
        for (node, result) in nodes.iter().zip(results) {
            match result {
                Ok(entries) => {
                    tally.done += 1;
                    indexed.push((*node, entries));
                }
                Err(err) => tally.failures.push(err),
            }
        }
        self.accept(op, tally)?;
        Ok(Indexed { score, entries: indexed })
    }

    /// A login's index entries, on the W backends that created its session,
    /// and the cap: past it, the user's sessions that expire first are
    /// logged out.
    async fn index_login(&self, user: &str, created: &[&Node], write: Write<'_>) -> Result<(), Error> {
        let cap = self.users().map_or(0, |u| u.cap) as usize;
        let others = self.inner.options.refuse_late_writes || cap > 0;
        let indexed = self.index("create (index)", user, created, write, others).await?;
        self.remember(user.to_owned(), write.sid, &indexed);
        self.tidy(user, indexed.entries, cap, write.deadline).await;
        Ok(())
    }

    /// After an index write of `user` (a login, or a save that wrote the
    /// index), a due save's read of it, or a logout with
    /// `prune_index_every` zero: drops, on each node, the entries it
    /// returned whose session is gone there, and for a login past `cap` (0:
    /// no cap), logs out the sessions that expire first. Best effort, within
    /// the operation's `deadline`: what fails waits for the user's next
    /// tidy, or for the entries' scores to pass.
    async fn tidy(&self, user: &str, mut indexed: Entries<'_>, cap: usize, deadline: Deadline) {
        let mut evict = std::collections::BTreeSet::new();
        // When the first of the other live sessions expires, if every W
        // backend was tidied: the user's saves through this instance tidy
        // again then.
        let mut due = (indexed.len() == self.inner.writers.len()).then_some(None);
        if self.check_deadline("tidy", deadline).is_err() {
            // Past the operation's deadline: the user's next tidy.
            due = None;
            indexed.clear();
        }
        // The nodes at once: a tidy adds round trips to the user's request.
        let tidied =
            join_all(indexed.into_iter().map(|(node, entries)| self.tidy_on(node, user, entries, cap, deadline)));
        for result in tidied.await {
            match result {
                Ok((ids, first)) => {
                    evict.extend(ids);
                    due = due.map(|due: Option<u64>| due.into_iter().chain(first).min());
                }
                Err(err) => {
                    due = None;
                    if cap > 0 {
                        tracing::warn!(error = %err, "create: the cap is not checked on this backend now");
                    } else {
                        tracing::debug!(error = %err, "the user's index is not pruned on this backend now");
                    }
                }
            }
        }
        if let Some(users) = self.users() {
            users.tidied(user, due);
        }
        let evict: Vec<String> = evict.into_iter().collect();
        if !evict.is_empty()
            && let Err(err) = self.log_out(user, &evict).await
        {
            tracing::warn!(error = %err, "create: the user's oldest sessions past the cap stay for now");
        }
    }

    /// [`tidy`](Self::tidy) on one node: prunes the `entries` whose session
    /// is not there and has no tombstone there, and returns the sessions past `cap` (0: none), those
    /// that expire first, leaving the cap's worth with the login's own.
    ///
    /// Why pruning is safe though an index write and its session's write
    /// are two commands: whatever makes a session exist where it did not
    /// (a login, copy-on-read, a save's fill, the migrator) writes its
    /// entry *after* the session, and every index write changes the
    /// entry's score. [`Node::prune`] removes an entry only if its score is
    /// still the one read here, before `PTTL` found the session missing. So
    /// a session written there after that `PTTL` has its entry written after
    /// too: before the prune (the score changed, the entry stays) or after
    /// it (the entry is back).
    async fn tidy_on(
        &self,
        node: &Node,
        user: &str,
        entries: Vec<(String, u64)>,
        cap: usize,
        deadline: Deadline,
    ) -> Result<(Vec<String>, Option<u64>), Error> {
        if entries.is_empty() {
            return Ok((Vec::new(), None));
        }
        let ttls: Vec<i64> = node.per_session("PTTL", entries.iter().map(|(id, _)| id.as_str()), deadline).await?;
        let mut live = Vec::new();
        let mut gone = Vec::new();
        // Without write deadlines a fill may land any time after its entry
        // was written: nothing is pruned then.
        let prune = self.inner.options.refuse_late_writes;
        for (ttl, entry) in ttls.into_iter().zip(entries) {
            match ttl {
                -2 if prune => gone.push(entry),
                -2 => {}
                // A key without an expiry is no session of ours.
                -1 => {}
                ttl => live.push((ttl, entry.0)),
            }
        }
        if let Err(err) = self.prune_gone(node, user, gone, deadline).await {
            // The cap is still applied.
            tracing::debug!(error = %err, "the user's index is not pruned on this backend now");
        }
        live.sort();
        // The login's own session counts too.
        let over = if cap == 0 { 0 } else { (live.len() + 1).saturating_sub(cap) };
        // The first to expire of those that stay.
        let first = live.get(over).map(|&(ttl, _)| unix_ms().saturating_add(ttl.unsigned_abs()));
        Ok((live.into_iter().take(over).map(|(_, id)| id).collect(), first))
    }

    /// Prunes from `user`'s index on `node` the `gone` entries (their
    /// session is not there) that have no tombstone there. A session logged
    /// out here whose entry is still here: its logout may not be done
    /// everywhere yet (a revoke that failed half-way keeps its entries, to
    /// find them when run again, and this one may be the only entry naming
    /// a session still in a source). `unindex` removes it once the logout
    /// is done everywhere; else it goes when the tombstone did, or its
    /// score passed. Each round trip only within the operation's deadline
    /// (a command sent past it would count against a healthy backend).
    async fn prune_gone(
        &self,
        node: &Node,
        user: &str,
        gone: Vec<(String, u64)>,
        deadline: Deadline,
    ) -> Result<(), Error> {
        let in_time = || self.check_deadline("tidy", deadline).is_ok();
        if gone.is_empty() || !in_time() {
            return Ok(());
        }
        let tombstoned = node.tombstoned(gone.iter().map(|(id, _)| id.as_str()), deadline).await?;
        if !in_time() {
            return Ok(());
        }
        let gone: Vec<_> =
            gone.into_iter().zip(tombstoned).filter_map(|(entry, logged_out)| (!logged_out).then_some(entry)).collect();
        node.prune(user, &gone, deadline).await
    }

    /// The part of `save` for the W backends whose `SET XX` missed.
    async fn save_missed(&self, missed: &[usize], write: Write<'_>, record: &Record, started: i64, tally: &mut Tally) {
        // Where the session lives elsewhere (a W backend took the update, or
        // a source holds it), write it into these too, unless a logout left
        // a tombstone there.
        let mut alive = tally.done > 0;
        if !alive {
            let found = self.fan_out(&self.inner.sources, |n| n.exists(write.sid, write.deadline)).await;
            for (_, result) in found {
                match result {
                    Ok(there) => alive |= there,
                    Err(err) => tally.failures.push(err),
                }
            }
        }
        let (sid, bytes, pxat, deadline) = (write.sid, write.bytes, write.pxat, write.deadline);
        let results = if alive {
            self.fan_out(missed, |w| w.fill(sid, bytes, pxat, started, deadline)).await
        } else {
            // In no source either: logged out, expired, or just moved into
            // the W backends (a move writes them before it deletes the
            // source, so a copy is there by now): update such a copy only.
            let saved = self.fan_out(missed, |w| w.save(sid, bytes, pxat, deadline)).await;
            let copied = |there| if there { Copied::Present(None) } else { Copied::Tombstoned };
            saved.into_iter().map(|(w, result)| (w, result.map(copied))).collect()
        };
        let mut created = Vec::new();
        let mut unknown = Vec::new();
        for (w, result) in results {
            match result {
                Ok(Copied::Present(_)) => tally.done += 1,
                Ok(Copied::Written) => created.push(w),
                // Tombstoned, or nowhere: a logout won. Nothing to write.
                Ok(Copied::Tombstoned) => {}
                Err(err) => {
                    // A fill may have written; an update of a copy never creates one.
                    if alive {
                        unknown.push(w);
                    }
                    tally.failures.push(err);
                }
            }
        }
        let Some(user) = self.user_of(record) else {
            tally.done += created.len();
            return;
        };
        // Where the fill created the session, or may have, its entry again,
        // after it: a tidy may have pruned the one written before the save,
        // finding the session missing (`tidy_on`). A fill that failed may
        // still be on its way (a dropped connection answers at once): wait
        // until its write deadline passed, when it ran or never will
        // (`scripts.rs`). Only with write deadlines: without, nothing is
        // pruned.
        // A fill's deadline is also never later than the operation's.
        if self.inner.options.refuse_late_writes
            && let Some(settled) = unknown.iter().map(|w| w.fill_settled_at(started)).max()
        {
            let wait = u64::try_from(settled.saturating_sub(clock::now_ms())).unwrap_or(0);
            let until = tokio::time::Instant::now() + Duration::from_millis(wait);
            tokio::time::sleep_until(deadline.map_or(until, |at| at.min(until))).await;
        }
        let score = Users::score(pxat);
        // The operation's deadline may have passed for those: their own bound.
        let targets = created.iter().map(|w| (w, deadline)).chain(unknown.iter().map(|w| (w, None)));
        let indexed = join_all(targets.map(|(w, bound)| w.index(&user, sid, score, false, bound))).await;
        // Those that failed count as failures already.
        for result in indexed.into_iter().take(created.len()) {
            tally.add(result.map(|_| ()));
        }
    }

    /// The user a record belongs to, when the store indexes users.
    pub(crate) fn user_of(&self, record: &Record) -> Option<String> {
        self.users()?.key.user_of(&record.data)
    }

    /// Logs out the sessions `ids` of `user`, then removes them from the
    /// user's index: not before, so that a revoke that fails half-way still
    /// finds them next time.
    pub(crate) async fn log_out(&self, user: &str, ids: &[String]) -> Result<(), Error> {
        let mut failures = Vec::new();
        // A bounded number at once: a user may have thousands of sessions.
        for chunk in ids.chunks(64) {
            let results = join_all(chunk.iter().map(|id| async move {
                match id.parse::<Id>() {
                    Ok(sid) => self.logout_everywhere(&sid, false, self.deadline()).await.map(|_| ()),
                    // Not a session id: nothing to log out, only to forget.
                    Err(_) => Ok(()),
                }
            }))
            .await;
            failures.extend(results.into_iter().filter_map(Result::err));
        }
        if !failures.is_empty() {
            return Err(Error::from_failures(failures));
        }
        self.unindex(user, ids).await;
        Ok(())
    }

    /// `delete`: see the module docs. With the per-user index, the
    /// session's entry goes too, once the logout is done everywhere (a
    /// revoke that failed half-way must find the session again when run
    /// again); the logout's script hands back the value that names the user.
    pub(crate) async fn delete_record(&self, id: &Id) -> Result<(), Error> {
        let deadline = self.deadline();
        let value = self.logout_everywhere(id, self.inner.users.is_some(), deadline).await?;
        if let Some(user) = value.and_then(|v| codec::decode(&v).ok()).and_then(|record| self.user_of(&record)) {
            // Boxed: only stores that index users pay for it.
            Box::pin(async {
                self.unindex(&user, &[id.to_string()]).await;
                if self.users().is_some_and(Users::tidies_every_write) {
                    self.tidy_after_logout(&user, deadline).await;
                }
            })
            .await;
        }
        Ok(())
    }

    /// With `prune_index_every` zero, a logout prunes the user's other
    /// entries on the W backends too, as a login or a save does: it reads
    /// them, then tidies (`tidy_on` has why that is safe). Best effort.
    async fn tidy_after_logout(&self, user: &str, deadline: Deadline) {
        if self.check_deadline("tidy", deadline).is_err() {
            return;
        }
        let (indexed, _) = entries_read(self.read_index(user, deadline).await, None);
        self.tidy(user, indexed, 0, deadline).await;
    }

    /// The logout of session `id` on every D backend, at once; with
    /// `want_value`, the session's value one of them held.
    async fn logout_everywhere(&self, id: &Id, want_value: bool, deadline: Deadline) -> Result<Option<Vec<u8>>, Error> {
        let results = self.fan_out(&self.inner.deleters, |n| n.logout(id, want_value, deadline)).await;
        let mut failures = Vec::new();
        let mut value = None;
        for (_, result) in results {
            match result {
                Ok(found) => value = value.or(found),
                Err(err) => failures.push(err),
            }
        }
        if failures.is_empty() { Ok(value) } else { Err(Error::from_failures(failures)) }
    }

    /// Removes logged-out sessions from `user`'s index on every D backend;
    /// what fails stays until the entries' scores pass.
    async fn unindex(&self, user: &str, ids: &[String]) {
        let removed = join_all(self.nodes_at(&self.inner.deleters).map(|n| n.index_remove(user, ids, None))).await;
        for err in removed.into_iter().filter_map(Result::err) {
            tracing::debug!(error = %err, "the index entries stay until their scores pass");
        }
    }
}

/// What an index write did: the score it wrote, and for each backend where
/// it succeeded, the user's other entries there (id, score).
struct Indexed<'a> {
    score: u64,
    entries: Entries<'a>,
}

/// A user's other index entries (id, score) on each backend that answered.
type Entries<'a> = Vec<(&'a Node, Vec<(String, u64)>)>;

/// What a save of an indexed user does after its session write: boxed,
/// since most saves need neither.
enum Then<'a> {
    /// Its index write, sent before the session's (not covered by this
    /// instance's memory): remember it, and tidy.
    Indexed(Box<(String, Indexed<'a>)>),
    /// Its read of the index, sent beside the session's (its tidy is due):
    /// tidy, or write a lost entry again.
    Read(Box<(String, Read<'a>)>),
}

/// A user's index read on each W backend: its entries (id, score) there.
type Read<'a> = Vec<(&'a Node, Result<Vec<(String, u64)>, Error>)>;

/// The entries a [`Read`] found, but session `own`'s, per backend that
/// answered, as [`Indexed`] holds them (to tidy); and whether `own` (id,
/// expiry) was missing from one of them, or scored below its expiry.
fn entries_read<'a>(read: Read<'a>, own: Option<(&str, u64)>) -> (Entries<'a>, bool) {
    let mut lost = false;
    let mut indexed = Vec::with_capacity(read.len());
    let except = own.map(|(id, _)| id);
    for (node, result) in read {
        match result {
            Ok(entries) => {
                lost |= own.is_some_and(|(own, pxat)| !entries.iter().any(|(id, score)| id == own && *score >= pxat));
                indexed.push((node, entries.into_iter().filter(|(id, _)| Some(id.as_str()) != except).collect()));
            }
            Err(err) => tracing::debug!(error = %err, "the user's index is not tidied on this backend now"),
        }
    }
    (indexed, lost)
}

/// Successes and failures of one fan-out.
#[derive(Default)]
struct Tally {
    /// Backends that did what was asked.
    done: usize,
    failures: Vec<Error>,
}

impl Tally {
    fn add(&mut self, result: Result<(), Error>) {
        match result {
            Ok(()) => self.done += 1,
            Err(err) => self.failures.push(err),
        }
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
    /// `create`'s `SET NX` on `node`: whether it wrote.
    fn create_on<'s>(&'s self, node: &'s Node) -> impl std::future::Future<Output = Result<bool, Error>> + 's {
        node.set_new(self.sid, self.bytes, self.pxat, self.deadline)
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

/// Removes what a failed `create` attempt wrote. Only for `create`: the id
/// is freshly drawn, so nobody else can hold it (a write whose outcome is
/// unknown and lands later leaves a session nobody has the id of, which
/// expires).
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
    /// malloc leaves its per-thread cache for a slow path. Keep them small.
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
