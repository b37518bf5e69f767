//! "Sign out other devices" and "your devices" in an axum app, on the
//! store's per-user session index (`user_key`). Shared by
//! `examples/devices.rs` and the HTTP test of the index.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use tower_sessions::{Session, SessionManagerLayer};
use tower_sessions_multi_redis_store::MultiRedisStore;

/// The routes. `store` must be built with `.user_key("user")`.
pub fn app(store: MultiRedisStore) -> Router {
    Router::new()
        .route("/login/{user}", post(login))
        .route("/me", get(me))
        .route("/devices", get(devices))
        .route("/sign-out-others", post(sign_out_others))
        .route("/sign-out-everywhere", post(sign_out_everywhere))
        // Plain http on localhost: the cookie must not be `Secure`.
        .layer(SessionManagerLayer::new(store.clone()).with_secure(false))
        .with_state(store)
}

fn internal<E>(_: E) -> StatusCode {
    StatusCode::INTERNAL_SERVER_ERROR
}

async fn login(session: Session, Path(user): Path<String>) -> Result<String, StatusCode> {
    // A new id at login prevents session fixation; the store indexes the
    // session under `user` when it is saved.
    session.cycle_id().await.map_err(internal)?;
    session.insert("user", &user).await.map_err(internal)?;
    Ok(format!("welcome {user}"))
}

/// The logged-in user, or 401.
async fn user(session: &Session) -> Result<String, StatusCode> {
    session.get::<String>("user").await.map_err(internal)?.ok_or(StatusCode::UNAUTHORIZED)
}

async fn me(session: Session) -> Result<String, StatusCode> {
    user(&session).await
}

/// How many sessions the user has, and when each expires (never the other
/// sessions' ids: each is a bearer token).
async fn devices(State(store): State<MultiRedisStore>, session: Session) -> Result<String, StatusCode> {
    let user = user(&session).await?;
    let sessions = store.sessions_of(&user).await.map_err(internal)?;
    let this = session.id();
    let lines: Vec<String> = sessions
        .iter()
        .map(|s| format!("{}expires {}", if Some(s.id) == this { "this device, " } else { "" }, s.expiry))
        .collect();
    Ok(lines.join("\n"))
}

/// Logs out every other session of the user; this one stays.
async fn sign_out_others(State(store): State<MultiRedisStore>, session: Session) -> Result<String, StatusCode> {
    let user = user(&session).await?;
    // A session that was never saved has no id yet: nothing to keep.
    let revoked = match session.id() {
        Some(this) => store.revoke_user_except(&user, &this).await,
        None => store.revoke_user(&user).await,
    };
    Ok(format!("signed out {} other sessions", revoked.map_err(internal)?))
}

/// Logs out every session of the user, this one included (after a
/// password change, say).
async fn sign_out_everywhere(State(store): State<MultiRedisStore>, session: Session) -> Result<String, StatusCode> {
    let user = user(&session).await?;
    let revoked = store.revoke_user(&user).await.map_err(internal)?;
    // This session is gone from the store; forget it here too.
    session.clear().await;
    Ok(format!("signed out {revoked} sessions"))
}
