//! A Sentinel backend against a real topology (one master, one
//! replica, three sentinels): the acceptance suite, then a forced failover
//! under continuous load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{acceptance, conn, record, wait_for_replica, wait_for_replicas};
use tokio::sync::Mutex;
use tower_sessions_core::SessionStore;
use tower_sessions_core::session::Record;
use tower_sessions_multi_redis_store::testing::{RedisServer, SentinelGroup};
use tower_sessions_multi_redis_store::{Backend, BreakerConfig, MultiRedisStore};

const MASTER: &str = "sessions";

struct Topology {
    master: RedisServer,
    replica: RedisServer,
    /// More replicas (`topology_with`).
    spares: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

async fn topology() -> Topology {
    topology_with(1).await
}

/// A master with `replicas` replicas, watched by three sentinels.
async fn topology_with(replicas: usize) -> Topology {
    let group = tokio::task::spawn_blocking(move || SentinelGroup::start(MASTER, replicas)).await.unwrap().unwrap();
    let SentinelGroup { master, replicas: mut spares, sentinels, .. } = group;
    let replica = spares.remove(0);
    Topology { master, replica, spares, sentinels }
}

async fn store(t: &Topology) -> MultiRedisStore {
    store_waiting_for(t, 1).await
}

/// A store on the topology whose writes wait for `replicas` replicas;
/// `WAIT_REPLICAS=0` in the environment shows what the failover tests find
/// without waiting.
async fn store_waiting_for(t: &Topology, replicas: u32) -> MultiRedisStore {
    let sentinels: Vec<(&str, u16)> = t.sentinels.iter().map(|s| ("127.0.0.1", s.port())).collect();
    let wait = std::env::var("WAIT_REPLICAS").ok().and_then(|n| n.parse().ok()).unwrap_or(replicas);
    MultiRedisStore::builder()
        .backend(
            Backend::sentinel("ha", sentinels, MASTER)
                .wait_replicas(wait)
                .socket_timeout(Duration::from_millis(500))
                .breaker(BreakerConfig::disabled()),
        )
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acceptance_suite_passes_on_a_sentinel_backend() {
    let t = topology().await;
    let store = store(&t).await;
    acceptance(&store, "sentinel").await;
    drop(t.replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_failover_under_load_loses_no_saved_session() {
    let t = topology().await;
    let store = store(&t).await;
    let mut saved = Vec::new();
    for i in 0..200 {
        let mut rec = record(&format!("u{i}"));
        store.create(&mut rec).await.unwrap();
        saved.push(Arc::new(Mutex::new(rec)));
    }
    // Everything written so far is on the replica too.
    let mut acked: u64 = 0;
    for _ in 0..100 {
        acked = redis::cmd("WAIT").arg(1).arg(100).query_async(&mut conn(&t.master).await).await.unwrap();
        if acked >= 1 {
            break;
        }
    }
    assert_eq!(acked, 1, "the replica acknowledged every write");

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let window = Arc::new(std::sync::Mutex::new((None::<Instant>, None::<Instant>)));
    let mut load = tokio::task::JoinSet::new();
    for task in 0..4usize {
        let (store, saved, stop, errors, window) =
            (store.clone(), saved.clone(), stop.clone(), errors.clone(), window.clone());
        load.spawn(async move {
            let mut i = task;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 7) % saved.len();
                let rec: Record = saved[i].lock().await.clone();
                let ok = match store.load(&rec.id).await {
                    Ok(Some(_)) => store.save(&rec).await.is_ok(),
                    Ok(None) => panic!("session {i} lost"),
                    Err(err) => {
                        assert!(err.to_string().contains("backend `ha`"), "{err}");
                        false
                    }
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                    let mut w = window.lock().unwrap();
                    let now = Instant::now();
                    w.0.get_or_insert(now);
                    w.1 = Some(now);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let _: redis::Value =
        redis::cmd("SENTINEL").arg("FAILOVER").arg(MASTER).query_async(&mut conn(&t.sentinels[0]).await).await.unwrap();
    // Until the sentinels name the former replica as master, and a bit longer.
    let replica_port = t.replica.port().to_string();
    loop {
        let addr: Vec<String> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER)
            .query_async(&mut conn(&t.sentinels[0]).await)
            .await
            .unwrap();
        if addr.get(1) == Some(&replica_port) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no failover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(r) = load.join_next().await {
        r.unwrap();
    }
    // After it, every session saved before is there, and writes go to the new master.
    for rec in &saved {
        let rec = rec.lock().await.clone();
        assert_eq!(store.load(&rec.id).await.unwrap().map(|r| r.data), Some(rec.data.clone()));
    }
    // A write waits for a replica: the demoted master, once resynced.
    wait_for_replica(&t.replica.url()).await;
    // (With a 250 ms WAIT, a loaded machine's replica can be late: an error
    // then, whose outcome is unknown; a later login succeeds.)
    let mut fresh = record("after");
    let mut created = store.create(&mut fresh).await;
    for _ in 0..20 {
        if created.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        fresh = record("after");
        created = store.create(&mut fresh).await;
    }
    created.unwrap();
    let on_new_master: bool =
        redis::cmd("EXISTS").arg(fresh.id.to_string()).query_async(&mut conn(&t.replica).await).await.unwrap();
    assert!(on_new_master, "writes reach the promoted replica");
    let w = *window.lock().unwrap();
    let span = match w {
        (Some(a), Some(b)) => b - a,
        _ => Duration::ZERO,
    };
    eprintln!("failover: {} failed requests over a window of {span:?}", errors.load(Ordering::Relaxed));
    assert!(span < Duration::from_secs(10), "the error window is bounded: {span:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_backends_load_from_both_config_shapes() {
    use std::io::Write;
    let t = topology().await;
    let list: Vec<String> = t.sentinels.iter().map(|s| format!("\"127.0.0.1:{}\"", s.port())).collect();
    let mut toml = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    write!(
        toml,
        "[[backends]]\nname = \"ha\"\nmodes = [\"read\", \"write\"]\nsentinels = [{}]\nmaster = \"{MASTER}\"\nsocket_timeout = 0.5\n",
        list.join(", ")
    )
    .unwrap();
    let store = MultiRedisStore::from_config_file(toml.path()).await.unwrap();
    acceptance(&store, "sentinel from TOML").await;

    let pairs: Vec<String> = t.sentinels.iter().map(|s| format!("[\"127.0.0.1\", {}]", s.port())).collect();
    let mut json = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    write!(
        json,
        r#"[{{"backend": "0", "modes": ["read", "write"], "setting": {{
             "SESSION_REDIS_SENTINEL_LIST": [{}], "SESSION_REDIS_SENTINEL_MASTER_ALIAS": "{MASTER}",
             "SESSION_REDIS_DB": 0, "SESSION_REDIS_PREFIX": "s:", "SESSION_REDIS_SOCKET_TIMEOUT": 1}}}}]"#,
        pairs.join(", ")
    )
    .unwrap();
    let store = MultiRedisStore::from_config_file(json.path()).await.unwrap();
    acceptance(&store, "sentinel from the seed's JSON").await;
    drop(t.master);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_and_sentinel_passwords_and_a_db() {
    let master = RedisServer::start_with(&["--requirepass", "master-pw", "--masterauth", "master-pw"]).unwrap();
    let port = master.port().to_string();
    let _replica = RedisServer::start_with(&[
        "--replicaof",
        "127.0.0.1",
        &port,
        "--requirepass",
        "master-pw",
        "--masterauth",
        "master-pw",
    ])
    .unwrap();
    let auth = format!("sentinel auth-pass {MASTER} master-pw");
    let sentinels: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start_sentinel_with(MASTER, master.port(), &[&auth, "requirepass sentinel-pw"]).unwrap())
        .collect();
    wait_for_replica(&format!("redis://:master-pw@127.0.0.1:{}", master.port())).await;
    let addrs: Vec<(&str, u16)> = sentinels.iter().map(|s| ("127.0.0.1", s.port())).collect();
    let store = MultiRedisStore::builder()
        .backend(
            Backend::sentinel("ha", addrs.clone(), MASTER).password("master-pw").sentinel_password("sentinel-pw").db(3),
        )
        .build()
        .await
        .unwrap();
    acceptance(&store, "sentinel with passwords").await;
    let mut rec = record("ada");
    store.create(&mut rec).await.unwrap();
    let url = format!("redis://:master-pw@127.0.0.1:{}/3", master.port());
    let mut db3 = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let found: bool = redis::cmd("EXISTS").arg(rec.id.to_string()).query_async(&mut db3).await.unwrap();
    assert!(found, "written to db 3 of the master");

    let wrong = MultiRedisStore::builder()
        .backend(Backend::sentinel("ha", addrs, MASTER).password("master-pw").sentinel_password("nope"))
        .build()
        .await
        .unwrap();
    let err = wrong.load(&rec.id).await.unwrap_err().to_string();
    assert!(err.contains("backend `ha`") && !err.contains("nope"), "{err}");
}

#[tokio::test]
async fn master_rechecks_reuse_the_sentinel_connection() {
    let t = topology().await;
    let store = store(&t).await;
    let mut rec = record("ada");
    store.create(&mut rec).await.unwrap();
    // Three and a half seconds of use: at least three re-checks of the master.
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        assert_eq!(store.load(&rec.id).await.unwrap().as_ref(), Some(&rec));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The store's connection to each sentinel asked for the master last and
    // has lived through every re-check, the slowest sentinel's too (a
    // discovery stops waiting once most agree, but lets the rest finish).
    for (i, sentinel) in t.sentinels.iter().enumerate() {
        let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut conn(sentinel).await).await.unwrap();
        let askers: Vec<&str> =
            clients.lines().filter(|l| l.contains("cmd=sentinel|get-master-addr-by-name")).collect();
        assert_eq!(askers.len(), 1, "sentinel {i}: one connection asks for the master:\n{clients}");
        let age: u64 = askers[0]
            .split_whitespace()
            .find_map(|f| f.strip_prefix("age="))
            .and_then(|a| a.parse().ok())
            .expect("CLIENT LIST has age=");
        assert!(age >= 3, "sentinel {i}: the asking connection is {age} s old: re-checks opened new ones\n{clients}");
    }
}

/// The sentinels all down for 5 s: a healthy master keeps serving, no error
/// (their silence is no sign of a failover). Then a stale sentinel that names
/// a replica is not believed: the master is confirmed with `ROLE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_outage_never_takes_a_healthy_master_down() {
    let mut t = topology().await;
    let store = store(&t).await;
    let mut rec = record("ada");
    store.create(&mut rec).await.unwrap();
    for sentinel in &mut t.sentinels {
        sentinel.kill();
    }
    let (mut errors, mut requests) = (Vec::new(), 0);
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        requests += 1;
        match store.load(&rec.id).await {
            Ok(Some(found)) => {
                if let Err(err) = store.save(&found).await {
                    errors.push(err.to_string());
                }
            }
            other => errors.push(format!("{other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(errors.is_empty(), "{} of {requests} requests failed, first: {:?}", errors.len(), errors.first());
    for sentinel in &mut t.sentinels {
        sentinel.restart().unwrap();
    }
}

/// A sentinel that names a replica (one that missed a failover), listed
/// first: the others outvote it, and `ROLE` would refuse the replica anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_sentinel_listed_first_is_not_believed() {
    let t = topology().await;
    let stale = RedisServer::start_sentinel(MASTER, t.replica.port()).unwrap();
    let mut sentinels: Vec<(&str, u16)> = vec![("127.0.0.1", stale.port())];
    sentinels.extend(t.sentinels.iter().map(|s| ("127.0.0.1", s.port())));
    let store = MultiRedisStore::builder()
        .backend(Backend::sentinel("ha", sentinels, MASTER).socket_timeout(Duration::from_millis(500)))
        .build()
        .await
        .unwrap();
    for i in 0..20 {
        let mut rec = record(&format!("u{i}"));
        store.create(&mut rec).await.unwrap();
        store.save(&rec).await.unwrap();
        assert_eq!(store.load(&rec.id).await.unwrap(), Some(rec));
    }
}

/// A sentinel whose host went silent (it accepts, never answers: packets
/// dropped), listed first beside the three live ones: once most sentinels
/// named the master, it is not waited for. Before, every re-check of the
/// master (once a second, made by a request) waited for it a whole socket
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_sentinel_holds_no_request_up() {
    let t = topology().await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let swallow = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream); // read nothing, answer nothing, close nothing
        }
    });
    let mut sentinels: Vec<(&str, u16)> = vec![("127.0.0.1", silent_port)];
    sentinels.extend(t.sentinels.iter().map(|s| ("127.0.0.1", s.port())));
    let timeout = Duration::from_secs(2);
    let store = MultiRedisStore::builder()
        .backend(Backend::sentinel("ha", sentinels, MASTER).socket_timeout(timeout))
        .build()
        .await
        .unwrap();
    let mut rec = record("ada");
    store.create(&mut rec).await.unwrap();
    // Three and a half seconds of use: at least three re-checks.
    let (mut slowest, mut requests) = (Duration::ZERO, 0);
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        let started = Instant::now();
        assert_eq!(store.load(&rec.id).await.unwrap().as_ref(), Some(&rec));
        slowest = slowest.max(started.elapsed());
        requests += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(slowest < timeout / 2, "the slowest of {requests} loads took {slowest:?} (socket timeout {timeout:?})");
    swallow.abort();
}

/// How the master goes away.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `SENTINEL FAILOVER`: the sentinels promote the replica, the master is demoted.
    Forced,
    /// The master SIGSTOPped until the sentinels promote the replica, then resumed (it resyncs).
    Frozen,
    /// The master SIGKILLed.
    Killed,
}

/// What one user's session is known to be, from what the store answered.
#[derive(Clone, Debug, Default)]
struct Model {
    /// The last version a call acknowledged (`None`: created nowhere yet, or logged out).
    acked: Option<u64>,
    /// Whether the last acknowledged call was a logout.
    logged_out: bool,
    /// Versions written by calls that failed since (their outcome is unknown).
    unknown: Vec<u64>,
    /// A logout failed since the last acknowledged call.
    unknown_logout: bool,
}

impl Model {
    /// Whether a load that started after every call above could answer `found`.
    fn allows(&self, found: Option<u64>) -> bool {
        match found {
            // Logged out, maybe logged out, or never acknowledged.
            None => self.logged_out || self.unknown_logout || self.acked.is_none(),
            Some(v) => (self.acked == Some(v) && !self.logged_out) || self.unknown.contains(&v),
        }
    }
}

fn versioned(rec: &Record, v: u64) -> Record {
    let mut rec = rec.clone();
    rec.data.insert("v".to_owned(), serde_json::json!(v));
    rec
}

fn version(rec: &Record) -> Option<u64> {
    rec.data.get("v").and_then(serde_json::Value::as_u64)
}

/// Issue 13, show 1: sessions created, saved, loaded and logged out from
/// several tasks while the master fails over; every answer is checked against
/// a model of each user, and so is every session at the end, read from the
/// promoted master. 0 acknowledged writes lost and 0 logouts undone; errors
/// are allowed (while the master is away), and their window is printed.
async fn acknowledged_writes_survive(fault: Fault, replicas: usize, wait: u32) {
    let mut t = topology_with(replicas).await;
    wait_for_replicas(&t.master.url(), 1 + t.spares.len() as u32).await;
    let store = store_waiting_for(&t, wait).await;
    let stop = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let window = Arc::new(std::sync::Mutex::new((None::<Instant>, None::<Instant>)));
    let mut users = tokio::task::JoinSet::new();
    for task in 0..6u64 {
        let (store, stop, violations, errors, window) =
            (store.clone(), stop.clone(), violations.clone(), errors.clone(), window.clone());
        users.spawn(async move {
            let mut sessions: Vec<(Record, Model)> = Vec::new();
            let mut step = task;
            let failed = |what: String| {
                errors.fetch_add(1, Ordering::Relaxed);
                let mut w = window.lock().unwrap();
                let now = Instant::now();
                w.0.get_or_insert(now);
                w.1 = Some(now);
                tracing::debug!("{what}");
            };
            while !stop.load(Ordering::Relaxed) {
                step = step.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let pick = (step >> 33) as usize;
                if sessions.len() < 8 || pick.is_multiple_of(5) {
                    let mut rec = versioned(&record(&format!("t{task}")), 1);
                    let mut model = Model::default();
                    match store.create(&mut rec).await {
                        Ok(()) => model.acked = Some(1),
                        Err(err) => {
                            model.unknown.push(1);
                            failed(format!("create: {err}"));
                        }
                    }
                    sessions.push((rec, model));
                    continue;
                }
                let i = pick % sessions.len();
                let (rec, model) = &mut sessions[i];
                match store.load(&rec.id).await {
                    Ok(found) => {
                        let found = found.as_ref().and_then(version);
                        if !model.allows(found) {
                            violations.lock().unwrap().push(format!("load of {}: {found:?}, model {model:?}", rec.id));
                        }
                    }
                    Err(err) => failed(format!("load: {err}")),
                }
                if model.logged_out {
                    continue;
                }
                if pick.is_multiple_of(7) {
                    match store.delete(&rec.id).await {
                        Ok(()) => *model = Model { logged_out: true, ..Model::default() },
                        Err(err) => {
                            model.unknown_logout = true;
                            failed(format!("delete: {err}"));
                        }
                    }
                } else if model.acked.is_some() {
                    let next = model.acked.into_iter().chain(model.unknown.iter().copied()).max().unwrap_or(0) + 1;
                    *rec = versioned(rec, next);
                    match store.save(rec).await {
                        Ok(()) => {
                            // A logout whose outcome is unknown may have run:
                            // then this save brings nothing back (I1).
                            model.acked = Some(next);
                            model.unknown.clear();
                        }
                        Err(err) => {
                            model.unknown.push(next);
                            failed(format!("save: {err}"));
                        }
                    }
                }
            }
            sessions
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    match fault {
        Fault::Forced => {
            let _: redis::Value = redis::cmd("SENTINEL")
                .arg("FAILOVER")
                .arg(MASTER)
                .query_async(&mut conn(&t.sentinels[0]).await)
                .await
                .unwrap();
        }
        Fault::Frozen => t.master.freeze().unwrap(),
        Fault::Killed => t.master.kill(),
    }
    let master_port = t.master.port().to_string();
    loop {
        let addr: Vec<String> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER)
            .query_async(&mut conn(&t.sentinels[0]).await)
            .await
            .unwrap();
        if addr.get(1).is_some_and(|port| *port != master_port) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no failover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promoted = started.elapsed();
    if let Fault::Frozen = fault {
        // The demoted master resumes, runs what waited in its buffers, and
        // is made a replica of the new master (dropping what it alone held).
        t.master.thaw().unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    while let Some(sessions) = users.join_next().await {
        all.extend(sessions.unwrap());
    }
    let (mut acked, mut logouts) = (0, 0);
    let mut lost = Vec::new();
    for (rec, model) in &all {
        let found = store.load(&rec.id).await.unwrap().as_ref().and_then(version);
        acked += usize::from(model.acked.is_some());
        logouts += usize::from(model.logged_out);
        if !model.allows(found) {
            lost.push(format!("{}: found {found:?}, model {model:?}", rec.id));
        }
    }
    let span = match *window.lock().unwrap() {
        (Some(a), Some(b)) => format!("{:?} ({:?} to {:?} after the fault)", b - a, a - started, b - started),
        _ => "none".to_owned(),
    };
    eprintln!(
        "{fault:?}: replica promoted {promoted:?} after the fault; {} sessions ({acked} with an acknowledged \
         write, {logouts} logged out); {} failed calls, error window {span}",
        all.len(),
        errors.load(Ordering::Relaxed)
    );
    let during = violations.lock().unwrap().clone();
    assert!(during.is_empty(), "{} answers contradict the model: {:?}", during.len(), &during[..during.len().min(5)]);
    assert!(lost.is_empty(), "{} sessions lost or undone: {:?}", lost.len(), &lost[..lost.len().min(5)]);
    assert!(acked > 100 && logouts > 5, "the workload ran: {acked} acknowledged, {logouts} logouts");
}

/// One replica, and the Sentinel default: writes wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_failover_loses_no_acknowledged_write() {
    acknowledged_writes_survive(Fault::Forced, 1, 1).await;
}

/// Two replicas: the master keeps taking writes after the sentinels chose
/// which replica to promote, and the other one acknowledges them; so only
/// waiting for every replica keeps them through a failover the master did
/// not die in (a forced one, or one across a network partition).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_failover_with_two_replicas_loses_nothing_waiting_for_both() {
    acknowledged_writes_survive(Fault::Forced, 2, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_master_loses_no_acknowledged_write() {
    acknowledged_writes_survive(Fault::Frozen, 1, 1).await;
}

/// Two replicas, writes waiting for one: a crashed master takes no writes
/// after it, and the sentinels promote the replica that holds the most, so
/// one acknowledgement is enough; the other replica follows the new master,
/// so writes resume (with one replica, none would be left to acknowledge them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_loses_no_acknowledged_write() {
    acknowledged_writes_survive(Fault::Killed, 2, 1).await;
}

/// The store's connection to the master goes silent (a NAT entry or a load
/// balancer dropped it) while the master stays where it is, and the store's
/// deadline (400 ms) ends every wait before the socket timeout (2 s): no
/// command ever fails in redis-rs, and discovery keeps finding the same
/// address. A command given up leaves a `PING` behind whose silence makes the
/// next discovery connect anew. Before, the silent connection stayed for
/// good. (The sentinels watch the master through the proxy too, but with no
/// replica they cannot fail it over, and no write waits for one;
/// announcements are off, since their writes, with no deadline, would time
/// out and reconnect by chance.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_master_connection_is_replaced_when_the_deadline_ends_every_wait_first() {
    let master = RedisServer::start().unwrap();
    let proxy = crate::common::proxy::StallingProxy::start(master.port()).await;
    let sentinels: Vec<RedisServer> =
        (0..3).map(|_| RedisServer::start_sentinel(MASTER, proxy.port()).unwrap()).collect();
    let addrs: Vec<(&str, u16)> = sentinels.iter().map(|s| ("127.0.0.1", s.port())).collect();
    let store = MultiRedisStore::builder()
        .backend(
            Backend::sentinel("ha", addrs, MASTER)
                .wait_replicas(0)
                .socket_timeout(Duration::from_secs(2))
                .breaker(BreakerConfig::default().cool_down(Duration::from_secs(1))),
        )
        .deadline(Duration::from_millis(400))
        .announce(false)
        .build()
        .await
        .unwrap();
    let mut rec = record("ada");
    // The first request discovers the master and connects: it may take
    // longer than the deadline on a loaded machine.
    let mut warm_up = 0;
    while let Err(err) = store.create(&mut rec).await {
        warm_up += 1;
        assert!(warm_up < 50, "never connected: {err}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.load(&rec.id).await.unwrap().map(|r| r.id), Some(rec.id));
    let (after, errors) = proxy.stall_until_answered(&store, &rec, Duration::from_secs(8)).await;
    eprintln!("answered over a new connection after {after:?} ({errors} errors)");
}

/// As above, with writes that wait for a replica: they go over a second
/// connection to the master (a `WAIT` holds up its connection), and that
/// one goes silent too. A write given up leaves a `PING` behind on it, whose
/// silence makes the next write connect anew. Before, the master's own
/// connection was replaced but the writes' one stayed, so every save failed
/// for good. (The sentinels could fail the master over now, so they wait a
/// minute before they call it down.) A save first reads the master's clock
/// on the master's own connection, so the two are found out one after the
/// other: about 6.5 s here, with the breaker's cool-downs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_writes_connection_is_replaced_when_the_deadline_ends_every_wait_first() {
    let master = RedisServer::start().unwrap();
    let port = master.port().to_string();
    let _replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).unwrap();
    wait_for_replica(&master.url()).await;
    let proxy = crate::common::proxy::StallingProxy::start(master.port()).await;
    let patient = format!("sentinel down-after-milliseconds {MASTER} 60000");
    let sentinels: Vec<RedisServer> =
        (0..3).map(|_| RedisServer::start_sentinel_with(MASTER, proxy.port(), &[patient.as_str()]).unwrap()).collect();
    let addrs: Vec<(&str, u16)> = sentinels.iter().map(|s| ("127.0.0.1", s.port())).collect();
    let store = MultiRedisStore::builder()
        .backend(
            Backend::sentinel("ha", addrs, MASTER)
                .wait_replicas(1)
                .socket_timeout(Duration::from_secs(2))
                .breaker(BreakerConfig::default().cool_down(Duration::from_secs(1))),
        )
        .deadline(Duration::from_millis(400))
        .announce(false)
        .build()
        .await
        .unwrap();
    let mut rec = record("ada");
    let mut warm_up = 0;
    while let Err(err) = store.create(&mut rec).await {
        warm_up += 1;
        assert!(warm_up < 50, "never connected: {err}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rec = Mutex::new(rec);
    let attempts = AtomicU64::new(0);
    let (after, errors) = proxy
        .stall_until(Duration::from_secs(15), || async {
            let mut rec = rec.lock().await;
            rec.data.insert("n".into(), serde_json::json!(attempts.fetch_add(1, Ordering::SeqCst)));
            store.save(&rec).await
        })
        .await;
    eprintln!("a save answered over a new connection after {after:?} ({errors} errors)");
    let rec = rec.into_inner();
    assert_eq!(store.load(&rec.id).await.unwrap().as_ref(), Some(&rec), "the last save is what loads");
}
