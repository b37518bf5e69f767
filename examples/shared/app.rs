//! The tiny axum app shared by the examples and the HTTP tests: log in, see
//! who you are, count visits, log out.

use std::net::SocketAddr;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tokio::task::JoinHandle;
use tower_sessions::{Session, SessionManagerLayer, SessionStore};

/// The routes, with sessions kept in `store`.
pub fn app<S: SessionStore + Clone>(store: S) -> Router {
    Router::new()
        .route("/login/{user}", post(login))
        .route("/me", get(me))
        .route("/whoami", get(whoami))
        .route("/logout", post(logout))
        // Plain http on localhost: the cookie must not be `Secure`.
        .layer(SessionManagerLayer::new(store).with_secure(false))
}

async fn login(session: Session, axum::extract::Path(user): axum::extract::Path<String>) -> Result<String, StatusCode> {
    // A new id at login prevents session fixation.
    session.cycle_id().await.map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    session.insert("user", &user).await.map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(format!("welcome {user}"))
}

async fn me(session: Session) -> Result<String, StatusCode> {
    let user: Option<String> = session.get("user").await.map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let user = user.ok_or(StatusCode::UNAUTHORIZED)?;
    let visits: u64 = session.get("visits").await.map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?.unwrap_or(0) + 1;
    session.insert("visits", visits).await.map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(format!("{user} ({visits} visits)"))
}

/// Reads the session without modifying it (no save, expiry untouched).
async fn whoami(session: Session) -> Result<String, StatusCode> {
    let user: Option<String> = session.get("user").await.map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    user.ok_or(StatusCode::UNAUTHORIZED)
}

async fn logout(session: Session) -> Result<&'static str, StatusCode> {
    session.flush().await.map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok("bye")
}

/// Serves `app` on a free port of 127.0.0.1.
#[allow(dead_code)] // not every includer serves on a free port
pub async fn serve(app: Router) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, handle))
}
