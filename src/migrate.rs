//! The bulk migrator: moves every live session from a source backend into the
//! target backends while the app keeps serving, with the same safety rules as
//! copy-on-read, plus [`Migrator::verify`]. The CLI is a thin shell over this.
//!
//! For each batch of keys from `SCAN <prefix>* COUNT n` on the source:
//!
//! 1. pipelined `GET`s; values that are not session records are counted and
//!    reported by key, never copied; expired records are skipped;
//! 2. per target, pipelined copies as copy-on-read makes them: `SET NX PXAT
//!    <record expiry>` unless a logout left a tombstone there (see
//!    `scripts.rs`), so a session written or updated on the target
//!    meanwhile is never overwritten, and one logged out is never brought
//!    back, however late the copy lands;
//! 3. with `move`, one pipelined `DEL` on the source of the sessions every
//!    target now holds (or that a logout tombstoned: the move finishes a
//!    logout that failed on the source). Nothing is checked or undone: a copy is final, so a
//!    `DEL` whose reply is lost, or a batch that timed out, loses nothing and
//!    is reported as failed; a later run redoes it.
//!
//! Memory stays bounded by the batch size. The returned cursor resumes an
//! interrupted run.

use std::collections::HashSet;
use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::Either;
use futures_util::future::join_all;
use redis::Value;
use serde::Serialize;
use tower_sessions_core::session::Id;

use crate::LiveConfiguration;
use crate::codec;
use crate::connection::Walk;
use crate::error::Error;
use crate::keys;
use crate::node::{Copied, Node};
use crate::store::MultiRedisStore;
use crate::users::Users;

/// The batch size used when none is given.
pub const DEFAULT_BATCH_SIZE: usize = 1000;

/// How often a move looks again at what app instances run
/// ([`Options::stop_on_hazard`]): two round trips per backend it deletes
/// from, against a batch's thousands of commands.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// How many keys a report lists by name, per kind (counts are always complete).
pub const DEFAULT_MAX_LISTED: usize = 1000;

/// How a migration runs.
///
/// ```
/// use tower_sessions_multi_redis_store::migrate::Options;
///
/// let options = Options::default().move_sessions(true).batch_size(500).rate_limit(Some(20_000));
/// assert!(options.is_move());
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Options {
    batch_size: usize,
    dry_run: bool,
    move_sessions: bool,
    rate_limit: Option<u32>,
    cursor: u64,
    max_listed: usize,
    stop_on_hazard: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch_size: DEFAULT_BATCH_SIZE,
            dry_run: false,
            move_sessions: false,
            rate_limit: None,
            cursor: 0,
            max_listed: DEFAULT_MAX_LISTED,
            stop_on_hazard: false,
        }
    }
}

impl Options {
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

    /// At most this many keys per second scanned from the source (default:
    /// unlimited): its sessions, and any other key under its prefix (the
    /// store's own keys, tombstones and indexes, are not counted).
    pub fn rate_limit(mut self, per_second: Option<u32>) -> Self {
        self.rate_limit = per_second.filter(|r| *r > 0);
        self
    }

    /// Resume from a cursor a previous run reported (default 0: from the
    /// start). A `SCAN` cursor means something only to the server process
    /// that handed it out: if the source restarted or failed over since,
    /// start from 0 instead (a rerun overwrites nothing; within one run the
    /// migrator notices and walks that server again by itself).
    pub fn cursor(mut self, cursor: u64) -> Self {
        self.cursor = cursor;
        self
    }

    /// How many keys a report lists by name, per kind.
    pub fn max_listed(mut self, n: usize) -> Self {
        self.max_listed = n;
        self
    }

    /// With [`move_sessions`](Self::move_sessions): look again at what app
    /// instances run before each batch (at most once a second; an instance
    /// announces itself as soon as its store is built) while the move runs,
    /// and stop it ([`Report::stopped_by`], the cursor at the
    /// first batch not written) once [`Migrator::hazards`] finds one: an
    /// instance of an earlier step started meanwhile (a rollback, a
    /// straggler of the deploy), whose saves the move would delete. Checking
    /// before the run is the caller's (the CLI does both unless `--force`).
    /// A look that fails is tried again at the next batch.
    ///
    /// ```
    /// use tower_sessions_multi_redis_store::migrate::Options;
    ///
    /// let options = Options::default().move_sessions(true).stop_on_hazard(true);
    /// assert!(options.is_move());
    /// ```
    pub fn stop_on_hazard(mut self, yes: bool) -> Self {
        self.stop_on_hazard = yes;
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
    /// How often the source's walk started over because a server restarted
    /// or failed over mid-run (a `SCAN` cursor means nothing to another
    /// process): the keys seen again are counted again. A run resumed with
    /// [`Options::cursor`] after such a restart cannot tell: start it from 0.
    pub scan_restarts: u64,
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
    /// Why the run stopped before the end of the scan, when the source could
    /// not be scanned mid-way (`progress.cursor` resumes it).
    pub stopped_by: Option<String>,
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

/// The outcome of [`Migrator::repair`].
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct RepairReport {
    /// Sessions found in the target.
    pub checked: u64,
    /// Of those, how many were deleted (the source lacks them or holds other bytes).
    pub removed: u64,
    /// Keys deleted from the target (at most `max_listed`).
    pub removed_keys: Vec<String>,
}

/// Moves sessions from one backend of a store into others.
///
/// ```no_run
/// use tower_sessions_multi_redis_store::MultiRedisStore;
/// use tower_sessions_multi_redis_store::migrate::{Migrator, Options};
///
/// # async fn run() -> Result<(), tower_sessions_multi_redis_store::Error> {
/// let store = MultiRedisStore::from_config_file("sessions.toml").await?;
/// // The one read+delete backend into the write backends.
/// let migrator = Migrator::for_store(&store, Options::default().move_sessions(true))?;
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
    options: Options,
}

impl Migrator {
    /// From `source` into `targets`, named backends of `store`. Without a
    /// source, the store's one source (a `read` backend it does not write);
    /// without targets, its `write` backends other than the source: the
    /// migration its configuration describes.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when a name is unknown, the source is a target,
    /// there is no target, or no source is named and the store has not
    /// exactly one; for a move, unless the source is not written and every
    /// write backend is a target.
    pub fn new(
        store: &MultiRedisStore,
        source: Option<&str>,
        targets: &[&str],
        options: Options,
    ) -> Result<Migrator, Error> {
        let nodes = store.nodes();
        let index = |name: &str, field: &'static str| {
            nodes
                .iter()
                .position(|n| n.name == name)
                .ok_or_else(|| Error::config(Some(name), field, "no backend of this name"))
        };
        let source = match source {
            Some(name) => index(name, "from")?,
            None => {
                let mut sources =
                    (0..nodes.len()).filter(|&i| nodes[i].modes.can_read() && !nodes[i].modes.can_write());
                match (sources.next(), sources.next()) {
                    (Some(one), None) => one,
                    (None, _) => {
                        return Err(Error::config(
                            None,
                            "from",
                            "no read backend without write to migrate from; name one",
                        ));
                    }
                    (Some(_), Some(_)) => {
                        return Err(Error::config(
                            None,
                            "from",
                            "several read-only backends; name the one to migrate from",
                        ));
                    }
                }
            }
        };
        let default_targets: Vec<&str>;
        let targets = if targets.is_empty() {
            default_targets = nodes
                .iter()
                .enumerate()
                .filter(|&(i, n)| i != source && n.modes.can_write())
                .map(|(_, n)| n.name.as_str())
                .collect();
            &default_targets[..]
        } else {
            targets
        };
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
        if options.move_sessions {
            // A move deletes from the source what every target holds: that is
            // safe only when the targets are all the backends the store writes
            // (else a write backend that did not get the copy misses it), and
            // the source is not one of them (else its `DEL` could remove a
            // save it received after the copy was read).
            if nodes[source].modes.can_write() {
                return Err(Error::config(
                    Some(&nodes[source].name),
                    "from",
                    "a move needs a source the store does not write (read+delete)",
                ));
            }
            if let Some(missing) = nodes.iter().enumerate().find(|(i, n)| n.modes.can_write() && !indices.contains(i)) {
                return Err(Error::config(
                    Some(&missing.1.name),
                    "to",
                    "a move needs every write backend among the targets",
                ));
            }
        }
        Ok(Migrator { store: store.clone(), source, targets: indices, options })
    }

    /// The migration the store's configuration describes:
    /// [`new`](Self::new) without a source or targets.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn for_store(store: &MultiRedisStore, options: Options) -> Result<Migrator, Error> {
        Migrator::new(store, None, &[], options)
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

    /// Runs until the source is fully scanned or `shutdown` completes (checked
    /// between batches). `on_progress` is called after every batch.
    ///
    /// # Errors
    ///
    /// Only when the source cannot be scanned at the start; a scan that fails
    /// later ends the run with a [`Report`] saying why
    /// ([`stopped_by`](Report::stopped_by)) and where to resume. Per-session
    /// problems are counted in the report.
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
                stopped_by: None,
            },
            previous: HashSet::new(),
            max_listed: self.options.max_listed,
        };
        let started = Instant::now();
        let walk = Walk::default();
        // Two stages overlap: batch i+1 is scanned and read from the source
        // while batch i is written to the targets. The reported cursor is that
        // of the first batch not yet written, so a resumed run misses nothing.
        let mut read = Some(self.read(self.options.cursor, &walk).await?);
        let mut looked = started;
        while let Some(batch) = read.take() {
            if self.options.stop_on_hazard && looked.elapsed() >= LOOK_EVERY {
                // Before writing (and deleting) this batch: the cursor still
                // points at it.
                match self.hazards().await {
                    Ok(live) if !live.is_empty() => {
                        run.report.stopped_by = Some(format!(
                            "app instances started meanwhile that would lose what the move takes out of {:?}: {}",
                            self.source(),
                            live.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
                        ));
                        break;
                    }
                    Ok(_) => looked = Instant::now(),
                    Err(err) => tracing::warn!(error = %err, "migrate: could not look at the live configurations"),
                }
            }
            let next = batch.next;
            run.absorb(&batch);
            // With a rate limit, the next batch is *read* late, not written
            // late: a copy must land within its deadline after the read
            // (`scripts.rs`), however slow the rate. The wait ends early on
            // shutdown (the cursor then points at the batch not read).
            let wait = self.options.rate_limit.and_then(|rate| {
                let due = Duration::from_secs_f64(run.report.progress.scanned as f64 / f64::from(rate));
                due.checked_sub(started.elapsed())
            });
            let mut interrupted = false;
            let reading = async {
                if next == 0 {
                    return Ok(None);
                }
                if let Some(wait) = wait {
                    let sleep = std::pin::pin!(tokio::time::sleep(wait));
                    if let Either::Right(_) = futures_util::future::select(sleep, shutdown.as_mut()).await {
                        interrupted = true;
                        return Ok(None);
                    }
                }
                self.read(next, &walk).await.map(Some)
            };
            let writing = self.write(batch.live, batch.read_at, &mut run);
            let (next_batch, ()) = futures_util::future::join(reading, writing).await;
            run.report.progress.cursor = next;
            run.report.progress.scan_restarts = walk.restarts();
            on_progress(&run.report.progress);
            if next == 0 {
                run.report.finished = true;
                break;
            }
            if interrupted || shutdown.as_mut().now_or_never().is_some() {
                break; // the batch read ahead is dropped; the cursor still points at it
            }
            read = match next_batch {
                Ok(batch) => batch,
                Err(err) => {
                    // What was done stands, and the cursor resumes the rest.
                    run.report.stopped_by = Some(err.to_string());
                    break;
                }
            };
        }
        Ok(run.report)
    }

    /// The read stage: one `SCAN` and the values of its session keys.
    async fn read(&self, cursor: u64, walk: &Walk) -> Result<ReadBatch, Error> {
        let source = self.source_node();
        let (next, mut keys) = source.scan(cursor, self.options.batch_size, walk).await?;
        keys.retain(|k| !keys::is_internal(k));
        let mut batch = ReadBatch { next, scanned: keys.len() as u64, ..ReadBatch::default() };
        let keys: Vec<String> =
            keys.into_iter().filter(|k| source.id_of(k).is_some_and(|id| Id::from_str(id).is_ok())).collect();
        batch.skipped = batch.scanned - keys.len() as u64; // not session ids
        if keys.is_empty() {
            return Ok(batch);
        }
        let ids = keys.iter().map(|k| source.id_of(k).unwrap_or_default());
        batch.read_at = crate::clock::now_ms();
        let values: Vec<Result<Option<Vec<u8>>, Error>> = match source.per_session_each("GET", ids, None).await {
            Ok(values) => values,
            Err(err) => {
                batch.failed = keys.into_iter().map(|k| (k, err.to_string())).collect();
                return Ok(batch);
            }
        };
        let now = time::OffsetDateTime::now_utc();
        for (key, value) in keys.into_iter().zip(values) {
            let bytes = match value {
                Ok(Some(bytes)) => bytes,
                Ok(None) => {
                    batch.skipped += 1; // gone since SCAN
                    continue;
                }
                // A hash or a list under a session's name: no session, left
                // in place and listed, like bytes that do not decode.
                Err(err) if err.is_wrong_type() => {
                    batch.corrupt.push(key);
                    continue;
                }
                Err(err) => {
                    batch.failed.push((key, err.to_string()));
                    continue;
                }
            };
            match codec::decode_expiry(&bytes) {
                Err(_) => batch.corrupt.push(key),
                Ok(expiry) if expiry <= now => batch.skipped += 1,
                Ok(expiry) => {
                    let id = source.id_of(&key).unwrap_or_default().to_owned();
                    let pxat = codec::expiry_millis(expiry);
                    // Only a store that indexes users decodes the whole record.
                    let user = match self.store.users() {
                        Some(_) => match codec::decode(&bytes) {
                            Ok(record) => self.store.user_of(&record),
                            Err(_) => {
                                batch.corrupt.push(key);
                                continue;
                            }
                        },
                        None => None,
                    };
                    batch.live.push(Live { key, id, bytes, pxat, user });
                }
            }
        }
        Ok(batch)
    }

    /// The write stage: copy a batch of live sessions into every target
    /// unless a logout left a tombstone there; with `move`, then delete from
    /// the source those every target holds.
    async fn write(&self, live: Vec<Live>, read_at: i64, run: &mut Run) {
        if live.is_empty() {
            return;
        }
        if self.options.dry_run {
            return self.dry_run(&live, run).await;
        }
        let targets = self.target_nodes();
        let live_ref = &live;
        let replies = join_all(targets.iter().map(|t| async move {
            // Copies carry a deadline on the target's clock (`scripts.rs`),
            // and name the script by its SHA1.
            t.prepare_copies().await?;
            let mut items = Vec::with_capacity(live_ref.len());
            for s in live_ref {
                let Some(item) = t.copy_cmd(&s.id, &s.bytes, s.pxat, read_at) else {
                    return Err(Error::config(Some(&t.name), "clock", "the server's clock is not known"));
                };
                items.push(item);
            }
            // Copies are idempotent in effect, so a batch with an unknown
            // outcome is simply reported and redone by a later run.
            let mut replies = t.batch("COPY", items, true, None).await?;
            // Then the user's index entries, once the copies landed (a
            // user's tidy may prune an entry whose session it finds
            // missing: `users.rs`). In the reply, the copies come first,
            // then one entry per session with a user. A session is removed
            // from the source only once both succeeded in every target.
            let entries: Vec<_> = live_ref
                .iter()
                .filter_map(|s| Some(t.index_cmd(s.user.as_deref()?, &s.id, Users::score(s.pxat))))
                .collect();
            if !entries.is_empty() {
                replies.extend(t.batch("INDEX", entries, true, None).await?);
            }
            Ok(replies)
        }))
        .await;

        // Indices into `live` of the sessions the source may drop: every
        // target holds them, or a logout left its tombstone.
        let mut moved = Vec::new();
        let mut index_reply = live.len();
        for (i, session) in live.iter().enumerate() {
            let mut written = false;
            let mut logged_out = false;
            let mut error = None;
            if session.user.is_some() {
                // Not indexed in a target: not moved (the source's index,
                // if any, still names it), and reported.
                for (t, reply) in replies.iter().enumerate() {
                    if let Ok(Some(Value::ServerError(err))) = reply.as_ref().map(|values| values.get(index_reply)) {
                        error = Some(format!("{}: index: {err:?}", targets[t].name));
                    }
                }
                index_reply += 1;
            }
            for (t, reply) in replies.iter().enumerate() {
                match reply.as_ref().map(|values| values.get(i)) {
                    Ok(Some(reply)) => match Copied::from_reply(reply.clone()) {
                        Ok(Copied::Written) => written = true,
                        Ok(Copied::Present(_)) => {}
                        Ok(Copied::Tombstoned) => logged_out = true,
                        Err(true) => error = Some(format!("{}: copy refused: read too long ago", targets[t].name)),
                        Err(false) => error = Some(format!("{}: unexpected reply {reply:?}", targets[t].name)),
                    },
                    Ok(other) => error = Some(format!("{}: unexpected reply {other:?}", targets[t].name)),
                    Err(err) => error = Some(err.to_string()),
                }
            }
            if let Some(reason) = error {
                run.failure(session.key.clone(), reason);
            } else if logged_out {
                // A logout ran (and may have failed on the source): the
                // session is not to be copied, and a move finishes the
                // logout in the source.
                run.report.progress.skipped += 1;
                moved.push(i);
            } else {
                if written {
                    run.report.progress.copied += 1;
                } else if run.previous.contains(&session.id) {
                    // SCAN returned it again (the table shrinks as we move);
                    // this run copied it in the previous batch.
                    run.report.progress.skipped += 1;
                } else {
                    run.report.progress.already_present += 1;
                }
                moved.push(i);
            }
        }
        run.previous = live.iter().map(|s| s.id.clone()).collect();
        if !self.options.move_sessions || moved.is_empty() {
            return;
        }
        // Every target holds these now (written, or a copy that no undo will
        // ever remove) or they were logged out, so a DEL that fails or runs
        // late loses nothing.
        let source = self.source_node();
        match source.per_session::<u64>("DEL", moved.iter().map(|&i| live[i].id.as_str()), None).await {
            Ok(removed) => run.report.progress.removed_from_source += removed.iter().sum::<u64>(),
            Err(err) => {
                let keys: Vec<String> = moved.iter().map(|&i| live[i].key.clone()).collect();
                run.fail_all(&keys, &err);
            }
        }
    }

    /// Dry run: count what would be copied, as the run would: a session
    /// logged out in a target (a tombstone there) is skipped, not copied.
    async fn dry_run(&self, live: &[Live], run: &mut Run) {
        let targets = self.target_nodes();
        let ids = || live.iter().map(|s| s.id.as_str());
        let replies = join_all(targets.iter().map(|t| async move {
            let (found, tombstoned) =
                futures_util::future::join(t.per_session::<u64>("EXISTS", ids(), None), t.tombstoned(ids(), None))
                    .await;
            Ok::<_, Error>((found?, tombstoned?))
        }))
        .await;
        if let Some(Err(err)) = replies.iter().find(|r| r.is_err()) {
            for Live { key, .. } in live {
                run.failure(key.clone(), err.to_string());
            }
            return;
        }
        let replies: Vec<_> = replies.into_iter().flatten().collect();
        for i in 0..live.len() {
            let missing = replies.iter().any(|(found, _)| found.get(i) == Some(&0));
            let logged_out = replies.iter().any(|(_, tombstoned)| tombstoned.get(i) == Some(&true));
            if logged_out {
                run.report.progress.skipped += 1;
            } else if missing {
                run.report.progress.copied += 1;
            } else {
                run.report.progress.already_present += 1;
            }
        }
    }

    /// The live configurations ([`MultiRedisStore::live_configurations`])
    /// that make this move unsafe while their instances run: those that
    /// write the source (a save that reached only the source would go with
    /// its `DEL`: I2), and those that read the source and no target (a
    /// session moved out of it would look logged out: I3). A configuration
    /// that does not read the source loses nothing by the move. Empty for a
    /// copy, which deletes nothing. Instances that do not announce
    /// themselves (`announce = false`) are not seen; the CLI's `migrate
    /// --move` refuses to start while this is not empty.
    ///
    /// ```no_run
    /// # use tower_sessions_multi_redis_store::{MultiRedisStore, migrate::{Migrator, Options}};
    /// # async fn run() -> Result<(), tower_sessions_multi_redis_store::Error> {
    /// let store = MultiRedisStore::from_config_file("sessions.toml").await?;
    /// let migrator = Migrator::for_store(&store, Options::default().move_sessions(true))?;
    /// for config in migrator.hazards().await? {
    ///     eprintln!("{} instance(s) still run {}", config.instances, config.backends);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// When a backend's registry of announcements cannot be read.
    pub async fn hazards(&self) -> Result<Vec<LiveConfiguration>, Error> {
        if !self.options.move_sessions {
            return Ok(Vec::new());
        }
        let source = self.source();
        let targets = self.targets();
        let mut live = self.store.live_configurations().await?;
        live.retain(|config| {
            let Ok(at_source) = config.modes_of(source) else { return true };
            let Some(at_source) = at_source else { return false };
            let reads_a_target =
                targets.iter().any(|t| matches!(config.modes_of(t), Ok(Some(modes)) if modes.can_read()));
            at_source.can_write() || (at_source.can_read() && !reads_a_target)
        });
        Ok(live)
    }

    /// Deletes from the one target every session that the source does not
    /// hold with the same bytes: the step of a migration plan (`plan.rs`)
    /// after which a backend that was only written (a shadow) may be read.
    /// While every instance writes both, deleting from the target is always
    /// safe: the source holds every session, and a load falls back to it.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] unless there is exactly one target; a backend error.
    pub async fn repair(&self) -> Result<RepairReport, Error> {
        let [target] = self.target_nodes()[..] else {
            return Err(Error::config(None, "to", "repair takes exactly one target"));
        };
        let source = self.source_node();
        // Only where the source holds every session: the store writes it, and
        // reads it before the target (the plan's dual-write step).
        let order = |name: &str| self.store.nodes().iter().position(|n| n.name == name && n.modes.can_read());
        let source_first = match (order(&source.name), order(&target.name)) {
            (Some(s), Some(t)) => s < t,
            (Some(_), None) => true,
            _ => false,
        };
        if !source.modes.can_write() || !target.modes.can_write() || !source_first {
            return Err(Error::config(
                Some(&target.name),
                "to",
                "repair deletes from the target what the source lacks: the store must write both, and read the \
                 source first (a plan's dual-write step)",
            ));
        }
        let mut report = RepairReport::default();
        let (mut cursor, walk) = (0, Walk::default());
        loop {
            // A target that restarted mid-walk is walked again from its start.
            let (next, keys) = target.scan(cursor, self.options.batch_size, &walk).await?;
            let ids: Vec<&str> = keys
                .iter()
                .filter(|k| !keys::is_internal(k))
                .filter_map(|k| target.id_of(k))
                .filter(|id| Id::from_str(id).is_ok())
                .collect();
            if !ids.is_empty() {
                let here = sessions(target.per_session_each("GET", ids.iter().copied(), None).await?)?;
                // A source key of another type says nothing of the session:
                // its target copy stays.
                let there: Vec<Option<Option<Vec<u8>>>> = source
                    .per_session_each("GET", ids.iter().copied(), None)
                    .await?
                    .into_iter()
                    .map(|value| match value {
                        Err(err) if err.is_wrong_type() => Ok(None),
                        value => value.map(Some),
                    })
                    .collect::<Result<_, Error>>()?;
                let stale: Vec<&str> = ids
                    .iter()
                    .zip(here.iter().zip(&there))
                    .filter(|(_, (here, there))| matches!(there, Some(there) if here.is_some() && *here != there))
                    .map(|(id, _)| *id)
                    .collect();
                report.checked += here.iter().filter(|v| v.is_some()).count() as u64;
                if !stale.is_empty() {
                    let removed: Vec<u64> = target.per_session("DEL", stale.iter().copied(), None).await?;
                    report.removed += removed.iter().sum::<u64>();
                    for id in stale.iter().take(self.options.max_listed.saturating_sub(report.removed_keys.len())) {
                        report.removed_keys.push(target.key(*id));
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                return Ok(report);
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
        let (mut cursor, walk) = (0, Walk::default());
        loop {
            let restarts = walk.restarts();
            let (next, keys) = source.scan(cursor, self.options.batch_size, &walk).await?;
            if walk.restarts() > restarts {
                // The source restarted (or failed over) mid-walk: what was
                // checked may have changed; check it all again.
                (report, cursor) = (VerifyReport::default(), 0);
                continue;
            }
            let ids: Vec<&str> =
                keys.iter().filter_map(|k| source.id_of(k)).filter(|id| Id::from_str(id).is_ok()).collect();
            if !ids.is_empty() {
                let here = sessions(source.per_session_each("GET", ids.iter().copied(), None).await?)?;
                let mut there = Vec::new();
                for t in &targets {
                    there.push(sessions(t.per_session_each("GET", ids.iter().copied(), None).await?)?);
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

/// A live session read from the source.
struct Live {
    /// Its key in the source.
    key: String,
    /// Its session id.
    id: String,
    /// The stored value.
    bytes: Vec<u8>,
    /// Its expiry (`PXAT`).
    pxat: u64,
    /// Its user, when the store indexes users (`users.rs`).
    user: Option<String>,
}

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
    /// When (`clock::now_ms`) the values were read: copies are refused by
    /// the targets past half a tombstone's life after it.
    read_at: i64,
}

/// The state of one run.
struct Run {
    report: Report,
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
}

/// A `GET` batch's values for `verify` and `repair`: a key of another type
/// under a session's name (`WRONGTYPE`) holds no session, so it reads as
/// none (`verify` reports a target's as missing; `repair` leaves it alone);
/// any other error of one key is the walk's.
fn sessions(values: Vec<Result<Option<Vec<u8>>, Error>>) -> Result<Vec<Option<Vec<u8>>>, Error> {
    values
        .into_iter()
        .map(|value| match value {
            Err(err) if err.is_wrong_type() => Ok(None),
            value => value,
        })
        .collect()
}
