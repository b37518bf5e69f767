//! The circuit breaker, the read and write policies, the deadline,
//! health and counters, on real servers.

use std::time::Duration;

use crate::common::{plant, record, servers};
use tower_sessions_core::SessionStore;
use tower_sessions_core::session::Id;
use tower_sessions_multi_redis_store::testing::{Partition, RedisServer};
use tower_sessions_multi_redis_store::{
    Backend, BreakerConfig, BreakerState, Modes, MultiRedisStore, ReadPolicy, WritePolicy,
};

const TIMEOUT: Duration = Duration::from_millis(200);

fn fast(b: Backend) -> Backend {
    b.socket_timeout(TIMEOUT)
        .breaker(BreakerConfig::default().failure_threshold(2).cool_down(Duration::from_millis(500)))
}

/// Freezes `server` until the guard is dropped.
struct Frozen<'a>(&'a RedisServer);
impl<'a> Frozen<'a> {
    fn new(server: &'a RedisServer) -> Self {
        server.freeze().unwrap();
        Frozen(server)
    }
}
impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = self.0.thaw();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_on_a_frozen_backend_skips_it_then_probes_and_closes() {
    let servers = servers(2);
    let (old, new) = (&servers[0], &servers[1]);
    // "old" is read first, so every load consults it.
    let store = MultiRedisStore::builder()
        .backend(fast(Backend::url("old", old.url()).modes(Modes::READ_DELETE)))
        .backend(fast(Backend::url("new", new.url())))
        .build()
        .await
        .unwrap();
    let mut rec = record("ada");
    store.create(&mut rec).await.unwrap();
    assert_eq!(store.load(&rec.id).await.unwrap(), Some(rec.clone()));

    let frozen = Frozen::new(old);
    // Two timeouts open the breaker; the session is still served by "new".
    for _ in 0..2 {
        assert_eq!(store.load(&rec.id).await.unwrap(), Some(rec.clone()));
    }
    let health = store.health();
    assert_eq!(health[0].breaker, BreakerState::Open);
    assert!(!health[0].up && health[0].last_error.as_deref().is_some_and(|e| e.contains("timed out")));
    assert_eq!((health[0].counters.timeouts, health[0].counters.breaker_trips), (2, 1));
    assert!(health[1].up && store.is_ready());

    // While open, "old" is not asked at all: no more timeouts, only refusals.
    for _ in 0..20 {
        assert_eq!(store.load(&rec.id).await.unwrap(), Some(rec.clone()));
    }
    let err = store.load(&Id::default()).await.unwrap_err().to_string();
    assert!(err.contains("backend `old`: skipped, circuit breaker open"), "{err}");
    let counters = store.health()[0].counters;
    assert_eq!(counters.timeouts, 2, "no command was sent while open");
    assert_eq!(counters.errors, 2 + 21);

    drop(frozen);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(store.health()[0].breaker, BreakerState::HalfOpen);
    // The probe succeeds and closes it.
    assert_eq!(store.load(&Id::default()).await.unwrap(), None);
    assert_eq!(store.health()[0].breaker, BreakerState::Closed);
    assert!(store.health()[0].up);
}

/// A partition's members each have their own breaker: the sessions of a
/// frozen member fail at once after two timeouts, while the other member's
/// are served on. Before, one breaker for the backend: the other member's
/// answers reset its count between the frozen member's timeouts, so it never
/// opened, and every request for the frozen member's sessions waited a whole
/// timeout (had it opened, it would have refused the healthy member too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_partition_member_has_its_own_breaker() {
    let servers = servers(2);
    let members = [Backend::url("a", servers[0].url()), Backend::url("b", servers[1].url())];
    let store = MultiRedisStore::builder().backend(fast(Backend::partitioned("pool", members))).build().await.unwrap();
    let partition = Partition::new([("a", 1), ("b", 1)]);
    let mut on = [Vec::new(), Vec::new()];
    while on[0].len() < 10 || on[1].len() < 10 {
        let mut rec = record("ada");
        store.create(&mut rec).await.unwrap();
        on[partition.member_of(&rec.id.to_string())].push(rec);
    }
    let frozen = Frozen::new(&servers[1]);
    for _round in 0..3 {
        for (a, b) in on[0].iter().zip(&on[1]) {
            assert_eq!(store.load(&a.id).await.unwrap().as_ref(), Some(a), "member a serves on");
            assert!(store.load(&b.id).await.is_err(), "member b is frozen");
        }
    }
    // The partition still serves: up (its last command succeeded), reporting
    // its worst member's breaker.
    assert_eq!(store.load(&on[0][0].id).await.unwrap().as_ref(), Some(&on[0][0]));
    let health = &store.health()[0];
    assert_eq!(health.breaker, BreakerState::Open, "the backend reports its worst member");
    assert!(health.up && store.is_ready(), "one member down does not take the partition down");
    // Two timeouts open b's breaker; then a probe per cool-down (500 ms) at
    // most, however slow the machine: before, one per load of b's (30).
    assert!(health.counters.timeouts < 10, "b's breaker opened after two timeouts: {:?}", health.counters);
    drop(frozen);
    tokio::time::sleep(Duration::from_millis(600)).await;
    for b in &on[1] {
        assert_eq!(store.load(&b.id).await.unwrap().as_ref(), Some(b), "b's probe closed its breaker");
    }
    assert_eq!(store.health()[0].breaker, BreakerState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_policies_fall_through_or_stop() {
    let mut servers = servers(2);
    let rec = record("ada");
    plant(&servers[1], "", &rec).await;
    let build = |policy| {
        MultiRedisStore::builder()
            .backend(fast(Backend::url("old", servers[0].url()).modes(Modes::READ_DELETE)))
            .backend(fast(Backend::url("new", servers[1].url())))
            .read_policy(policy)
            .build()
    };
    let (through, stop) =
        (build(ReadPolicy::FallThrough).await.unwrap(), build(ReadPolicy::StopOnError).await.unwrap());
    servers[0].kill();
    assert_eq!(through.load(&rec.id).await.unwrap(), Some(rec.clone()));
    let err = stop.load(&rec.id).await.unwrap_err().to_string();
    assert!(err.contains("backend `old`") && !err.contains("`new`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_backend_is_never_answered_for_by_an_older_copy() {
    let mut servers = servers(2);
    let store = MultiRedisStore::builder()
        .backend(fast(Backend::url("new", servers[0].url())))
        .backend(fast(Backend::url("old", servers[1].url()).modes(Modes::READ_DELETE)))
        .build()
        .await
        .unwrap();
    let mut rec = record("ada");
    rec.data.insert("role".into(), serde_json::json!("admin"));
    plant(&servers[1], "", &rec).await;
    // The first request copies it into "new"; the app then drops the role.
    assert!(store.load(&rec.id).await.unwrap().is_some());
    rec.data.insert("role".into(), serde_json::json!("guest"));
    store.save(&rec).await.unwrap();
    servers[0].kill();
    // "old" still holds the admin copy; it must not be served.
    let err = store.load(&rec.id).await.unwrap_err().to_string();
    assert!(err.contains("backend `new`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_policies_all_or_any() {
    let mut servers = servers(2);
    let build = |policy| {
        MultiRedisStore::builder()
            .backend(fast(Backend::url("a", servers[0].url())))
            .backend(fast(Backend::url("b", servers[1].url()).modes(Modes::WRITE)))
            .write_policy(policy)
            .build()
    };
    let (all, any) = (build(WritePolicy::All).await.unwrap(), build(WritePolicy::Any).await.unwrap());
    servers[1].kill();

    let mut rec = record("ada");
    let err = all.create(&mut rec).await.unwrap_err().to_string();
    assert!(err.contains("backend `b`"), "{err}");
    assert!(!crate::common::exists(&servers[0], &rec.id.to_string()).await, "undone on `a`");

    let mut rec = record("bob");
    any.create(&mut rec).await.unwrap();
    assert_eq!(any.load(&rec.id).await.unwrap(), Some(rec.clone()));
    rec.data.insert("n".into(), serde_json::json!(1));
    any.save(&rec).await.unwrap();
    assert!(all.save(&rec).await.is_err());
    // Logout is never "any": a backend that could not forget makes it fail.
    assert!(any.delete(&rec.id).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_bounds_an_operation_on_a_frozen_backend() {
    let servers = servers(2);
    let store = MultiRedisStore::builder()
        .backend(
            Backend::url("old", servers[0].url()).modes(Modes::READ_DELETE).socket_timeout(Duration::from_secs(30)),
        )
        .backend(Backend::url("new", servers[1].url()))
        .deadline(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    store.load(&Id::default()).await.unwrap(); // connected
    let _frozen = Frozen::new(&servers[0]);
    let err = store.load(&Id::default()).await.unwrap_err().to_string();
    assert!(
        err.contains("backend `old`: GET timed out after") && err.contains("load: deadline of 300ms passed"),
        "{err}"
    );
}

#[tokio::test]
async fn counters_count_hits_misses_and_copies() {
    let servers = servers(2);
    let store = MultiRedisStore::builder()
        .backend(Backend::url("new", servers[0].url()))
        .backend(Backend::url("old", servers[1].url()).modes(Modes::READ_DELETE))
        .build()
        .await
        .unwrap();
    let rec = record("ada");
    plant(&servers[1], "", &rec).await;
    store.load(&rec.id).await.unwrap(); // miss new, hit old, copy to new
    store.load(&rec.id).await.unwrap(); // hit new
    store.load(&Id::default()).await.unwrap(); // miss both
    let h = store.health();
    assert_eq!((h[0].counters.hits, h[0].counters.misses, h[0].counters.copies), (1, 2, 1));
    assert_eq!((h[1].counters.hits, h[1].counters.misses, h[1].counters.copies), (1, 1, 0));
    assert!(h.iter().all(|h| h.up && h.counters.errors == 0 && h.last_error.is_none()));
    let json = serde_json::to_value(&h).unwrap();
    assert_eq!(json[0]["breaker"], "closed");
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn counters_reach_the_metrics_facade() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let server = &servers(1)[0];
    let store = MultiRedisStore::builder().backend(Backend::url("main", server.url())).build().await.unwrap();
    let mut rec = record("ada");
    store.create(&mut rec).await.unwrap();
    store.load(&rec.id).await.unwrap();
    store.load(&Id::default()).await.unwrap();
    let counters: Vec<(String, String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) => {
                let label = key.key().labels().map(|l| format!("{}={}", l.key(), l.value())).collect::<String>();
                Some((key.key().name().to_owned(), label, n))
            }
            _ => None,
        })
        .collect();
    assert!(counters.contains(&("tower_sessions_redis_hits_total".into(), "backend=main".into(), 1)), "{counters:?}");
    assert!(counters.contains(&("tower_sessions_redis_misses_total".into(), "backend=main".into(), 1)), "{counters:?}");
}

/// A store that announces nothing, and gets no request while it is unready
/// (a load balancer stops routing to it), becomes ready again once its
/// backend is back: a readiness check that finds it unready probes the
/// backends in the background. Before, nothing ever reached the backend
/// again, so the store stayed unready for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_unready_store_becomes_ready_once_its_backend_is_back() {
    let server = RedisServer::start().unwrap();
    let store = MultiRedisStore::builder()
        .backend(fast(Backend::url("main", server.url())))
        .announce(false)
        .build()
        .await
        .unwrap();
    let mut rec = record("ada");
    store.create(&mut rec).await.unwrap();
    assert!(store.is_ready());
    {
        let _frozen = Frozen::new(&server);
        for _ in 0..2 {
            assert!(store.load(&rec.id).await.is_err());
        }
        assert_eq!(store.health()[0].breaker, BreakerState::Open);
        // Checked while down: the probes fail, and it stays unready.
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(1) {
            assert!(!store.is_ready());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // No request from here on: readiness checks only, every 100 ms.
    let thawed = std::time::Instant::now();
    while !store.is_ready() {
        assert!(thawed.elapsed() < Duration::from_secs(5), "never ready again: {:?}", store.health());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("ready {:?} after the thaw", thawed.elapsed());
    assert_eq!(store.load(&rec.id).await.unwrap(), Some(rec));
}

/// The same for a partition whose members both went down and one came back:
/// it serves that member's sessions, so the idle store is ready again.
/// Before, one flag for the partition's last command: the probe's `PING` of
/// the member still down marked the whole backend down after the other's
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_partition_is_ready_again_once_one_member_is_back() {
    let servers = servers(2);
    let members = [Backend::url("a", servers[0].url()), Backend::url("b", servers[1].url())];
    let store = MultiRedisStore::builder()
        .backend(fast(Backend::partitioned("pool", members)))
        .announce(false)
        .build()
        .await
        .unwrap();
    let partition = Partition::new([("a", 1), ("b", 1)]);
    let mut on: [Vec<tower_sessions_core::session::Record>; 2] = [Vec::new(), Vec::new()];
    while on[0].is_empty() || on[1].is_empty() {
        let mut rec = record("ada");
        store.create(&mut rec).await.unwrap();
        on[partition.member_of(&rec.id.to_string())].push(rec);
    }
    let frozen_b = Frozen::new(&servers[1]);
    {
        let _frozen_a = Frozen::new(&servers[0]);
        for _ in 0..2 {
            assert!(store.load(&on[0][0].id).await.is_err() && store.load(&on[1][0].id).await.is_err());
        }
        assert!(!store.is_ready());
    }
    // a is back, b is not; no request from here on.
    let thawed = std::time::Instant::now();
    while !store.is_ready() {
        assert!(thawed.elapsed() < Duration::from_secs(5), "never ready again: {:?}", store.health());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("ready {:?} after a's thaw", thawed.elapsed());
    // And it stays ready while b's probes keep failing.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(store.is_ready(), "ready, then not: {:?}", store.health());
    }
    assert_eq!(store.load(&on[0][0].id).await.unwrap().as_ref(), Some(&on[0][0]));
    drop(frozen_b);
}
