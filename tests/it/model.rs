//! The invariants I1-I5 of DESIGN.md, checked against a model of every user
//! while everything that can race does: three store instances built
//! separately from one configuration file (three app processes), the bulk
//! migrator moving sessions from "old" to "new", users who load, change and
//! save their session and now and then log out while another tab saves
//! through another instance, readers loading random sessions through random
//! instances, and faults injected into both servers.
//!
//! Every answer is checked against the model of its session, taken when the
//! request started and when it ended:
//! * I1: a session whose logout returned Ok before the load started is not found;
//! * I2: a load returns at least the last version whose save returned Ok
//!   before the load started, and never a version nobody tried to save;
//! * I3: "not found" only once a logout of the session has started;
//! * I4: at the end, every session not logged out loads, with an acknowledged
//!   (or later attempted) version, and "old" holds none of them after a final
//!   migration; no logged-out session is left in either server.
//!
//! Errors are allowed only while faults are injected. Each run prints its
//! seed; `MODEL_SEED=<n>` replays one, `MODEL_SEEDS=<n>` runs more seeds and
//! `MODEL_MILLIS=<n>` runs longer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::proxy::DelayProxy;
use crate::common::{Rng, conn};
use tower_sessions_core::SessionStore;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_multi_redis_store::migrate::{self, Migrator};
use tower_sessions_multi_redis_store::testing::RedisServer;
use tower_sessions_multi_redis_store::{MultiRedisStore, codec};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// No fault: no request may fail.
    None,
    /// `CLIENT KILL TYPE normal` on both servers every 400 ms.
    KillConnections,
    /// `CLIENT PAUSE 250 WRITE` on both servers every 400 ms, with a 100 ms
    /// socket timeout: writes time out and run later.
    PauseWrites,
    /// SIGSTOP of "old" for 300 ms every 700 ms, with a 100 ms socket timeout.
    FreezeSource,
    /// No fault, but one app instance and the migrator reach both servers
    /// through a link that delays every chunk by 2 ms (another zone): the
    /// windows between one instance's commands widen, and races show.
    SlowLink,
}

/// What the model knows of one session.
#[derive(Clone, Debug, Default)]
struct Model {
    /// The highest version whose save (or create) returned Ok.
    acked: u64,
    /// The highest version any save tried to write.
    attempted: u64,
    /// A logout of it started.
    logout_started: bool,
    /// A logout of it returned Ok.
    logged_out: bool,
    /// Versions whose save returned an error (and may land at any time).
    failed: Vec<u64>,
}

#[derive(Default)]
struct World {
    models: Mutex<HashMap<Id, Model>>,
    ids: Mutex<Vec<Id>>,
    /// The session each user is working on: where readers look half the
    /// time, so their copies race that user's saves and logouts.
    hot: Mutex<Vec<Id>>,
    /// Where a rolling walk is (printed with each violation).
    phase: Mutex<String>,
    violations: Mutex<Vec<String>>,
    loads: AtomicU64,
    errors: AtomicU64,
    logouts: AtomicU64,
    saves: AtomicU64,
}

impl World {
    fn model(&self, id: &Id) -> Model {
        self.models.lock().unwrap().get(id).cloned().unwrap_or_default()
    }

    fn update(&self, id: Id, f: impl FnOnce(&mut Model)) {
        f(self.models.lock().unwrap().entry(id).or_default());
    }

    fn track(&self, id: Id, model: Model) {
        self.models.lock().unwrap().insert(id, model);
        self.ids.lock().unwrap().push(id);
    }

    fn violation(&self, what: String) {
        let phase = self.phase.lock().unwrap().clone();
        self.violations.lock().unwrap().push(format!("{what} [{phase}]"));
    }

    /// Loads `id` through `store` and checks the answer against the model.
    /// Returns the version found, if any.
    async fn checked_load(&self, store: &MultiRedisStore, id: Id, who: &str) -> Option<u64> {
        let before = self.model(&id);
        let result = store.load(&id).await;
        let after = self.model(&id);
        self.loads.fetch_add(1, Ordering::Relaxed);
        match result {
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                None
            }
            Ok(None) => {
                if !after.logout_started {
                    self.violation(format!("I3 {who}: {id} not found, never logged out ({after:?})"));
                }
                None
            }
            Ok(Some(record)) => {
                let v = version(&record);
                if before.logged_out {
                    self.violation(format!("I1 {who}: {id} loaded (v{v}) after its logout returned"));
                } else if v < before.acked {
                    let late = if after.failed.contains(&v) { " (a save of it had failed: it ran late)" } else { "" };
                    self.violation(format!(
                        "I2 {who}: {id} loaded v{v}, older than acknowledged v{}{late}",
                        before.acked
                    ));
                } else if v > after.attempted {
                    self.violation(format!("{who}: {id} loaded v{v}, never written ({after:?})"));
                }
                Some(v)
            }
        }
    }
}

fn version(record: &Record) -> u64 {
    record.data.get("v").and_then(serde_json::Value::as_u64).unwrap_or(u64::MAX)
}

fn record(id: Id, v: u64) -> Record {
    Record {
        id,
        data: [
            ("v".to_owned(), serde_json::json!(v)),
            ("pad".to_owned(), serde_json::json!("x".repeat(64))),
            // Eight users: the index scenario's index keys are shared.
            ("user".to_owned(), serde_json::json!(format!("u{}", id.0.rem_euclid(8)))),
        ]
        .into(),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    }
}

/// What the deployment does while users and readers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Every instance on `new: read+write, old: read+delete`; the migrator
    /// moves sessions from "old" all along.
    Migrating,
    /// The same, with "new" a partition of two servers (weighted rendezvous
    /// hashing): tombstones, copies and clocks per member.
    MigratingIntoPartition,
    /// As `Migrating`, with the per-user index on (`user_key`): every save
    /// writes the index first when not covered, copies and the migrator
    /// index what they copy, logouts remove their entry.
    MigratingIndexed,
    /// The instances walk, one at a time, through every step of the plan
    /// from `[old: read+write]` to `[new: read+write]` (`plan.rs`), each
    /// step's script run once every instance reached it.
    Rolling,
}

/// The app instances, which a rolling deploy replaces one at a time.
struct Instances(Mutex<Vec<Arc<MultiRedisStore>>>);

impl Instances {
    fn pick(&self, rng: &mut Rng) -> Arc<MultiRedisStore> {
        let all = self.0.lock().unwrap();
        all[rng.below(all.len())].clone()
    }

    /// Replaces instance `i` and waits until the requests it was serving are
    /// done, as a deploy drains an instance before stopping it.
    async fn replace(&self, i: usize, store: MultiRedisStore) {
        let drained = std::mem::replace(&mut self.0.lock().unwrap()[i], Arc::new(store));
        while Arc::strong_count(&drained) > 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Moves the instances one at a time through every step of the plan, over
/// about `millis`; once all run a step, runs what must happen before the
/// next (the plan's scripts: repair, then migrate and verify), again until
/// it succeeds, as an operator would.
async fn walk(world: &World, instances: &Instances, steps: &[std::path::PathBuf], millis: u64) {
    let count = instances.0.lock().unwrap().len();
    let pause = Duration::from_millis(millis / ((steps.len() as u64 - 1) * count as u64 + 1));
    for (n, step) in steps.iter().enumerate().skip(1) {
        for i in 0..count {
            tokio::time::sleep(pause).await;
            instances.replace(i, MultiRedisStore::from_config_file(step).await.unwrap()).await;
            *world.phase.lock().unwrap() = format!("{} of {count} instances on step {:02}", i + 1, n + 1);
        }
        let store = MultiRedisStore::from_config_file(step).await.unwrap();
        loop {
            let done = match n + 1 {
                2 => match Migrator::new(&store, Some("old"), &["new"], migrate::Options::default()) {
                    Ok(m) => m.repair().await.is_ok(),
                    Err(_) => false,
                },
                4 => {
                    let migrator =
                        Migrator::for_store(&store, migrate::Options::default().move_sessions(true)).unwrap();
                    let moved = migrator.run(|_| {}, std::future::pending()).await;
                    moved.is_ok_and(|r| r.finished && r.is_clean())
                        && migrator.verify().await.is_ok_and(|v| v.checked == 0 && v.missing == 0)
                }
                _ => true,
            };
            if done {
                *world.phase.lock().unwrap() = format!("all on step {:02}, its script done", n + 1);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One seeded run; returns the violations found.
async fn run(seed: u64, scenario: Scenario, fault: Fault, millis: u64) -> Vec<String> {
    const PRELOADED: u64 = 1500;
    const USERS: usize = 12;
    const READERS: usize = 4;
    let new = RedisServer::start().expect("redis-server");
    let new2 = (scenario == Scenario::MigratingIntoPartition).then(|| RedisServer::start().expect("redis-server"));
    let old = Arc::new(RedisServer::start().expect("redis-server"));
    let timeout = match fault {
        Fault::PauseWrites | Fault::FreezeSource => 0.1,
        Fault::None | Fault::KillConnections | Fault::SlowLink => 1.0,
    };
    let config = |new_url: &str, old_url: &str| {
        let new_address = match &new2 {
            // The members' tables come last in the entry (TOML).
            Some(second) => format!(
                "\n[[backends.members]]\nname = \"a\"\nurl = \"{new_url}\"\n\
                 [[backends.members]]\nname = \"b\"\nurl = \"{}\"\n",
                second.url()
            ),
            None => format!("url = \"{new_url}\"\n"),
        };
        let (url_line, members) =
            if new2.is_some() { (String::new(), new_address) } else { (new_address, String::new()) };
        // Saves tidy every 0.2 s, not every minute: pruning races the rest.
        let users =
            if scenario == Scenario::MigratingIndexed { "user_key = \"user\"\nprune_index_every = 0.2\n" } else { "" };
        format!(
            "{users}[[backends]]\nname = \"new\"\nmodes = [\"read\", \"write\"]\n{url_line}socket_timeout = {timeout}\n\
             breaker_failures = 0\n{members}\n\
             [[backends]]\nname = \"old\"\nmodes = [\"read\", \"delete\"]\nurl = \"{old_url}\"\nsocket_timeout = {timeout}\n\
             breaker_failures = 0\n",
        )
    };
    let path = new.dir().join("sessions.toml");
    std::fs::write(&path, config(&new.url(), &old.url())).unwrap();
    let slow_links = match fault {
        Fault::SlowLink => Some((
            DelayProxy::start(new.port(), Duration::from_millis(2)).await,
            DelayProxy::start(old.port(), Duration::from_millis(2)).await,
        )),
        _ => None,
    };
    let slow_path = new.dir().join("slow.toml");
    if let Some((to_new, to_old)) = &slow_links {
        std::fs::write(&slow_path, config(&to_new.url(), &to_old.url())).unwrap();
    }
    // The plan's steps, for a rolling walk.
    let steps: Vec<std::path::PathBuf> = match scenario {
        Scenario::Migrating | Scenario::MigratingIntoPartition | Scenario::MigratingIndexed => Vec::new(),
        Scenario::Rolling => {
            let one = |name: &str, url: &str| {
                format!(
                    "[[backends]]\nname = \"{name}\"\nmodes = [\"read\", \"write\"]\nurl = \"{url}\"\n\
                     socket_timeout = {timeout}\nbreaker_failures = 0\n"
                )
            };
            let plan =
                tower_sessions_multi_redis_store::plan::plan(&one("old", &old.url()), &one("new", &new.url())).unwrap();
            plan.iter()
                .enumerate()
                .map(|(i, step)| {
                    let path = new.dir().join(format!("{:02}.toml", i + 1));
                    std::fs::write(&path, &step.config).unwrap();
                    path
                })
                .collect()
        }
    };
    // Three app instances and the migrator's, each built on its own (the
    // first and the migrator across the slow link, if any).
    let mut instances = Vec::new();
    for i in 0..4 {
        let file = match steps.first() {
            Some(first) => first,
            None if slow_links.is_some() && (i == 0 || i == 3) => &slow_path,
            None => &path,
        };
        instances.push(MultiRedisStore::from_config_file(file).await.unwrap());
    }
    let migrator_store = instances.pop().unwrap();
    let instances = Arc::new(Instances(Mutex::new(instances.into_iter().map(Arc::new).collect())));

    // Sessions written by tower-sessions-redis-store into "old", version 0.
    let world = Arc::new(World::default());
    {
        let mut old_conn = conn(&old).await;
        let mut pipe = redis::pipe();
        for _ in 0..PRELOADED {
            let rec = record(Id::default(), 0);
            pipe.cmd("SET").arg(rec.id.to_string()).arg(codec::encode(&rec).unwrap()).arg("EX").arg(3600).ignore();
            world.track(rec.id, Model::default());
        }
        let _: () = pipe.query_async(&mut old_conn).await.unwrap();
    }

    *world.hot.lock().unwrap() = world.ids.lock().unwrap()[..USERS].to_vec();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();

    // The migrator, across the whole run, restarted from its cursor when a
    // fault stops it.
    if scenario != Scenario::Rolling {
        let (stop, store) = (stop.clone(), migrator_store.clone());
        let rate = u32::try_from(PRELOADED * 1000 / millis.max(1)).unwrap_or(u32::MAX);
        tasks.spawn(async move {
            let mut cursor = 0;
            while !stop.load(Ordering::Relaxed) {
                let options = migrate::Options::default()
                    .move_sessions(true)
                    .batch_size(50)
                    .rate_limit(Some(rate))
                    .cursor(cursor);
                let migrator = Migrator::for_store(&store, options).unwrap();
                let stopping = {
                    let stop = stop.clone();
                    async move {
                        while !stop.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                };
                match migrator.run(|_| {}, stopping).await {
                    Ok(report) if report.finished => cursor = 0,
                    Ok(report) => cursor = report.progress.cursor,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
    }

    // Users: each follows one session at a time; after a logout, logs in again.
    for user in 0..USERS {
        let (stop, world, instances) = (stop.clone(), world.clone(), instances.clone());
        let mut rng = Rng(seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(user as u64 + 1)) | 1);
        tasks.spawn(async move {
            // Each user owns its sessions: the preloaded ones at its stride,
            // then those it logs in with.
            let own: Vec<Id> = world.ids.lock().unwrap().iter().skip(user).step_by(USERS).copied().collect();
            let mut own = own.into_iter().cycle();
            let mut id = own.next().unwrap();
            while !stop.load(Ordering::Relaxed) {
                let store = &instances.pick(&mut rng);
                if world.model(&id).logout_started {
                    id = own.next().unwrap();
                    continue;
                }
                world.hot.lock().unwrap()[user] = id;
                let who = format!("user {user}");
                world.checked_load(store, id, &who).await;
                if rng.below(10) == 0 {
                    // Log out while another tab saves through another instance.
                    let v = {
                        let mut models = world.models.lock().unwrap();
                        let m = models.entry(id).or_default();
                        m.logout_started = true;
                        m.attempted += 1;
                        m.attempted
                    };
                    let tab = instances.pick(&mut rng);
                    let logout = instances.pick(&mut rng);
                    let (saved, logged_out) =
                        tokio::join!(async { tab.save(&record(id, v)).await }, async { logout.delete(&id).await });
                    world.saves.fetch_add(1, Ordering::Relaxed);
                    world.logouts.fetch_add(1, Ordering::Relaxed);
                    if saved.is_err() {
                        world.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    match logged_out {
                        Ok(()) => world.update(id, |m| m.logged_out = true),
                        Err(_) => {
                            world.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // The user's own next request, through any instance.
                    let store = &instances.pick(&mut rng);
                    world.checked_load(store, id, &format!("{who} after logout")).await;
                    // Log in again.
                    let mut fresh = record(Id::default(), 1);
                    match store.create(&mut fresh).await {
                        Ok(()) => {
                            world.track(fresh.id, Model { acked: 1, attempted: 1, ..Model::default() });
                            id = fresh.id;
                        }
                        Err(_) => {
                            world.errors.fetch_add(1, Ordering::Relaxed);
                            id = own.next().unwrap();
                        }
                    }
                } else {
                    let v = {
                        let mut models = world.models.lock().unwrap();
                        let m = models.entry(id).or_default();
                        m.attempted += 1;
                        m.attempted
                    };
                    let result = store.save(&record(id, v)).await;
                    world.saves.fetch_add(1, Ordering::Relaxed);
                    match result {
                        Ok(()) => world.update(id, |m| m.acked = m.acked.max(v)),
                        Err(_) => {
                            world.errors.fetch_add(1, Ordering::Relaxed);
                            world.update(id, |m| m.failed.push(v));
                        }
                    }
                }
            }
        });
    }

    // Readers: random sessions through random instances.
    for reader in 0..READERS {
        let (stop, world, instances) = (stop.clone(), world.clone(), instances.clone());
        let mut rng = Rng(seed.rotate_left(17 + reader as u32) | 1);
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let id = if rng.below(2) == 0 {
                    let hot = world.hot.lock().unwrap();
                    hot[rng.below(hot.len())]
                } else {
                    let ids = world.ids.lock().unwrap();
                    ids[rng.below(ids.len())]
                };
                let store = &instances.pick(&mut rng);
                world.checked_load(store, id, &format!("reader {reader}")).await;
            }
        });
    }

    // Faults, until the traffic stops.
    let faults = {
        let stop = stop.clone();
        let (new_client, old_client) = (new.client().unwrap(), old.client().unwrap());
        let old = old.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match fault {
                    Fault::None | Fault::SlowLink => tokio::time::sleep(Duration::from_millis(100)).await,
                    Fault::KillConnections => {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                        for client in [&new_client, &old_client] {
                            let mut c = client.get_multiplexed_async_connection().await.unwrap();
                            let _: redis::RedisResult<u64> =
                                redis::cmd("CLIENT").arg(&["KILL", "TYPE", "normal"][..]).query_async(&mut c).await;
                        }
                    }
                    Fault::PauseWrites => {
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        for client in [&new_client, &old_client] {
                            let mut c = client.get_multiplexed_async_connection().await.unwrap();
                            let _: () = redis::cmd("CLIENT")
                                .arg(&["PAUSE", "250", "WRITE"][..])
                                .query_async(&mut c)
                                .await
                                .unwrap();
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Fault::FreezeSource => {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                        old.freeze().unwrap();
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        old.thaw().unwrap();
                    }
                }
            }
        })
    };

    match scenario {
        Scenario::Migrating | Scenario::MigratingIntoPartition | Scenario::MigratingIndexed => {
            tokio::time::sleep(Duration::from_millis(millis)).await
        }
        Scenario::Rolling => walk(&world, &instances, &steps, millis).await,
    }
    stop.store(true, Ordering::Relaxed);
    faults.await.unwrap();
    while let Some(task) = tasks.join_next().await {
        task.unwrap();
    }
    let during = world.violations.lock().unwrap().len();

    // Late commands (timed out, paused) land now; then the final sweep
    // through a fresh instance, after a last migration (the walk's last
    // step needs none: "old" must be empty already).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let fresh = MultiRedisStore::from_config_file(steps.last().unwrap_or(&path)).await.unwrap();
    if scenario != Scenario::Rolling {
        let report = Migrator::for_store(&fresh, migrate::Options::default().move_sessions(true))
            .unwrap()
            .run(|_| {}, std::future::pending())
            .await
            .unwrap();
        if !report.is_clean() {
            world.violation(format!("final migration not clean: {:?}", report.failures.first()));
        }
    }
    let ids = world.ids.lock().unwrap().clone();
    let (mut new_conn, mut old_conn) = (conn(&new).await, conn(&old).await);
    let mut live = 0;
    for id in &ids {
        let found = world.checked_load(&fresh, *id, "final sweep").await;
        let m = world.model(id);
        let key = id.to_string();
        let in_old: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut old_conn).await.unwrap();
        let mut in_new: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut new_conn).await.unwrap();
        if let Some(second) = &new2 {
            in_new |= crate::common::exists(second, &key).await;
        }
        if in_old {
            world.violation(format!("I4 final: {id} still in old after the final migration ({m:?})"));
        }
        if m.logged_out && (in_new || in_old) {
            world.violation(format!("I1 final: {id} still stored after its logout returned"));
        }
        if !m.logout_started {
            live += 1;
            if found.is_none() {
                world.violation(format!("I4 final: live {id} lost ({m:?})"));
            }
        }
    }
    if let Some(second) = &new2 {
        let (a, b) = (crate::common::session_keys(&new).await.len(), crate::common::session_keys(second).await.len());
        if a == 0 || b == 0 {
            world.violation(format!("the partition was not used: {a} and {b} sessions in its members"));
        }
    }
    let errors = world.errors.load(Ordering::Relaxed);
    if matches!(fault, Fault::None | Fault::SlowLink) && errors > 0 {
        world.violation(format!("{errors} requests failed without any fault"));
    }
    let violations = world.violations.lock().unwrap().clone();
    eprintln!(
        "model seed={seed} {scenario:?} fault={fault:?}: {} loads, {} saves, {} logouts, {errors} errors, {live} live sessions \
         checked at the end, {} violations ({during} during the run)",
        world.loads.load(Ordering::Relaxed),
        world.saves.load(Ordering::Relaxed),
        world.logouts.load(Ordering::Relaxed),
        violations.len(),
    );
    violations
}

/// Runs `fault` over several seeds; fails listing the first violations.
async fn check(scenario: Scenario, fault: Fault) {
    let millis = std::env::var("MODEL_MILLIS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let seeds: Vec<u64> = match std::env::var("MODEL_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => {
            let n = std::env::var("MODEL_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
            let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
            (0..n).map(|i| base.wrapping_add(i * 0x9E37_79B9)).collect()
        }
    };
    for seed in seeds {
        let violations = run(seed, scenario, fault, millis).await;
        assert!(
            violations.is_empty(),
            "seed {seed} ({scenario:?}, {fault:?}): {} violations, first: {:#?}",
            violations.len(),
            &violations[..violations.len().min(10)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_without_faults() {
    check(Scenario::Migrating, Fault::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_while_connections_are_killed() {
    check(Scenario::Migrating, Fault::KillConnections).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_while_writes_are_paused_past_the_socket_timeout() {
    check(Scenario::Migrating, Fault::PauseWrites).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_while_the_source_is_frozen() {
    check(Scenario::Migrating, Fault::FreezeSource).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_across_a_slow_link() {
    check(Scenario::Migrating, Fault::SlowLink).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_walk_through_the_plan_keeps_the_invariants() {
    check(Scenario::Rolling, Fault::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_walk_through_the_plan_keeps_the_invariants_while_connections_are_killed() {
    check(Scenario::Rolling, Fault::KillConnections).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_when_moving_into_a_partition() {
    check(Scenario::MigratingIntoPartition, Fault::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_with_the_user_index_while_connections_are_killed() {
    check(Scenario::MigratingIndexed, Fault::KillConnections).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_with_the_user_index_while_writes_are_paused_past_the_socket_timeout() {
    check(Scenario::MigratingIndexed, Fault::PauseWrites).await;
}
