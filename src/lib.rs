//! A [`tower-sessions`](https://docs.rs/tower-sessions) store over an
//! **ordered list of Redis backends**, each allowed to `read`, `write` and/or
//! `delete`: move sessions from one Redis to another without logging anyone
//! out, and separate read from write traffic.
//!
//! # Layout
//!
//! * [`mode`](Mode): `Mode` / `Modes`, what a backend may do;
//! * `backend`: [`Backend`], one backend's description;
//! * `node`: a live backend: its connection, breaker, timeouts and the commands run on it;
//! * `health`: [`BackendHealth`], what the store saw of each backend;
//! * `breaker`: the circuit breaker of a backend or partition member ([`BreakerConfig`]);
//! * `connection`: one backend's link: standalone (reconnecting `ConnectionManager`,
//!   replaced when it goes silent, `renewing.rs`; writing concurrent commands together once busy unless `auto_pipeline` is off,
//!   `link.rs`), partition, Sentinel (master re-checked every second), Redis Cluster;
//!   the settings they are all built from (`settings.rs`), and scans and batches over
//!   any of them (`scan.rs`, `batch.rs`);
//! * `partition`: weighted rendezvous hashing of session ids over a partition's members;
//! * [`codec`]: the wire format, byte-compatible with `tower-sessions-redis-store`;
//! * `store`: [`MultiRedisStore`] and **the fan-out rules** of `load`/`create`/`save`/`delete`;
//! * `scripts`: the Lua scripts every session write runs: a logout's tombstone,
//!   copies that write only where no logout did, writes refused past their deadline,
//!   a user's index entry;
//! * `keys`: the keys the store writes besides sessions (tombstones, announcements, user indexes);
//! * `clock`: what a backend knows of its servers' clocks, for those deadlines;
//! * `policy`: [`CopyOnRead`], [`ReadPolicy`], [`WritePolicy`];
//! * `builder`: [`MultiRedisStoreBuilder`], validation of the whole shape;
//! * `config`: [`Config`], TOML/JSON files, including the seed Django package's shape;
//! * `error`: [`Error`], which always names the backend at fault;
//! * [`migrate`]: [`Migrator`](migrate::Migrator), the bulk migrator (and `verify`, `repair`) behind the CLI;
//! * [`plan`]: migration plans for rolling deploys, and `check` of two configurations;
//! * `stats`: [`BackendStats`], reachability, round trip and session count per backend;
//! * `users`: the per-user session index ([`UserKey`]), and `revoke`: list and revoke a user's sessions;
//! * `announce`: each instance's configuration fingerprint in the backends
//!   ([`LiveConfiguration`]), to see when a rolling deploy finished;
//! * `redact`: [`Secret`] and [`RedisUrl`], which keep passwords out of `Debug`, errors and logs;
//! * `testing` (feature `test-util`): throwaway `redis-server` processes and sentinels;
//! * `bin/multi-redis-sessions` (feature `cli`): migrate, verify, repair, stats, status,
//!   plan, check, sessions and revoke.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "test-util")]
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use tower_sessions_core::{SessionStore, session::{Id, Record}};
//! use tower_sessions_multi_redis_store::{Backend, Modes, MultiRedisStore, testing::RedisServer};
//!
//! let (old, new) = (RedisServer::start().unwrap(), RedisServer::start().unwrap());
//! let store = MultiRedisStore::builder()
//!     .backend(Backend::url("new", new.url()))                          // read + write
//!     .backend(Backend::url("old", old.url()).modes(Modes::READ_DELETE)) // being drained
//!     .build()
//!     .await
//!     .unwrap();
//!
//! let mut record = Record {
//!     id: Id::default(),
//!     data: [("user".to_owned(), "ada".into())].into(),
//!     expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
//! };
//! store.create(&mut record).await.unwrap();
//! assert_eq!(store.load(&record.id).await.unwrap(), Some(record.clone()));
//! store.delete(&record.id).await.unwrap();
//! assert_eq!(store.load(&record.id).await.unwrap(), None);
//! # });
//! ```
//!
//! With axum: `SessionManagerLayer::new(store)`, exactly where
//! `tower-sessions-redis-store`'s `RedisStore` was used.

#![forbid(unsafe_code)]
// The fan-out futures nest deeply (store -> backend -> connection -> redis-rs).
#![recursion_limit = "256"]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::panic, clippy::print_stdout, clippy::print_stderr))]

mod announce;
mod backend;
mod breaker;
mod builder;
mod clock;
pub mod codec;
mod config;
mod connection;
mod error;
mod health;
mod keys;
pub mod migrate;
mod mode;
mod node;
mod partition;
pub mod plan;
mod policy;
mod recent;
mod redact;
mod revoke;
mod scripts;
mod stats;
mod store;
#[cfg(feature = "test-util")]
pub mod testing;
mod users;

pub use announce::LiveConfiguration;
pub use backend::{Address, Backend};
pub use breaker::{BreakerConfig, BreakerState};
pub use builder::MultiRedisStoreBuilder;
pub use config::{BackendConfig, Config, MemberConfig};
pub use error::Error;
pub use health::{BackendCounters, BackendHealth};
pub use mode::{Mode, Modes, UnknownMode};
pub use policy::{CopyOnRead, ReadPolicy, WritePolicy};
pub use redact::{RedisUrl, Secret};
pub use stats::BackendStats;
pub use store::MultiRedisStore;
pub use users::{InvalidUserKey, UserKey, UserSession};

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
