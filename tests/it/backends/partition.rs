//! The partitioned backend (weighted rendezvous hashing) on real
//! servers: shares, movement when a member is added, a pinned mapping, the
//! acceptance suite, copy-on-read and migrations into and out of a partition,
//! and both configuration shapes.

use std::io::Write;

use crate::common::{acceptance, conn, plant, record, servers};
use redis::AsyncCommands;
use tower_sessions_core::SessionStore;
use tower_sessions_core::session::Id;
use tower_sessions_multi_redis_store::migrate::{self, Migrator};
use tower_sessions_multi_redis_store::testing::Partition;
use tower_sessions_multi_redis_store::testing::RedisServer;
use tower_sessions_multi_redis_store::{Backend, Modes, MultiRedisStore};

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|_| Id::default().to_string()).collect()
}

#[test]
fn each_member_gets_its_weight_within_two_points() {
    let partition = Partition::new([("a", 1), ("b", 1), ("c", 2)]);
    let ids = ids(100_000);
    let mut counts = [0usize; 3];
    for id in &ids {
        counts[partition.member_of(id)] += 1;
    }
    for (count, want) in counts.iter().zip([25.0, 25.0, 50.0]) {
        let share = *count as f64 / 1000.0;
        assert!((share - want).abs() <= 2.0, "{counts:?}");
    }
}

#[test]
fn adding_a_member_moves_only_its_share_and_only_to_it() {
    let before = Partition::new([("a", 1), ("b", 1), ("c", 2)]);
    let after = Partition::new([("a", 1), ("b", 1), ("c", 2), ("d", 1)]);
    let ids = ids(100_000);
    let mut moved = 0;
    for id in &ids {
        let (was, is) = (before.member_of(id), after.member_of(id));
        if was != is {
            assert_eq!(is, 3, "an id moved between old members");
            moved += 1;
        }
    }
    let share = moved as f64 / 1000.0;
    assert!(share <= 20.0 + 2.0, "moved {share}% (its weight share is 20%)");
    assert!(share >= 20.0 - 2.0, "the new member takes its share: {share}%");
}

#[test]
fn the_mapping_of_fixed_ids_is_pinned() {
    // Changing this breaks every deployed partition: sessions would move.
    let partition = Partition::new([("a", 1), ("b", 1), ("c", 2)]);
    let got: Vec<usize> =
        (0..16i128).map(|n| partition.member_of(&Id(n * 0x1234_5678_9abc_def1).to_string())).collect();
    assert_eq!(got, [0, 0, 0, 2, 2, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2, 1]);
}

/// A partition over three servers, reached by URL, host/port and unix socket.
fn pool(name: &str, s: &[RedisServer]) -> Backend {
    Backend::partitioned(
        name,
        [
            Backend::url("a", s[0].url()),
            Backend::tcp("b", "127.0.0.1", s[1].port()),
            Backend::unix("c", s[2].unix_socket()).weight(2),
        ],
    )
}

async fn keys(server: &RedisServer) -> Vec<String> {
    crate::common::session_keys(server).await
}

#[tokio::test]
async fn the_acceptance_suite_passes_on_a_partition_and_sessions_land_where_they_hash() {
    let s = servers(3);
    let store = MultiRedisStore::builder().backend(pool("pool", &s)).build().await.unwrap();
    acceptance(&store, "partition").await;
    let left_by_acceptance = store.stats().await[0].sessions.unwrap();

    let partition = Partition::new([("a", 1), ("b", 1), ("c", 2)]);
    let mut created = Vec::new();
    for i in 0..60 {
        let mut rec = record(&format!("u{i}"));
        store.create(&mut rec).await.unwrap();
        created.push(rec.id.to_string());
    }
    for id in &created {
        let home = partition.member_of(id);
        for (m, server) in s.iter().enumerate() {
            let here = keys(server).await.contains(id);
            assert_eq!(here, m == home, "{id} on member {m}");
        }
    }
    let stats = store.stats().await;
    assert_eq!(stats[0].sessions, Some(60 + left_by_acceptance), "stats walk every member: {stats:?}");
}

#[tokio::test]
async fn copy_on_read_and_migration_into_a_partition() {
    let s = servers(4);
    let old = &s[3];
    let app = MultiRedisStore::builder()
        .backend(pool("new", &s[..3]))
        .backend(Backend::url("old", old.url()).modes(Modes::READ_DELETE))
        .build()
        .await
        .unwrap();
    acceptance(&app, "partition + old").await;
    let left_by_acceptance = app.stats().await[0].sessions.unwrap() as usize;
    let mut records = Vec::new();
    for i in 0..500 {
        let rec = record(&format!("u{i}"));
        plant(old, "", &rec).await;
        records.push(rec);
    }
    // One user comes back: copied into its member.
    assert_eq!(app.load(&records[0].id).await.unwrap(), Some(records[0].clone()));
    let report = Migrator::for_store(&app, migrate::Options::default().move_sessions(true))
        .unwrap()
        .run(|_| {}, std::future::pending())
        .await
        .unwrap();
    assert!(report.finished && report.is_clean(), "{report:?}");
    assert_eq!(report.progress.copied + report.progress.already_present, 500);
    assert!(keys(old).await.is_empty());
    let total: usize = {
        let mut n = 0;
        for server in &s[..3] {
            n += keys(server).await.len();
        }
        n
    };
    assert_eq!(total, 500 + left_by_acceptance);
    for rec in &records {
        assert_eq!(app.load(&rec.id).await.unwrap().as_ref(), Some(rec));
    }
}

#[tokio::test]
async fn migration_out_of_a_partition_scans_every_member() {
    let s = servers(4);
    let app = MultiRedisStore::builder()
        .backend(Backend::url("new", s[3].url()))
        .backend(pool("old", &s[..3]).modes(Modes::READ_DELETE))
        .build()
        .await
        .unwrap();
    let writer = MultiRedisStore::builder().backend(pool("old", &s[..3])).build().await.unwrap();
    for i in 0..300 {
        let mut rec = record(&format!("u{i}"));
        writer.create(&mut rec).await.unwrap();
    }
    for server in &s[..3] {
        assert!(!keys(server).await.is_empty(), "every member holds some");
    }
    let migrator = Migrator::for_store(&app, migrate::Options::default().move_sessions(true).batch_size(50)).unwrap();
    let report = migrator.run(|_| {}, std::future::pending()).await.unwrap();
    assert!(report.finished && report.is_clean());
    assert_eq!(report.progress.copied, 300);
    assert_eq!(keys(&s[3]).await.len(), 300);
    for server in &s[..3] {
        assert!(keys(server).await.is_empty());
    }
    assert_eq!(migrator.verify().await.unwrap().checked, 0);
}

#[tokio::test]
async fn partitions_load_from_both_config_shapes() {
    let s = servers(3);
    let mut toml = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    write!(
        toml,
        "[[backends]]\nname = \"pool\"\nmodes = [\"read\", \"write\"]\nprefix = \"p:\"\n\n\
         [[backends.members]]\nurl = \"{}\"\n\n[[backends.members]]\nhost = \"127.0.0.1\"\nport = {}\n\n\
         [[backends.members]]\nname = \"c\"\nunix_socket = \"{}\"\nweight = 2\n",
        s[0].url(),
        s[1].port(),
        s[2].unix_socket().display()
    )
    .unwrap();
    let store = MultiRedisStore::from_config_file(toml.path()).await.unwrap();
    acceptance(&store, "partition from TOML").await;

    // The seed's SESSION_REDIS_POOL with SESSION_REDIS_WEIGHT.
    let mut json = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    write!(
        json,
        r#"[{{"backend": "0", "modes": ["read", "write"],
             "setting": {{"SESSION_REDIS_PREFIX": "session", "SESSION_REDIS_SOCKET_TIMEOUT": 1,
                         "SESSION_REDIS_RETRY_ON_TIMEOUT": false,
                         "SESSION_REDIS_POOL": [
               {{"SESSION_REDIS_HOST": "127.0.0.1", "SESSION_REDIS_PORT": {}, "SESSION_REDIS_DB": 0,
                "SESSION_REDIS_PASSWORD": null, "SESSION_REDIS_UNIX_DOMAIN_SOCKET_PATH": null,
                "SESSION_REDIS_URL": null, "SESSION_REDIS_WEIGHT": 1}},
               {{"SESSION_REDIS_UNIX_DOMAIN_SOCKET_PATH": "{}", "SESSION_REDIS_WEIGHT": 1}},
               {{"SESSION_REDIS_URL": "{}", "SESSION_REDIS_WEIGHT": 2}}]}}}}]"#,
        s[0].port(),
        s[1].unix_socket().display(),
        s[2].url()
    )
    .unwrap();
    let store = MultiRedisStore::from_config_file(json.path()).await.unwrap();
    acceptance(&store, "partition from the seed's JSON").await;
    for i in 0..30 {
        let mut rec = record(&format!("u{i}"));
        store.create(&mut rec).await.unwrap();
    }
    let mut spread = 0;
    for server in &s {
        let k: Vec<String> = conn(server).await.keys("session*").await.unwrap();
        spread += usize::from(!k.is_empty());
    }
    assert_eq!(spread, 3, "sessions spread over every member");
}
