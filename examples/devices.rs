//! "Sign out other devices": the per-user session index in an axum app.
//!
//! ```sh
//! cargo run --example devices --features test-util
//! ```
//!
//! It starts a throwaway `redis-server` (or uses `REDIS_URL`). Then log in
//! twice as ada (two cookie jars, two "devices"), list, and sign out the
//! other one:
//!
//! ```sh
//! curl -c phone -b phone -X POST localhost:3000/login/ada
//! curl -c laptop -b laptop -X POST localhost:3000/login/ada
//! curl -b laptop localhost:3000/devices
//! curl -b laptop -X POST localhost:3000/sign-out-others
//! curl -b phone localhost:3000/me      # 401: signed out
//! ```

#[path = "shared/devices.rs"]
mod devices;
#[path = "shared/throwaway.rs"]
mod throwaway;

use tower_sessions_multi_redis_store::{Backend, MultiRedisStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Keep the throwaway server alive as long as the app.
    let (url, _server) = throwaway::url_or_throwaway()?;
    let store = MultiRedisStore::builder()
        .backend(Backend::url("main", url))
        // Where the user is in the session data: the index key.
        .user_key("user")
        .max_sessions_per_user(10)
        .build()
        .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, devices::app(store)).await?;
    Ok(())
}
