//! The bulk migrator: moves every live session from a source backend into the
//! target backends while the app keeps serving, with the same safety rules as
//! copy-on-read, plus [`Migrator::verify`]. The CLI is a thin shell over this.
//!
//! For each batch of keys from `SCAN <prefix>* COUNT n` on the source:
//!
//! 1. pipelined `GET`s; values that are not session records are counted and
//!    reported by key, never copied; expired records are skipped;
//! 2. per target, pipelined `SET NX PXAT <record expiry>`: a session written
//!    or updated on the target meanwhile is never overwritten;
//! 3. a copy this run created is checked against the source, as copy-on-read
//!    does: with `move`, `DEL` on the source (1 = moved; 0 = a logout raced
//!    the copy, which is then undone); without, `EXISTS`;
//! 4. with `move`, a session the targets already held (copied by the app's
//!    copy-on-read) is deleted from the source after a grace period, once the
//!    copy that app instance made has passed its own check.
//!
//! Memory stays bounded by the batch size (plus the grace queue, itself
//! bounded). The returned cursor resumes an interrupted run.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::join_all;
use redis::Value;
use serde::Serialize;
use tower_sessions_core::session::Id;

use crate::backend::Node;
use crate::codec;
use crate::error::Error;
use crate::store::MultiRedisStore;

/// The batch size used when none is given.
pub const DEFAULT_BATCH_SIZE: usize = 1000;

/// How many keys a report lists by name, per kind (counts are always complete).
pub const DEFAULT_MAX_LISTED: usize = 1000;

/// Most deferred source deletions kept in memory before the run waits.
const MAX_DEFERRED: usize = 100_000;

/// How a migration runs.
///
/// ```
/// use tower_sessions_multi_redis_store::MigrateOptions;
///
/// let options = MigrateOptions::default().move_sessions(true).batch_size(500).rate_limit(Some(20_000));
/// assert!(options.is_move());
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct MigrateOptions {
    batch_size: usize,
    dry_run: bool,
    move_sessions: bool,
    rate_limit: Option<u32>,
    cursor: u64,
    grace: Option<Duration>,
    max_listed: usize,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            batch_size: DEFAULT_BATCH_SIZE,
            dry_run: false,
            move_sessions: false,
            rate_limit: None,
            cursor: 0,
            grace: None,
            max_listed: DEFAULT_MAX_LISTED,
        }
    }
}

impl MigrateOptions {
    /// Keys per `SCAN` and per pipeline (default [`DEFAULT_BATCH_SIZE`]).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Read and compare only; write and delete nothing.
    pub fn dry_run(mut self, yes: bool) -> Self {
        self.dry_run = yes;
        self
    }

    /// Delete each session from the source once it is confirmed on every target.
    pub fn move_sessions(mut self, yes: bool) -> Self {
        self.move_sessions = yes;
        self
    }

    /// At most this many sessions per second (default: unlimited).
    pub fn rate_limit(mut self, per_second: Option<u32>) -> Self {
        self.rate_limit = per_second.filter(|r| *r > 0);
        self
    }

    /// Resume from a cursor a previous run reported (default 0: from the start).
    pub fn cursor(mut self, cursor: u64) -> Self {
        self.cursor = cursor;
        self
    }

    /// How long a session found already copied waits before it is deleted from
    /// the source (default: twice the longest command bound of the backends,
    /// which outlasts the check of a concurrent copy-on-read).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    /// How many keys a report lists by name, per kind.
    pub fn max_listed(mut self, n: usize) -> Self {
        self.max_listed = n;
        self
    }

    /// Whether sessions are deleted from the source.
    pub fn is_move(&self) -> bool {
        self.move_sessions
    }
}

/// Counts so far; passed to the progress callback after every batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Progress {
    /// Keys returned by `SCAN` under the source's prefix.
    pub scanned: u64,
    /// Sessions written to at least one target by this run (dry run: that would be).
    pub copied: u64,
    /// Sessions every target already held (never overwritten).
    pub already_present: u64,
    /// Sessions deleted from the source (`move`).
    pub removed_from_source: u64,
    /// Expired records, keys that vanished meanwhile (logouts), and keys
    /// under the prefix that are not session ids.
    pub skipped: u64,
    /// Values that are not session records (left in place, reported by key).
    pub corrupt: u64,
    /// Sessions a backend error kept from being copied or confirmed.
    pub failed: u64,
    /// Where a resumed run would start (0 once the scan is complete).
    pub cursor: u64,
}

/// A session that could not be migrated.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct KeyFailure {
    /// The source key.
    pub key: String,
    /// Why.
    pub reason: String,
}

/// The outcome of [`Migrator::run`].
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// Final counts; `progress.cursor` resumes an interrupted run.
    pub progress: Progress,
    /// Whether the whole source was scanned (false when interrupted).
    pub finished: bool,
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Keys whose values are not session records (at most `max_listed`).
    pub corrupt_keys: Vec<String>,
    /// Sessions that failed (at most `max_listed`).
    pub failures: Vec<KeyFailure>,
}

impl Report {
    /// Whether every session was handled: nothing corrupt, nothing failed.
    pub fn is_clean(&self) -> bool {
        self.progress.corrupt == 0 && self.progress.failed == 0
    }
}

/// The outcome of [`Migrator::verify`].
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Live sessions in the source.
    pub checked: u64,
    /// Of those, how many some target lacks.
    pub missing: u64,
    /// Of those, how many some target holds with other bytes (e.g. updated since).
    pub different: u64,
    /// Keys missing from a target (at most `max_listed`).
    pub missing_keys: Vec<String>,
    /// Keys that differ on a target (at most `max_listed`).
    pub different_keys: Vec<String>,
}

/// Moves sessions from one backend of a store into others.
///
/// ```no_run
/// use tower_sessions_multi_redis_store::{MigrateOptions, Migrator, MultiRedisStore};
///
/// # async fn run() -> Result<(), tower_sessions_multi_redis_store::Error> {
/// let store = MultiRedisStore::from_config_file("sessions.toml").await?;
/// // The one read+delete backend into the write backends.
/// let migrator = Migrator::for_store(&store, MigrateOptions::default().move_sessions(true))?;
/// let report = migrator
///     .run(|p| eprintln!("{} copied", p.copied), std::future::pending())
///     .await?;
/// assert!(report.finished && report.is_clean());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Migrator {
    store: MultiRedisStore,
    source: usize,
    targets: Vec<usize>,
    options: MigrateOptions,
}

impl Migrator {
    /// From `source` into `targets`, all named backends of `store`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when a name is unknown, the source is a target, or
    /// there is no target.
    pub fn new(
        store: &MultiRedisStore,
        source: &str,
        targets: &[&str],
        options: MigrateOptions,
    ) -> Result<Migrator, Error> {
        let index = |name: &str, field: &'static str| {
            store
                .nodes()
                .iter()
                .position(|n| n.name == name)
                .ok_or_else(|| Error::config(Some(name), field, "no backend of this name"))
        };
        let source = index(source, "from")?;
        let mut indices = Vec::new();
        for name in targets {
            let i = index(name, "to")?;
            if i == source {
                return Err(Error::config(Some(name), "to", "the source cannot be a target"));
            }
            if !indices.contains(&i) {
                indices.push(i);
            }
        }
        if indices.is_empty() {
            return Err(Error::config(None, "to", "no target backend"));
        }
        Ok(Migrator { store: store.clone(), source, targets: indices, options })
    }

    /// From the store's one source (a `read` backend that is not written)
    /// into its `write` backends: the migration its configuration describes.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] unless there is exactly one source.
    pub fn for_store(store: &MultiRedisStore, options: MigrateOptions) -> Result<Migrator, Error> {
        let nodes = store.nodes();
        let sources: Vec<&Node> = nodes.iter().filter(|n| n.modes.can_read() && !n.modes.can_write()).collect();
        let source = match sources.as_slice() {
            [one] => one.name.as_str(),
            [] => {
                return Err(Error::config(None, "from", "no read backend without write to migrate from; name one"));
            }
            _ => {
                return Err(Error::config(None, "from", "several read-only backends; name the one to migrate from"));
            }
        };
        let targets: Vec<&str> = nodes.iter().filter(|n| n.modes.can_write()).map(|n| n.name.as_str()).collect();
        Migrator::new(store, source, &targets, options)
    }

    /// The source backend's name.
    pub fn source(&self) -> &str {
        &self.store.nodes()[self.source].name
    }

    /// The target backends' names.
    pub fn targets(&self) -> Vec<&str> {
        self.targets.iter().map(|&i| self.store.nodes()[i].name.as_str()).collect()
    }

    fn source_node(&self) -> &Node {
        &self.store.nodes()[self.source]
    }

    fn target_nodes(&self) -> Vec<&Node> {
        self.targets.iter().map(|&i| &self.store.nodes()[i]).collect()
    }

    fn grace(&self) -> Duration {
        self.options
            .grace
            .unwrap_or_else(|| 2 * self.store.nodes().iter().map(Node::op_timeout).max().unwrap_or_default())
    }

    /// Runs until the source is fully scanned or `shutdown` completes (checked
    /// between batches). `on_progress` is called after every batch.
    ///
    /// # Errors
    ///
    /// Only when the source cannot be scanned; per-session problems are
    /// counted in the [`Report`].
    pub async fn run<P, S>(&self, mut on_progress: P, shutdown: S) -> Result<Report, Error>
    where
        P: FnMut(&Progress),
        S: Future<Output = ()>,
    {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut run = Run {
            report: Report {
                progress: Progress { cursor: self.options.cursor, ..Progress::default() },
                finished: false,
                dry_run: self.options.dry_run,
                corrupt_keys: Vec::new(),
                failures: Vec::new(),
            },
            deferred: VecDeque::new(),
            previous: HashSet::new(),
            max_listed: self.options.max_listed,
        };
        let started = Instant::now();
        // Two stages overlap: batch i+1 is scanned and read from the source
        // while batch i is written to the targets. The reported cursor is that
        // of the first batch not yet written, so a resumed run misses nothing.
        let mut read = Some(self.read(self.options.cursor).await?);
        while let Some(batch) = read.take() {
            let next = batch.next;
            run.absorb(&batch);
            let reading = async {
                match next {
                    0 => Ok(None),
                    cursor => self.read(cursor).await.map(Some),
                }
            };
            let writing = async {
                self.write(batch.live, &mut run).await;
                self.delete_due(&mut run, false).await;
            };
            let (next_batch, ()) = futures_util::future::join(reading, writing).await;
            run.report.progress.cursor = next;
            on_progress(&run.report.progress);
            if next == 0 {
                run.report.finished = true;
                break;
            }
            if shutdown.as_mut().now_or_never().is_some() {
                break; // the batch read ahead is dropped; the cursor still points at it
            }
            read = next_batch?;
            if let Some(rate) = self.options.rate_limit {
                let handled = run.report.progress.scanned as f64;
                let due = Duration::from_secs_f64(handled / f64::from(rate));
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        if run.report.finished {
            self.delete_due(&mut run, true).await;
            on_progress(&run.report.progress);
        }
        Ok(run.report)
    }

    /// The read stage: one `SCAN` and the values of its session keys.
    async fn read(&self, cursor: u64) -> Result<ReadBatch, Error> {
        let source = self.source_node();
        let (next, keys) = source.scan(cursor, self.options.batch_size).await?;
        let mut batch = ReadBatch { next, scanned: keys.len() as u64, ..ReadBatch::default() };
        let keys: Vec<String> =
            keys.into_iter().filter(|k| source.id_of(k).is_some_and(|id| Id::from_str(id).is_ok())).collect();
        batch.skipped = batch.scanned - keys.len() as u64; // not session ids
        if keys.is_empty() {
            return Ok(batch);
        }
        let ids = keys.iter().map(|k| source.id_of(k).unwrap_or_default());
        let values: Vec<Option<Vec<u8>>> = match batch_of(source, "GET", ids).await {
            Ok(values) => values,
            Err(err) => {
                batch.failed = keys.into_iter().map(|k| (k, err.to_string())).collect();
                return Ok(batch);
            }
        };
        let now = time::OffsetDateTime::now_utc();
        for (key, value) in keys.into_iter().zip(values) {
            let Some(bytes) = value else {
                batch.skipped += 1; // gone since SCAN
                continue;
            };
            match codec::decode_expiry(&bytes) {
                Err(_) => batch.corrupt.push(key),
                Ok(expiry) if expiry <= now => batch.skipped += 1,
                Ok(expiry) => {
                    let id = source.id_of(&key).unwrap_or_default().to_owned();
                    let pxat = codec::expiry_millis(expiry);
                    batch.live.push((key, id, bytes, pxat));
                }
            }
        }
        Ok(batch)
    }

    /// The write stage: copy a batch of live sessions, check, move.
    async fn write(&self, live: Vec<Live>, run: &mut Run) {
        if live.is_empty() {
            return;
        }
        if self.options.dry_run {
            return self.dry_run(&live, run).await;
        }

        // SET NX PXAT on every target, concurrently.
        let targets = self.target_nodes();
        let replies = join_all(targets.iter().map(|t| {
            let items = live
                .iter()
                .map(|(_, id, bytes, pxat)| {
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(t.key(id)).arg(bytes).arg("PXAT").arg(*pxat).arg("NX");
                    (t.member_of(id.as_str()), cmd)
                })
                .collect();
            t.batch("SET NX", items)
        }))
        .await;

        enum Check {
            Delete,
            Exists,
        }
        let mut checks = Vec::new(); // (live index, created on targets, check, failed)
        for (i, (key, id, ..)) in live.iter().enumerate() {
            let mut created = Vec::new();
            let mut held = 0;
            let mut error = None;
            for (t, reply) in replies.iter().enumerate() {
                match reply {
                    Ok(values) => match values.get(i) {
                        Some(Value::Nil) => held += 1,
                        Some(Value::ServerError(err)) => error = Some(format!("{}: {err:?}", targets[t].name)),
                        Some(_) => created.push(t),
                        None => error = Some(format!("{}: missing reply", targets[t].name)),
                    },
                    Err(err) => error = Some(err.to_string()),
                }
            }
            if let Some(reason) = &error {
                run.failure(key.clone(), reason.clone());
            }
            if !created.is_empty() {
                let check = if self.options.move_sessions && error.is_none() && held == 0 {
                    Check::Delete
                } else {
                    Check::Exists
                };
                checks.push((i, created, check, error.is_some()));
            } else if error.is_none() {
                if run.previous.contains(id) {
                    // SCAN returned it again (the table shrinks as we move);
                    // this run copied it in the previous batch.
                    run.report.progress.skipped += 1;
                } else {
                    run.report.progress.already_present += 1;
                    if self.options.move_sessions {
                        run.defer(id.clone(), self.grace());
                    }
                }
            }
        }
        run.previous = live.iter().map(|(_, id, ..)| id.clone()).collect();
        if checks.is_empty() {
            return;
        }

        // Check each copy against the source, as copy-on-read does.
        let source = self.source_node();
        let items = checks
            .iter()
            .map(|(i, _, check, _)| {
                let (key, id, ..) = &live[*i];
                let mut cmd = redis::cmd(if matches!(check, Check::Delete) { "DEL" } else { "EXISTS" });
                cmd.arg(key);
                (source.member_of(id.as_str()), cmd)
            })
            .collect();
        let found = source.batch("DEL/EXISTS", items).await.and_then(|v| typed::<u64>(source, "DEL/EXISTS", v));
        let found: Vec<u64> = match found {
            Ok(found) => found,
            Err(err) => {
                // The check's outcome is unknown. Where it was EXISTS the source
                // is untouched: undo the copy (a later run redoes it). Where it
                // was DEL the source may be gone already: keep the copy, or the
                // session could be lost. Both are reported as failed.
                let keys: Vec<String> = checks.iter().map(|(i, ..)| live[*i].0.clone()).collect();
                run.fail_all(&keys, &err);
                checks.iter_mut().for_each(|(.., failed)| *failed = true);
                checks.iter().map(|(_, _, check, _)| u64::from(matches!(check, Check::Delete))).collect()
            }
        };
        let mut undo: Vec<Vec<&str>> = vec![Vec::new(); targets.len()];
        for ((i, created, check, failed), found) in checks.iter().zip(found) {
            let (_, id, ..) = &live[*i];
            if found == 0 {
                // The source lost it while we copied: a logout. Undo.
                for t in created {
                    undo[*t].push(id);
                }
                if !failed {
                    run.report.progress.skipped += 1;
                }
            } else if !failed {
                run.report.progress.copied += 1;
                if matches!(check, Check::Delete) {
                    run.report.progress.removed_from_source += 1;
                }
            }
        }
        join_all(targets.iter().zip(undo).filter(|(_, ids)| !ids.is_empty()).map(|(t, ids)| async move {
            if let Err(err) = batch_of::<u64>(t, "DEL", ids.iter().copied()).await {
                tracing::warn!(error = %err, "migrate: could not undo copies that raced a logout");
            }
        }))
        .await;
    }

    /// Dry run: count what would be copied.
    async fn dry_run(&self, live: &[Live], run: &mut Run) {
        let targets = self.target_nodes();
        let replies =
            join_all(targets.iter().map(|t| batch_of::<u64>(t, "EXISTS", live.iter().map(|(_, id, ..)| id.as_str()))))
                .await;
        for (i, (key, ..)) in live.iter().enumerate() {
            let mut missing = false;
            for reply in &replies {
                match reply {
                    Ok(found) => missing |= found.get(i) == Some(&0),
                    Err(err) => {
                        run.failure(key.clone(), err.to_string());
                        missing = false;
                        break;
                    }
                }
            }
            if missing {
                run.report.progress.copied += 1;
            } else if replies.iter().all(Result::is_ok) {
                run.report.progress.already_present += 1;
            }
        }
    }

    /// Deletes from the source the sessions whose grace has passed (all of
    /// them, waiting as needed, when `all`), if every target still holds them.
    async fn delete_due(&self, run: &mut Run, all: bool) {
        loop {
            let now = Instant::now();
            let must_wait = all || run.deferred.len() > MAX_DEFERRED;
            let front = match run.deferred.front() {
                Some((due, _)) => *due,
                None => return,
            };
            if front > now {
                if !must_wait {
                    return;
                }
                tokio::time::sleep(front - now).await;
            }
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some((when, _)) = run.deferred.front() {
                if *when > now || due.len() >= self.options.batch_size {
                    break;
                }
                if let Some((_, id)) = run.deferred.pop_front() {
                    due.push(id);
                }
            }
            self.delete_from_source(&due, run).await;
        }
    }

    async fn delete_from_source(&self, ids: &[String], run: &mut Run) {
        let source = self.source_node();
        let targets = self.target_nodes();
        let replies =
            join_all(targets.iter().map(|t| batch_of::<u64>(t, "EXISTS", ids.iter().map(String::as_str)))).await;
        // Only where every target still holds it (else a later run retries).
        let confirmed: Vec<&str> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| replies.iter().all(|r| matches!(r, Ok(found) if found.get(*i) == Some(&1))))
            .map(|(_, id)| id.as_str())
            .collect();
        if confirmed.is_empty() {
            return;
        }
        match batch_of::<u64>(source, "DEL", confirmed).await {
            Ok(removed) => run.report.progress.removed_from_source += removed.iter().sum::<u64>(),
            Err(err) => {
                tracing::warn!(error = %err, "migrate: deleting copied sessions from the source failed; a later run retries")
            }
        }
    }

    /// Lists the live sessions of the source that a target lacks or holds
    /// with other bytes. Reads only.
    ///
    /// # Errors
    ///
    /// When a backend cannot be read.
    pub async fn verify(&self) -> Result<VerifyReport, Error> {
        let source = self.source_node();
        let targets = self.target_nodes();
        let mut report = VerifyReport::default();
        let mut cursor = 0;
        loop {
            let (next, keys) = source.scan(cursor, self.options.batch_size).await?;
            let ids: Vec<&str> =
                keys.iter().filter_map(|k| source.id_of(k)).filter(|id| Id::from_str(id).is_ok()).collect();
            if !ids.is_empty() {
                let here: Vec<Option<Vec<u8>>> = batch_of(source, "GET", ids.iter().copied()).await?;
                let mut there = Vec::new();
                for t in &targets {
                    there.push(batch_of::<Option<Vec<u8>>>(t, "GET", ids.iter().copied()).await?);
                }
                for (i, value) in here.iter().enumerate() {
                    let Some(bytes) = value else { continue };
                    if !codec::decode(bytes).is_ok_and(|r| codec::is_live(&r)) {
                        continue;
                    }
                    report.checked += 1;
                    let key = source.key(ids[i]);
                    if there.iter().any(|values| values[i].is_none()) {
                        report.missing += 1;
                        if report.missing_keys.len() < self.options.max_listed {
                            report.missing_keys.push(key);
                        }
                    } else if there.iter().any(|values| values[i].as_ref() != Some(bytes)) {
                        report.different += 1;
                        if report.different_keys.len() < self.options.max_listed {
                            report.different_keys.push(key);
                        }
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                return Ok(report);
            }
        }
    }
}

/// `name key` for each session id, routed to the member of `node` holding it.
fn per_id<'a>(node: &Node, name: &str, ids: impl IntoIterator<Item = &'a str>) -> Vec<(usize, redis::Cmd)> {
    ids.into_iter()
        .map(|id| {
            let mut cmd = redis::cmd(name);
            cmd.arg(node.key(id));
            (node.member_of(id), cmd)
        })
        .collect()
}

/// Replies as `T`; an error reply or one of another type fails the batch.
fn typed<T: redis::FromRedisValue>(node: &Node, op: &'static str, values: Vec<Value>) -> Result<Vec<T>, Error> {
    values
        .into_iter()
        .map(|v| {
            redis::from_redis_value(v).map_err(|e| Error::Redis {
                backend: node.name.clone(),
                op,
                source: redis::RedisError::from(e),
            })
        })
        .collect()
}

/// One batch of `name key` on `node` for these ids, as `T`s.
async fn batch_of<'a, T: redis::FromRedisValue>(
    node: &Node,
    op: &'static str,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<T>, Error> {
    let values = node.batch(op, per_id(node, op, ids)).await?;
    typed(node, op, values)
}

/// A live session read from the source: key, id, value, `PXAT`.
type Live = (String, String, Vec<u8>, u64);

/// What the read stage produced for one batch.
#[derive(Default)]
struct ReadBatch {
    /// The cursor after this batch.
    next: u64,
    scanned: u64,
    skipped: u64,
    corrupt: Vec<String>,
    failed: Vec<(String, String)>,
    live: Vec<Live>,
}

/// The state of one run.
struct Run {
    report: Report,
    /// Sessions to delete from the source once their grace has passed.
    deferred: VecDeque<(Instant, String)>,
    /// Ids of the batch written last (SCAN may return a key twice).
    previous: HashSet<String>,
    max_listed: usize,
}

impl Run {
    /// Counts what the read stage found.
    fn absorb(&mut self, batch: &ReadBatch) {
        self.report.progress.scanned += batch.scanned;
        self.report.progress.skipped += batch.skipped;
        for key in &batch.corrupt {
            self.corrupt(key.clone());
        }
        for (key, reason) in &batch.failed {
            self.failure(key.clone(), reason.clone());
        }
    }

    fn failure(&mut self, key: String, reason: String) {
        self.report.progress.failed += 1;
        if self.report.failures.len() < self.max_listed {
            self.report.failures.push(KeyFailure { key, reason });
        }
    }

    fn fail_all(&mut self, keys: &[String], err: &Error) {
        for key in keys {
            self.failure(key.clone(), err.to_string());
        }
    }

    fn corrupt(&mut self, key: String) {
        self.report.progress.corrupt += 1;
        if self.report.corrupt_keys.len() < self.max_listed {
            self.report.corrupt_keys.push(key);
        }
    }

    fn defer(&mut self, id: String, grace: Duration) {
        self.deferred.push_back((Instant::now() + grace, id));
    }
}
