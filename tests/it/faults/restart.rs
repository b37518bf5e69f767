//! A read backend killed with SIGKILL mid-test, then restarted on
//! the same port; the store recovers without being rebuilt.

use std::time::Duration;

use crate::common::{record, servers};
use tower_sessions_core::session::Id;
use tower_sessions_core::{SessionStore, session_store};
use tower_sessions_multi_redis_store::{Backend, Modes, MultiRedisStore};

#[tokio::test]
async fn a_killed_read_backend_fails_loudly_and_the_store_recovers_after_restart() {
    let mut servers = servers(2);
    // The dead one is asked first, so `load` has to fall through it.
    let store = MultiRedisStore::builder()
        .backend(
            Backend::url("old", servers[0].url()).modes(Modes::READ_DELETE).socket_timeout(Duration::from_millis(500)),
        )
        .backend(Backend::url("new", servers[1].url()))
        .build()
        .await
        .unwrap();
    let mut held = record("ada");
    store.create(&mut held).await.unwrap();
    assert_eq!(store.load(&held.id).await.unwrap(), Some(held.clone()));

    servers[0].kill();

    // Held elsewhere: found.
    assert_eq!(store.load(&held.id).await.unwrap(), Some(held.clone()));
    // Held nowhere: an error naming the dead backend, never "not found".
    match store.load(&Id::default()).await {
        Err(session_store::Error::Backend(msg)) => assert!(msg.contains("backend `old`"), "{msg}"),
        other => panic!("expected Err naming `old`, got {other:?}"),
    }
    // A logout that could not reach `old` is an error naming it.
    match store.delete(&held.id).await {
        Err(session_store::Error::Backend(msg)) => {
            assert!(msg.contains("backend `old`") && !msg.contains("`new`"), "{msg}")
        }
        other => panic!("expected Err naming `old`, got {other:?}"),
    }
    // Writes do not need `old`.
    let mut fresh = record("bob");
    store.create(&mut fresh).await.unwrap();

    servers[0].restart().unwrap();

    // The same store object recovers by itself (the first request may still
    // see the broken connection while it reconnects).
    let unknown = Id::default();
    let mut recovered = false;
    for _ in 0..50 {
        if let Ok(None) = store.load(&unknown).await {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "store did not recover after the restart");
    store.delete(&fresh.id).await.unwrap();
    assert_eq!(store.load(&fresh.id).await.unwrap(), None);
    crate::common::acceptance(&store, "after restart").await;
}
