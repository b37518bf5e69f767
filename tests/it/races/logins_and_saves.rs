//! Create on a colliding id; saves and copy-on-read racing
//! logouts never resurrect a session; a save of a not-yet-migrated session
//! lands in every write backend; sessions nobody deletes are never lost.

use std::sync::Arc;

use crate::common::{exists, pttl, raw_get, raw_set, record, servers};
use tower_sessions_core::SessionStore;
use tower_sessions_core::session::Record;
use tower_sessions_multi_redis_store::testing::RedisServer;
use tower_sessions_multi_redis_store::{Backend, CopyOnRead, Modes, MultiRedisStore, codec};

#[tokio::test]
async fn create_on_a_colliding_id_keeps_the_existing_session_and_draws_a_new_id() {
    let servers = servers(2);
    // One backend.
    let store = MultiRedisStore::builder().backend(Backend::url("a", servers[0].url())).build().await.unwrap();
    let mut existing = record("ada");
    store.create(&mut existing).await.unwrap();
    let mut newcomer = record("eve");
    newcomer.id = existing.id;
    store.create(&mut newcomer).await.unwrap();
    assert_ne!(newcomer.id, existing.id);
    assert_eq!(store.load(&existing.id).await.unwrap(), Some(existing.clone()));
    assert_eq!(store.load(&newcomer.id).await.unwrap(), Some(newcomer));

    // Two write backends, the id taken on the second only: the first
    // attempt's write into the first backend is undone.
    let store = MultiRedisStore::builder()
        .backend(Backend::url("a", servers[0].url()).prefix("two:"))
        .backend(Backend::url("b", servers[1].url()).prefix("two:").modes(Modes::WRITE))
        .build()
        .await
        .unwrap();
    let taken = record("taken");
    let taken_bytes = codec::encode(&taken).unwrap();
    let key = format!("two:{}", taken.id);
    raw_set(&servers[1], &key, &taken_bytes).await;
    let mut newcomer = record("eve");
    newcomer.id = taken.id;
    store.create(&mut newcomer).await.unwrap();
    assert_ne!(newcomer.id, taken.id);
    assert!(!exists(&servers[0], &key).await, "the colliding attempt was undone");
    assert_eq!(raw_get(&servers[1], &key).await, Some(taken_bytes), "existing untouched");
    for server in &servers {
        assert!(exists(server, &format!("two:{}", newcomer.id)).await);
    }
}

#[tokio::test]
async fn a_save_of_a_session_only_in_a_read_only_backend_lands_in_every_write_backend() {
    let servers = servers(3);
    let store = MultiRedisStore::builder()
        .backend(Backend::url("new1", servers[0].url()))
        .backend(Backend::url("new2", servers[1].url()).modes(Modes::WRITE))
        .backend(Backend::url("old", servers[2].url()).modes(Modes::READ_DELETE))
        .copy_on_read(CopyOnRead::Off)
        .build()
        .await
        .unwrap();
    let mut rec = record("ada");
    let key = rec.id.to_string();
    raw_set(&servers[2], &key, &codec::encode(&rec).unwrap()).await;

    rec.data.insert("cart".into(), serde_json::json!(["book"]));
    store.save(&rec).await.unwrap();
    let expected = codec::encode(&rec).unwrap();
    for server in &servers[..2] {
        assert_eq!(raw_get(server, &key).await.as_ref(), Some(&expected));
        let want = (rec.expiry_date - time::OffsetDateTime::now_utc()).whole_milliseconds() as i64;
        assert!((pttl(server, &key).await - want).abs() < 1_000);
    }
    assert_eq!(store.load(&rec.id).await.unwrap(), Some(rec.clone()));

    // Logout removes it everywhere.
    store.delete(&rec.id).await.unwrap();
    for server in &servers {
        assert!(!exists(server, &key).await);
    }
}

/// A store shape for the race test and where its sessions start.
struct Shape {
    name: &'static str,
    backends: Vec<(Modes, bool)>, // modes, holds the sessions at the start
    policy: CopyOnRead,
}

async fn race(shape: Shape, servers: &[RedisServer]) {
    let prefix = format!("{}:", shape.name);
    let mut builder = MultiRedisStore::builder().copy_on_read(shape.policy);
    for (i, (modes, _)) in shape.backends.iter().enumerate() {
        builder = builder.backend(Backend::url(format!("b{i}"), servers[i].url()).prefix(&prefix).modes(*modes));
    }
    let store = builder.build().await.unwrap();

    const SESSIONS: usize = 60;
    let mut doomed = Vec::new();
    let mut kept = Vec::new();
    for i in 0..2 * SESSIONS {
        let rec = record(&format!("user{i}"));
        let bytes = codec::encode(&rec).unwrap();
        for (j, (_, holds)) in shape.backends.iter().enumerate() {
            if *holds {
                raw_set(&servers[j], &format!("{prefix}{}", rec.id), &bytes).await;
            }
        }
        if i % 2 == 0 { doomed.push(rec) } else { kept.push(rec) }
    }

    let mut tasks = tokio::task::JoinSet::new();
    for (i, rec) in doomed.iter().chain(kept.iter()).enumerate() {
        let deleting = i < SESSIONS;
        for worker in 0..3 {
            let store = store.clone();
            let mut rec: Record = rec.clone();
            tasks.spawn(async move {
                if deleting && worker == 0 {
                    for _ in 0..(i * 7 % 13) {
                        tokio::task::yield_now().await;
                    }
                    store.delete(&rec.id).await.unwrap();
                    return;
                }
                for round in 0..8u32 {
                    if worker == 1 {
                        // A request: load (copy-on-read), modify, save.
                        match store.load(&rec.id).await.unwrap() {
                            Some(mut loaded) => {
                                loaded.data.insert("round".into(), serde_json::json!(round));
                                store.save(&loaded).await.unwrap();
                            }
                            None => assert!(deleting, "a session nobody deleted was lost"),
                        }
                    } else {
                        // A save from a request that loaded earlier.
                        rec.data.insert("saved".into(), serde_json::json!(round));
                        store.save(&rec).await.unwrap();
                    }
                    tokio::task::yield_now().await;
                }
            });
        }
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }

    for rec in &doomed {
        let key = format!("{prefix}{}", rec.id);
        for (i, server) in servers.iter().enumerate().take(shape.backends.len()) {
            assert!(!exists(server, &key).await, "{}: deleted session resurrected in b{i}", shape.name);
        }
        assert_eq!(store.load(&rec.id).await.unwrap(), None, "{}", shape.name);
    }
    for rec in &kept {
        let key = format!("{prefix}{}", rec.id);
        let loaded = store.load(&rec.id).await.unwrap().expect("kept session still loads");
        assert_eq!(loaded.data["user"], rec.data["user"], "{}", shape.name);
        // Every write backend that held it, and all of them when a source held it.
        let from_source = shape.backends.iter().any(|(m, holds)| *holds && !m.can_write());
        for (i, (modes, holds)) in shape.backends.iter().enumerate() {
            if modes.can_write() && (*holds || from_source) {
                assert!(exists(&servers[i], &key).await, "{}: kept session missing in b{i}", shape.name);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saves_loads_and_logouts_racing_never_resurrect_nor_lose_a_session() {
    let servers = Arc::new(servers(3));
    let shapes = vec![
        Shape { name: "single", backends: vec![(Modes::READ_WRITE, true)], policy: CopyOnRead::Copy },
        Shape {
            name: "migrating-copy",
            backends: vec![(Modes::READ_WRITE, false), (Modes::READ_DELETE, true)],
            policy: CopyOnRead::Copy,
        },
        Shape {
            name: "migrating-move",
            backends: vec![(Modes::READ_WRITE, false), (Modes::READ_DELETE, true)],
            policy: CopyOnRead::Move,
        },
        Shape {
            name: "migrating-off",
            backends: vec![(Modes::READ_WRITE, false), (Modes::READ_DELETE, true)],
            policy: CopyOnRead::Off,
        },
        Shape {
            name: "shadow-write",
            backends: vec![(Modes::READ_WRITE, true), (Modes::WRITE, false)],
            policy: CopyOnRead::Copy,
        },
        Shape {
            name: "two-writers-one-behind",
            backends: vec![(Modes::READ_WRITE, false), (Modes::READ_WRITE, true), (Modes::READ_DELETE, true)],
            policy: CopyOnRead::Copy,
        },
    ];
    for _ in 0..3 {
        for shape in &shapes {
            let shape = Shape { name: shape.name, backends: shape.backends.clone(), policy: shape.policy };
            race(shape, &servers).await;
            for s in servers.iter() {
                crate::common::flushall(s).await;
            }
        }
    }
}
