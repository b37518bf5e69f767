//! The seed's scenario through `SessionManagerLayer` in an axum app,
//! with a real HTTP client and its cookie jar.
//!
//! A user logs in while only "old" is configured. The app is switched to
//! `new: read+write, old: read+delete`. The user is still logged in, the
//! session is copied to "new" with its remaining TTL, and logout removes it
//! from both.

#[path = "../../../examples/shared/app.rs"]
mod app;

use crate::common::{pttl, servers};
use tower_sessions_multi_redis_store::testing::RedisServer;
use tower_sessions_multi_redis_store::{Backend, Modes, MultiRedisStore};

async fn keys(server: &RedisServer) -> Vec<String> {
    crate::common::session_keys(server).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_stay_logged_in_across_the_switch_and_logout_clears_both() {
    let servers = servers(2);
    let (old, new) = (&servers[0], &servers[1]);
    let client = reqwest::Client::builder().cookie_store(true).build().unwrap();

    // Before: the app knows only "old".
    let before =
        MultiRedisStore::builder().backend(Backend::url("old", old.url()).prefix("ds_")).build().await.unwrap();
    let (addr, server) = app::serve(app::app(before)).await.unwrap();
    let base = format!("http://{addr}");
    let login = client.post(format!("{base}/login/ada")).send().await.unwrap();
    assert_eq!(login.status(), 200);
    assert_eq!(client.get(format!("{base}/me")).send().await.unwrap().text().await.unwrap(), "ada (1 visits)");
    server.abort();
    let old_keys = keys(old).await;
    assert_eq!(old_keys.len(), 1, "one session in old: {old_keys:?}");
    assert!(keys(new).await.is_empty());
    let key = old_keys[0].clone();
    assert!(key.starts_with("ds_"));

    // Let the TTL visibly run down before the switch.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;

    // After: new read+write first, old read+delete.
    let after = MultiRedisStore::builder()
        .backend(Backend::url("new", new.url()).prefix("ds_"))
        .backend(Backend::url("old", old.url()).prefix("ds_").modes(Modes::READ_DELETE))
        .build()
        .await
        .unwrap();
    let (addr, _server) = app::serve(app::app(after)).await.unwrap();
    let base = format!("http://{addr}");
    let who = client.get(format!("{base}/whoami")).send().await.unwrap();
    assert_eq!(who.status(), 200, "still logged in after the switch");
    assert_eq!(who.text().await.unwrap(), "ada");

    // Copied to "new" by that read-only request, remaining TTL kept (within a second).
    assert_eq!(keys(new).await, vec![key.clone()]);
    let (ttl_old, ttl_new) = (pttl(old, &key).await, pttl(new, &key).await);
    assert!(ttl_old > 0 && (ttl_new - ttl_old).abs() < 1_000, "old {ttl_old} ms, new {ttl_new} ms");

    // A modifying request is served from "new" and updates it there.
    let me = client.get(format!("{base}/me")).send().await.unwrap();
    assert_eq!(me.text().await.unwrap(), "ada (2 visits)");
    let stored = crate::common::raw_get(new, &key).await.unwrap();
    let record = tower_sessions_multi_redis_store::codec::decode(&stored).unwrap();
    assert_eq!(record.data["visits"], serde_json::json!(2));

    // Logout (flush) removes it from both.
    let bye = client.post(format!("{base}/logout")).send().await.unwrap();
    assert_eq!(bye.status(), 200);
    assert!(keys(old).await.is_empty(), "gone from old");
    assert!(keys(new).await.is_empty(), "gone from new");
    let me = client.get(format!("{base}/me")).send().await.unwrap();
    assert_eq!(me.status(), 401, "logged out");
}
