//! The Redis an example uses: `REDIS_URL` when set, else a throwaway
//! `redis-server` of its own (kept alive by the returned handle).

use tower_sessions_multi_redis_store::testing::{RedisServer, ServerError};

/// The URL to use, and the server to keep alive, if one was started.
pub fn url_or_throwaway() -> Result<(String, Option<RedisServer>), ServerError> {
    match std::env::var("REDIS_URL") {
        Ok(url) => Ok((url, None)),
        Err(_) => {
            let server = RedisServer::start()?;
            Ok((server.url(), Some(server)))
        }
    }
}
