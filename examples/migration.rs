//! The seed's scenario, end to end: sessions live in an "old" Redis; the app
//! is switched to `new: read+write, old: read+delete`; users stay logged in.
//!
//! ```sh
//! cargo run --example migration --features test-util
//! OLD_URL=redis://127.0.0.1:6381 NEW_URL=redis://127.0.0.1:6380 cargo run --example migration --features test-util
//! ```
//!
//! Without URLs it starts two throwaway `redis-server`s (so it runs on a
//! machine with nothing but redis-server installed). With URLs (for instance
//! the two services of `docker-compose.yml`) it uses them, under the key
//! prefix `demo:`; it deletes what it creates.

#[path = "shared/app.rs"]
mod app;

use redis::AsyncCommands;
use tower_sessions_multi_redis_store::testing::RedisServer;
use tower_sessions_multi_redis_store::{Backend, Modes, MultiRedisStore};

const PREFIX: &str = "demo:";

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The sessions of the demo held by a server, with their TTLs.
async fn census(url: &str) -> Result<String> {
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = conn.keys(format!("{PREFIX}*")).await?;
    let mut out = Vec::new();
    for key in keys {
        let ttl: i64 = conn.ttl(&key).await?;
        out.push(format!("{}… (ttl {ttl}s)", &key[..PREFIX.len() + 6]));
    }
    Ok(if out.is_empty() { "(none)".into() } else { out.join(", ") })
}

async fn show(step: &str, old: &str, new: &str) -> Result<()> {
    println!("    old: {}", census(old).await?);
    println!("    new: {}", census(new).await?);
    println!("  ({step})\n");
    Ok(())
}

async fn get(client: &reqwest::Client, url: String) -> Result<String> {
    let response = client.get(url).send().await?;
    Ok(format!("{} {}", response.status().as_u16(), response.text().await?))
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut throwaway = Vec::new();
    let mut url = |var: &str| -> Result<String> {
        Ok(match std::env::var(var) {
            Ok(url) => url,
            Err(_) => {
                let server = RedisServer::start()?;
                let url = server.url();
                throwaway.push(server);
                url
            }
        })
    };
    let (old, new) = (url("OLD_URL")?, url("NEW_URL")?);
    let client = reqwest::Client::builder().cookie_store(true).build()?;

    println!("1. The app runs on the old Redis only; ada logs in.");
    let store = MultiRedisStore::builder().backend(Backend::url("old", &old).prefix(PREFIX)).build().await?;
    let (addr, server) = app::serve(app::app(store)).await?;
    let base = format!("http://{addr}");
    client.post(format!("{base}/login/ada")).send().await?.error_for_status()?;
    println!("  GET /me -> {}", get(&client, format!("{base}/me")).await?);
    show("the session lives in old", &old, &new).await?;
    server.abort();

    println!("2. Deploy with new: read+write first, old: read+delete.");
    let store = MultiRedisStore::builder()
        .backend(Backend::url("new", &new).prefix(PREFIX))
        .backend(Backend::url("old", &old).prefix(PREFIX).modes(Modes::READ_DELETE))
        .build()
        .await?;
    let (addr, _server) = app::serve(app::app(store)).await?;
    let base = format!("http://{addr}");
    println!("  GET /me -> {}", get(&client, format!("{base}/me")).await?);
    show("still logged in; copied to new on first read, same TTL", &old, &new).await?;

    println!("3. ada logs out.");
    client.post(format!("{base}/logout")).send().await?.error_for_status()?;
    println!("  GET /me -> {}", get(&client, format!("{base}/me")).await?);
    show("gone from both", &old, &new).await?;
    println!("Nobody was logged out by the move; the logout reached both servers.");
    Ok(())
}
