//! Connections to one backend's server(s), behind one type the backend uses.

mod standalone;

use redis::{Cmd, FromRedisValue, Pipeline, RedisResult};

use crate::backend::Backend;
use crate::error::Error;

/// The live connection of one backend.
pub(crate) enum Connection {
    /// One server, through a reconnecting `ConnectionManager`.
    Standalone(redis::aio::ConnectionManager),
}

impl Connection {
    /// Prepares the connection (lazily: no network traffic yet).
    pub(crate) fn open(backend: &Backend) -> Result<Connection, Error> {
        standalone::open(backend).map(Connection::Standalone)
    }

    /// Sends one command and reads its reply.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Connection::Standalone(manager) => cmd.query_async(&mut manager.clone()).await,
        }
    }

    /// Sends a pipeline and reads all its replies.
    pub(crate) async fn query_pipeline<T: FromRedisValue>(&self, pipe: &Pipeline) -> RedisResult<T> {
        match self {
            Connection::Standalone(manager) => pipe.query_async(&mut manager.clone()).await,
        }
    }
}

/// Checks a backend's connection settings without connecting.
pub(crate) fn validate(backend: &Backend) -> Result<(), Error> {
    standalone::connection_info(backend).map(|_| ())
}
