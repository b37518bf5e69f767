//! Issue 4: a Sentinel backend against a real topology (one master, one
//! replica, three sentinels): the acceptance suite, then a forced failover
//! under continuous load.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{acceptance, conn, record};
use tokio::sync::Mutex;
use tower_sessions_core::SessionStore;
use tower_sessions_core::session::Record;
use tower_sessions_multi_redis_store::testing::RedisServer;
use tower_sessions_multi_redis_store::{Backend, BreakerConfig, MultiRedisStore};

const MASTER: &str = "sessions";

struct Topology {
    master: RedisServer,
    replica: RedisServer,
    sentinels: Vec<RedisServer>,
}

async fn topology() -> Topology {
    let master = RedisServer::start().unwrap();
    let port = master.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).unwrap();
    let sentinels: Vec<RedisServer> =
        (0..3).map(|_| RedisServer::start_sentinel(MASTER, master.port()).unwrap()).collect();
    // Wait until the sentinels know the replica (needed for a failover).
    for _ in 0..100 {
        let replicas: redis::Value = redis::cmd("SENTINEL")
            .arg("REPLICAS")
            .arg(MASTER)
            .query_async(&mut conn(&sentinels[0]).await)
            .await
            .unwrap();
        if matches!(&replicas, redis::Value::Array(r) if !r.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Topology { master, replica, sentinels }
}

async fn store(t: &Topology) -> MultiRedisStore {
    let sentinels: Vec<(&str, u16)> = t.sentinels.iter().map(|s| ("127.0.0.1", s.port())).collect();
    MultiRedisStore::builder()
        .backend(
            Backend::sentinel("ha", sentinels, MASTER)
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
    let mut fresh = record("after");
    store.create(&mut fresh).await.unwrap();
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
    // The store's connection to the first sentinel asked for the master
    // last and has lived through every re-check.
    let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut conn(&t.sentinels[0]).await).await.unwrap();
    let askers: Vec<&str> = clients.lines().filter(|l| l.contains("cmd=sentinel|get-master-addr-by-name")).collect();
    assert_eq!(askers.len(), 1, "one connection asks for the master:\n{clients}");
    let age: u64 = askers[0]
        .split_whitespace()
        .find_map(|f| f.strip_prefix("age="))
        .and_then(|a| a.parse().ok())
        .expect("CLIENT LIST has age=");
    assert!(age >= 3, "the asking connection is {age} s old: re-checks opened new ones\n{clients}");
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
