//! Show 4, made deterministic: the exact interleavings in which a copy into
//! a write backend could outlive a logout, forced with real servers.
//!
//! * `CLIENT PAUSE <ms> WRITE` on the old server holds the logout's `DEL`
//!   there while reads go on: a copy lands in "new" after the logout cleared
//!   it, and its check still sees the session in "old". The logout's second
//!   round must remove it.
//! * A delaying proxy in front of "new" for one app instance: its copy lands
//!   after another instance's logout finished entirely. The copy's check must
//!   find the session gone from "old" and undo it.

mod common;

use std::time::Duration;

use common::proxy::DelayProxy;
use common::{conn, exists, raw_set, record, servers};
use tower_sessions_core::SessionStore;
use tower_sessions_multi_redis_store::{Backend, CopyOnRead, Modes, MultiRedisStore, codec};

async fn store(new_url: String, old_url: String, policy: CopyOnRead) -> MultiRedisStore {
    MultiRedisStore::builder()
        .backend(Backend::url("new", new_url))
        .backend(Backend::url("old", old_url).modes(Modes::READ_DELETE))
        .copy_on_read(policy)
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_landing_while_the_logout_is_half_done_is_removed_by_its_second_round() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    for policy in [CopyOnRead::Copy, CopyOnRead::Move] {
        // Two app instances (two connections each): one logs out, the other
        // serves the same users. (Within one instance the multiplexed
        // connection to "old" already queues reads behind the paused DEL.)
        let app = store(new.url(), old.url(), policy).await;
        let other = store(new.url(), old.url(), policy).await;
        let (loaded, saved) = (record("loaded"), record("saved"));
        for rec in [&loaded, &saved] {
            raw_set(old, &rec.id.to_string(), &codec::encode(rec).unwrap()).await;
        }

        // Writes on "old" wait 400 ms; reads do not.
        let _: () =
            redis::cmd("CLIENT").arg("PAUSE").arg(400).arg("WRITE").query_async(&mut conn(old).await).await.unwrap();
        let logouts = {
            let app = app.clone();
            let ids = [loaded.id, saved.id];
            tokio::spawn(async move {
                for id in ids {
                    let app = app.clone();
                    tokio::spawn(async move { app.delete(&id).await }).await.unwrap().unwrap();
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Meanwhile requests of the same users: a load copies into "new", a
        // save fills "new"; both check "old", where the session still is.
        let copy = {
            let other = other.clone();
            tokio::spawn(async move { other.load(&loaded.id).await })
        };
        let mut modified = saved.clone();
        modified.data.insert("cart".into(), serde_json::json!(1));
        let fill = {
            let other = other.clone();
            tokio::spawn(async move { other.save(&modified).await })
        };
        assert!(copy.await.unwrap().unwrap().is_some(), "found before the logout finished");
        fill.await.unwrap().unwrap();
        if policy == CopyOnRead::Copy {
            // (With Move the loader's own DEL on "old" waits for the pause,
            // finds the session gone and undoes the copy before returning.)
            assert!(exists(new, &loaded.id.to_string()).await, "the copy landed during the logout");
        }
        logouts.await.unwrap();

        for rec in [&loaded, &saved] {
            let key = rec.id.to_string();
            assert!(!exists(new, &key).await, "{policy:?}: resurrected in new");
            assert!(!exists(old, &key).await, "{policy:?}: still in old");
            assert_eq!(app.load(&rec.id).await.unwrap(), None);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_landing_after_a_finished_logout_is_undone() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    let proxy = DelayProxy::start(new.port(), Duration::from_millis(150)).await;
    for policy in [CopyOnRead::Copy, CopyOnRead::Move] {
        // Two app instances: a slow path to "new" for the first only.
        let slow = store(proxy.url(), old.url(), policy).await;
        let fast = store(new.url(), old.url(), policy).await;
        let (loaded, saved) = (record("loaded"), record("saved"));
        for rec in [&loaded, &saved] {
            raw_set(old, &rec.id.to_string(), &codec::encode(rec).unwrap()).await;
        }
        // Warm the proxied connection so timings below are one hop each.
        slow.load(&record("warm").id).await.unwrap();

        // t=0: GET/SET XX on "new" reach it at t=150; at t~150 "old" is read
        // and the copy is sent, landing at t~300.
        let copy = {
            let slow = slow.clone();
            tokio::spawn(async move { slow.load(&loaded.id).await })
        };
        let mut modified = saved.clone();
        modified.data.insert("cart".into(), serde_json::json!(1));
        let fill = {
            let slow = slow.clone();
            tokio::spawn(async move { slow.save(&modified).await })
        };
        // t=220: the other instance logs both users out, entirely.
        tokio::time::sleep(Duration::from_millis(220)).await;
        fast.delete(&loaded.id).await.unwrap();
        fast.delete(&saved.id).await.unwrap();
        assert!(!exists(new, &loaded.id.to_string()).await);

        let _ = copy.await.unwrap();
        let _ = fill.await.unwrap();
        // Undo travels the slow path too.
        tokio::time::sleep(Duration::from_millis(400)).await;
        for rec in [&loaded, &saved] {
            let key = rec.id.to_string();
            assert!(!exists(new, &key).await, "{policy:?}: resurrected in new");
            assert_eq!(fast.load(&rec.id).await.unwrap(), None);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_whose_copy_cannot_be_confirmed_fails_instead_of_pretending() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    let proxy = DelayProxy::start(new.port(), Duration::from_millis(150)).await;
    let app = MultiRedisStore::builder()
        .backend(Backend::url("new", proxy.url()))
        .backend(Backend::url("old", old.url()).modes(Modes::READ_DELETE).socket_timeout(Duration::from_millis(200)))
        .copy_on_read(CopyOnRead::Off)
        .build()
        .await
        .unwrap();
    app.load(&record("warm").id).await.unwrap(); // connected
    let rec = record("ada");
    raw_set(old, &rec.id.to_string(), &codec::encode(&rec).unwrap()).await;
    let mut modified = rec.clone();
    modified.data.insert("cart".into(), serde_json::json!(1));

    // t=0 SET XX "new" (lands at 150: miss), EXISTS "old" (yes), SET NX "new"
    // (lands at ~300), then EXISTS "old" to confirm: "old" is frozen by then.
    let save = tokio::spawn({
        let app = app.clone();
        let modified = modified.clone();
        async move { app.save(&modified).await }
    });
    tokio::time::sleep(Duration::from_millis(220)).await;
    old.freeze().unwrap();
    let result = save.await.unwrap();
    old.thaw().unwrap();
    let err = result.expect_err("an unconfirmed save is not a success").to_string();
    assert!(err.contains("backend `old`"), "{err}");
    tokio::time::sleep(Duration::from_millis(400)).await; // the undo travels the slow path
    assert!(!exists(new, &rec.id.to_string()).await, "the unconfirmed copy was undone");
    assert_eq!(app.load(&rec.id).await.unwrap(), Some(rec), "the session is intact in old");
}

/// A load (copy-on-read) or a save (filling "new" from "old") dropped while
/// its copy waits for the check against the source (a client that went away)
/// must still finish the check: here the source loses the session between
/// the copy and the check, so the copy must be undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_during_its_copy_check_still_checks_the_copy() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    let proxy = DelayProxy::start(old.port(), Duration::from_millis(300)).await;
    for (policy, saving) in [(CopyOnRead::Copy, false), (CopyOnRead::Move, false), (CopyOnRead::Off, true)] {
        let store = store(new.url(), proxy.url(), policy).await;
        // Warm the proxied connection so timings below are one hop each.
        store.load(&record("warm").id).await.unwrap();
        let rec = record("ada");
        let key = rec.id.to_string();
        raw_set(old, &key, &codec::encode(&rec).unwrap()).await;

        // t=0: GET (load) or EXISTS (save) reaches "old" at t=300; the copy
        // lands in "new" at once; the check is sent then and reaches "old" at
        // t~600.
        let watcher = {
            let (new_conn, mut old_conn, key) = (conn(new).await, conn(old).await, key.clone());
            tokio::spawn(async move {
                let mut new_conn = new_conn;
                for _ in 0..400 {
                    let copied: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut new_conn).await.unwrap();
                    if copied {
                        // The source loses the session before the check arrives.
                        let _: () = redis::cmd("DEL").arg(&key).query_async(&mut old_conn).await.unwrap();
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                false
            })
        };
        // t=450: the request is dropped while the check is on its way.
        let request = async { if saving { store.save(&rec).await } else { store.load(&rec.id).await.map(|_| ()) } };
        let dropped = tokio::time::timeout(Duration::from_millis(450), request).await;
        assert!(dropped.is_err(), "{policy:?}: the request was to be cut short during its check");
        assert!(watcher.await.unwrap(), "{policy:?}: the copy landed in new");
        // The check (and the undo) finish anyway.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!exists(new, &key).await, "{policy:?}: an unchecked copy stayed in new");
        assert!(!exists(old, &key).await);
    }
}
