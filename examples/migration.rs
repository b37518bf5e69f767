//! Moving sessions from an "old" Redis to a "new" one while the app keeps
//! serving, the way a rolling deploy does it: the plan's five steps
//! (`multi-redis-sessions plan`), with, at every step, one app instance
//! still on the previous configuration and one on the next, both serving
//! the same user, and each step's script run in between.
//!
//! ```sh
//! cargo run --example migration --features test-util
//! OLD_URL=redis://127.0.0.1:6381 NEW_URL=redis://127.0.0.1:6380 cargo run --example migration --features test-util
//! ```
//!
//! Without URLs it starts two throwaway `redis-server`s (so it runs on a
//! machine with nothing but redis-server installed). With URLs (for instance
//! the two services of `docker-compose.yml`) it uses them, under the key
//! prefix `demo:`; it deletes the sessions it creates.

#[path = "shared/app.rs"]
mod app;

use redis::AsyncCommands;
use tower_sessions_multi_redis_store::migrate::{self, Migrator};
use tower_sessions_multi_redis_store::testing::RedisServer;
use tower_sessions_multi_redis_store::{Config, MultiRedisStore, plan};

const PREFIX: &str = "demo:";

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The demo's sessions a server holds, with their TTLs (not the store's own
/// keys: tombstones, instances' announcements).
async fn census(url: &str) -> Result<String> {
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = conn.keys(format!("{PREFIX}*")).await?;
    let mut out = Vec::new();
    for key in keys.iter().filter(|k| k.matches(':').count() == 1) {
        let ttl: i64 = conn.ttl(key).await?;
        out.push(format!("{}… (ttl {ttl}s)", &key[..PREFIX.len() + 6]));
    }
    Ok(if out.is_empty() { "(none)".into() } else { out.join(", ") })
}

async fn show(old: &str, new: &str) -> Result<()> {
    println!("    old: {}", census(old).await?);
    println!("    new: {}\n", census(new).await?);
    Ok(())
}

/// An app instance on the configuration `toml`, serving on a port of its own.
async fn instance(toml: &str) -> Result<(String, tokio::task::JoinHandle<()>)> {
    let store = Config::from_toml_str(toml)?.into_builder()?.build().await?;
    let (addr, server) = app::serve(app::app(store)).await?;
    Ok((format!("http://{addr}"), server))
}

async fn get(client: &reqwest::Client, base: &str) -> Result<String> {
    let response = client.get(format!("{base}/me")).send().await?;
    Ok(format!("{} {}", response.status().as_u16(), response.text().await?))
}

/// `GET /me` on `base`, which must find ada logged in (the demo fails otherwise:
/// `scripts/test` runs it).
async fn logged_in(client: &reqwest::Client, base: &str) -> Result<String> {
    let answer = get(client, base).await?;
    if !answer.starts_with("200 ada") {
        return Err(format!("ada looks logged out at {base}: {answer}").into());
    }
    Ok(answer)
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
    let one = |name: &str, url: &str| {
        format!(
            "[[backends]]\nname = \"{name}\"\nmodes = [\"read\", \"write\"]\nurl = \"{url}\"\nprefix = \"{PREFIX}\"\n"
        )
    };
    let steps = plan::plan(&one("old", &old), &one("new", &new))?;
    // The same browser (one cookie jar) hits both instances in turn.
    let client = reqwest::Client::builder().cookie_store(true).build()?;

    println!("01. The app runs on the old Redis only; ada logs in.");
    let (first, mut previous) = instance(&steps[0].config).await?;
    client.post(format!("{first}/login/ada")).send().await?.error_for_status()?;
    println!("  GET /me on 01 -> {}", logged_in(&client, &first).await?);
    show(&old, &new).await?;
    let mut previous_base = first;

    for (i, step) in steps.iter().enumerate().skip(1) {
        let n = i + 1;
        let modes: Vec<String> = Config::from_toml_str(&step.config)?
            .backends
            .iter()
            .map(|b| format!("{}: {}", b.name, b.modes.iter().map(|m| m.as_str()).collect::<Vec<_>>().join("+")))
            .collect();
        println!(
            "{n:02}. Rolling deploy of [{}]: one instance on {n:02}, one still on {:02}.",
            modes.join(", "),
            n - 1
        );
        let findings =
            plan::check(&Config::from_toml_str(&steps[i - 1].config)?, &Config::from_toml_str(&step.config)?);
        let verdict = if plan::is_unsafe(&findings) {
            "unsafe"
        } else if findings.iter().any(|f| f.severity == plan::Severity::Requires) {
            "safe side by side, once the previous step's script ran"
        } else {
            "safe side by side"
        };
        println!("  check {:02} {n:02}: {verdict}", n - 1);
        let (base, server) = instance(&step.config).await?;
        println!("  GET /me on {n:02} -> {}", logged_in(&client, &base).await?);
        println!("  GET /me on {:02} -> {}", n - 1, logged_in(&client, &previous_base).await?);
        previous.abort();
        (previous, previous_base) = (server, base);
        show(&old, &new).await?;
        if step.then.is_some() {
            // Every instance runs this step now: its script, as `NN.sh` would.
            let store: MultiRedisStore =
                Config::from_toml_str(&step.config)?.into_builder()?.announce(false).build().await?;
            if n == 2 {
                let report =
                    Migrator::new(&store, Some("old"), &["new"], migrate::Options::default())?.repair().await?;
                println!("  {n:02}.sh: repair new against old: checked {}, removed {}", report.checked, report.removed);
            } else {
                let migrator = Migrator::for_store(&store, migrate::Options::default().move_sessions(true))?;
                let moved = migrator.run(|_| {}, std::future::pending()).await?;
                let left = migrator.verify().await?.checked;
                println!(
                    "  {n:02}.sh: migrate --move: moved {}; verify --empty: {left} left",
                    moved.progress.removed_from_source
                );
                if left > 0 {
                    return Err(format!("{left} sessions left in old").into());
                }
            }
            show(&old, &new).await?;
        }
    }

    println!("ada logs out.");
    client.post(format!("{previous_base}/logout")).send().await?.error_for_status()?;
    let answer = get(&client, &previous_base).await?;
    println!("  GET /me -> {answer}");
    show(&old, &new).await?;
    if !answer.starts_with("401") || census(&old).await? != "(none)" || census(&new).await? != "(none)" {
        return Err("the logout did not reach both servers".into());
    }
    println!("Nobody was logged out by the move, at any step, on either side of a deploy.");
    Ok(())
}
