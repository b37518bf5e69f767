//! Issue 4: a Redis Cluster backend on a real three-primary cluster: the
//! acceptance suite, resharding under load, and a migration into it.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{acceptance, raw_set, record};
use tokio::sync::Mutex;
use tower_sessions_core::SessionStore;
use tower_sessions_multi_redis_store::testing::RedisServer;
use tower_sessions_multi_redis_store::{Backend, MigrateOptions, Migrator, Modes, MultiRedisStore, codec};

fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(args).output().expect("redis-cli on PATH");
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three primaries, all slots assigned, state ok.
fn cluster() -> Vec<RedisServer> {
    cluster_with(None)
}

/// The same, every node requiring `password` when given.
fn cluster_with(password: Option<&str>) -> Vec<RedisServer> {
    let mut server_args =
        vec!["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "3000"];
    let mut auth: Vec<&str> = Vec::new();
    if let Some(pw) = password {
        server_args.extend(["--requirepass", pw, "--masterauth", pw]);
        auth.extend(["-a", pw, "--no-auth-warning"]);
    }
    let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_with(&server_args).unwrap()).collect();
    let mut args: Vec<String> = auth.iter().map(|a| (*a).to_owned()).collect();
    args.extend(["--cluster".into(), "create".into()]);
    args.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())));
    args.extend(["--cluster-replicas".into(), "0".into(), "--cluster-yes".into()]);
    redis_cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    for _ in 0..100 {
        let ok = nodes.iter().all(|n| {
            let port = n.port().to_string();
            let mut info_args = auth.clone();
            info_args.extend(["-p", &port, "CLUSTER", "INFO"]);
            redis_cli(&info_args).contains("cluster_state:ok")
        });
        if ok {
            return nodes;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("cluster did not become ok");
}

fn backend(nodes: &[RedisServer]) -> Backend {
    Backend::cluster("cluster", nodes.iter().map(|n| ("127.0.0.1", n.port())).collect::<Vec<_>>())
}

fn node_id(node: &RedisServer) -> String {
    redis_cli(&["-p", &node.port().to_string(), "CLUSTER", "MYID"]).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acceptance_suite_passes_on_a_cluster() {
    let nodes = cluster();
    let store = MultiRedisStore::builder().backend(backend(&nodes)).build().await.unwrap();
    acceptance(&store, "cluster").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_under_load_fails_no_request_and_loses_no_session() {
    let nodes = cluster();
    let store = MultiRedisStore::builder().backend(backend(&nodes)).build().await.unwrap();
    let mut sessions = Vec::new();
    for i in 0..300 {
        let mut rec = record(&format!("u{i}"));
        store.create(&mut rec).await.unwrap();
        sessions.push(Arc::new(Mutex::new(rec)));
    }
    let sessions = Arc::new(sessions);
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let mut load = tokio::task::JoinSet::new();
    for t in 0..4usize {
        let (store, sessions, stop, requests) = (store.clone(), sessions.clone(), stop.clone(), requests.clone());
        load.spawn(async move {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 13) % sessions.len();
                let mut rec = sessions[i].lock().await;
                let loaded = store.load(&rec.id).await.unwrap_or_else(|e| panic!("load failed during resharding: {e}"));
                assert_eq!(loaded.as_ref().map(|r| &r.data), Some(&rec.data), "session {i}");
                let n = rec.data.get("n").and_then(|v| v.as_u64()).unwrap_or(0) + 1;
                rec.data.insert("n".into(), serde_json::json!(n));
                store.save(&rec).await.unwrap_or_else(|e| panic!("save failed during resharding: {e}"));
                let mut fresh = record("new");
                store.create(&mut fresh).await.unwrap_or_else(|e| panic!("create failed during resharding: {e}"));
                requests.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Move 3000 slots from the first primary to the second (MIGRATE + SETSLOT).
    let (from, to, port) = (node_id(&nodes[0]), node_id(&nodes[1]), nodes[0].port().to_string());
    tokio::task::spawn_blocking(move || {
        redis_cli(&[
            "--cluster",
            "reshard",
            &format!("127.0.0.1:{port}"),
            "--cluster-from",
            &from,
            "--cluster-to",
            &to,
            "--cluster-slots",
            "3000",
            "--cluster-yes",
            "--cluster-pipeline",
            "50",
        ])
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(r) = load.join_next().await {
        r.unwrap();
    }
    eprintln!("resharding: {} requests, none failed", requests.load(Ordering::Relaxed));
    assert!(requests.load(Ordering::Relaxed) > 100);
    for rec in sessions.iter() {
        let rec = rec.lock().await;
        assert_eq!(store.load(&rec.id).await.unwrap().map(|r| r.data), Some(rec.data.clone()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_from_a_standalone_backend_into_a_cluster_moves_everything() {
    let nodes = cluster();
    let old = RedisServer::start().unwrap();
    let app = MultiRedisStore::builder()
        .backend(backend(&nodes))
        .backend(Backend::url("old", old.url()).modes(Modes::READ_DELETE))
        .build()
        .await
        .unwrap();
    let mut records = Vec::new();
    for i in 0..1000 {
        let rec = record(&format!("u{i}"));
        raw_set(&old, &rec.id.to_string(), &codec::encode(&rec).unwrap()).await;
        records.push(rec);
    }
    let migrator = Migrator::for_store(&app, MigrateOptions::default().move_sessions(true).batch_size(200)).unwrap();
    let report = migrator.run(|_| {}, std::future::pending()).await.unwrap();
    assert!(report.finished && report.is_clean(), "{report:?}");
    assert_eq!(report.progress.copied, 1000);
    let stats = app.stats().await;
    assert_eq!(stats[0].sessions, Some(1000), "every primary counted: {stats:?}");
    assert_eq!(stats[1].sessions, Some(0));
    for node in &nodes {
        let keys = redis_cli(&["-p", &node.port().to_string(), "DBSIZE"]);
        assert!(keys.trim().parse::<u64>().unwrap() > 200, "spread over the primaries");
    }
    for rec in &records {
        assert_eq!(app.load(&rec.id).await.unwrap().as_ref(), Some(rec));
    }
    // And back out of the cluster: SCAN walks every primary.
    let back = MultiRedisStore::builder()
        .backend(Backend::url("old", old.url()))
        .backend(backend(&nodes).modes(Modes::READ_DELETE))
        .build()
        .await
        .unwrap();
    let report = Migrator::for_store(&back, MigrateOptions::default().move_sessions(true))
        .unwrap()
        .run(|_| {}, std::future::pending())
        .await
        .unwrap();
    assert_eq!(report.progress.copied, 1000, "{report:?}");
    assert_eq!(back.stats().await[1].sessions, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_protected_cluster_from_a_config_file() {
    use std::io::Write;
    let nodes = cluster_with(Some("cluster-pw"));
    let seeds: Vec<String> = nodes.iter().map(|n| format!("\"127.0.0.1:{}\"", n.port())).collect();
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    write!(
        file,
        "[[backends]]\nname = \"cluster\"\nmodes = [\"read\", \"write\"]\ncluster = [{}]\npassword = \"cluster-pw\"\nprefix = \"s:\"\n",
        seeds.join(", ")
    )
    .unwrap();
    let store = MultiRedisStore::from_config_file(file.path()).await.unwrap();
    acceptance(&store, "cluster with a password, from a file").await;
    assert!(!format!("{store:?}").contains("cluster-pw"));
}
