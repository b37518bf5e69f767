//! With a subscriber, every store operation runs in a `session_store` span
//! naming the operation and recording its outcome.

use crate::common::{Captured, record, servers};
use tower_sessions_core::SessionStore;
use tower_sessions_multi_redis_store::{Backend, MultiRedisStore};
use tracing_subscriber::fmt::format::FmtSpan;

#[tokio::test]
async fn operations_run_in_spans_with_their_outcome() {
    let servers = servers(1);
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let store = MultiRedisStore::builder().backend(Backend::url("main", servers[0].url())).build().await.unwrap();
    let mut rec = record("ada");
    store.create(&mut rec).await.unwrap();
    store.load(&rec.id).await.unwrap();
    store.save(&rec).await.unwrap();
    store.delete(&rec.id).await.unwrap();
    let dead = MultiRedisStore::builder()
        .backend(Backend::url("dead", "redis://127.0.0.1:1").socket_timeout(std::time::Duration::from_millis(200)))
        .build()
        .await
        .unwrap();
    dead.load(&rec.id).await.unwrap_err();

    let text = logs.text();
    for op in ["create", "load", "save", "delete"] {
        let span = format!("session_store{{op=\"{op}\" outcome=\"ok\"}}");
        assert!(text.lines().any(|l| l.contains(&span) && l.contains(" close ")), "no closed `{span}` in:\n{text}");
    }
    let failed = "session_store{op=\"load\" outcome=\"error\"}";
    assert!(text.lines().any(|l| l.contains(failed) && l.contains(" close ")), "{text}");
}
