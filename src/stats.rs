//! Per-backend statistics for operators: reachable or not, round-trip time,
//! number of sessions under the backend's prefix.

use std::str::FromStr;

use futures_util::future::join_all;
use serde::Serialize;
use tower_sessions_core::session::Id;

use crate::mode::Modes;
use crate::node::Node;
use crate::store::MultiRedisStore;

/// What [`MultiRedisStore::stats`] reports for one backend.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct BackendStats {
    /// The backend's name.
    pub name: String,
    /// Its modes (serialized as e.g. `"read+delete"`).
    pub modes: Modes,
    /// Whether it answered `PING`.
    pub reachable: bool,
    /// `PING` round trip in milliseconds.
    pub round_trip_ms: Option<f64>,
    /// Keys under its prefix that are session ids (counted with `SCAN`).
    pub sessions: Option<u64>,
    /// Why it is not reachable or could not be counted.
    pub error: Option<String>,
}

impl MultiRedisStore {
    /// Statistics of every backend, in configured order, gathered concurrently.
    /// Counting walks the keyspace with `SCAN` (never `KEYS`).
    pub async fn stats(&self) -> Vec<BackendStats> {
        join_all(self.nodes().iter().map(stats_of)).await
    }
}

async fn stats_of(node: &Node) -> BackendStats {
    let mut stats = BackendStats {
        name: node.name.clone(),
        modes: node.modes,
        reachable: false,
        round_trip_ms: None,
        sessions: None,
        error: None,
    };
    match node.ping().await {
        Ok(rtt) => {
            stats.reachable = true;
            stats.round_trip_ms = Some(rtt.as_secs_f64() * 1000.0);
        }
        Err(err) => {
            stats.error = Some(err.to_string());
            return stats;
        }
    }
    let mut count = 0;
    let mut cursor = 0;
    let walk = crate::connection::Walk::default();
    loop {
        let restarts = walk.restarts();
        match node.scan(cursor, 1000, &walk).await {
            Ok((next, keys)) => {
                if walk.restarts() > restarts {
                    // A server restarted mid-count: count it all again.
                    (count, cursor) = (0, 0);
                    continue;
                }
                count +=
                    keys.iter().filter(|k| node.id_of(k).is_some_and(|id| Id::from_str(id).is_ok())).count() as u64;
                cursor = next;
                if cursor == 0 {
                    stats.sessions = Some(count);
                    return stats;
                }
            }
            Err(err) => {
                stats.error = Some(err.to_string());
                return stats;
            }
        }
    }
}
