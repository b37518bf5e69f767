//! Moving sessions between servers: the bulk migrator, and the seed's
//! scenario through an axum app and a real HTTP client.

mod http;
mod migrator;
