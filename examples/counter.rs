//! The smallest app: axum + tower-sessions + one Redis backend.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6380 cargo run --example counter --features test-util
//! ```
//!
//! Without `REDIS_URL` it starts a throwaway `redis-server` of its own. Then:
//! `curl -c jar -b jar -X POST localhost:3000/login/ada` and
//! `curl -c jar -b jar localhost:3000/me`.

#[path = "shared/app.rs"]
mod app;
#[path = "shared/throwaway.rs"]
mod throwaway;

use tower_sessions_multi_redis_store::{Backend, MultiRedisStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Keep the throwaway server alive as long as the app.
    let (url, _server) = throwaway::url_or_throwaway()?;
    let store = MultiRedisStore::builder().backend(Backend::url("main", url)).build().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app::app(store)).await?;
    Ok(())
}
