//! Connections to one backend's server(s), behind one type the backend uses:
//! one server, or a partition of several (weighted rendezvous hashing).

mod batch;
pub(crate) mod busy;
mod cluster;
mod given_up;
mod link;
mod renewing;
mod replication;
mod scan;
mod sentinel;
mod settings;
pub(crate) mod standalone;

use link::Link;
use redis::{Cmd, FromRedisValue, Pipeline, RedisResult, Value};
pub(crate) use replication::Wait;
pub(crate) use scan::Walk;

use crate::backend::{Address, Backend};
use crate::error::Error;
use crate::partition::Partition;
use settings::Settings;

/// The live connection of one backend.
pub(crate) enum Connection {
    /// One server, through a reconnecting `ConnectionManager`.
    Standalone(Link),
    /// Several servers; each session lives on the one its id hashes to.
    Partitioned { members: Vec<Link>, partition: Partition },
    /// The master that Redis Sentinel names, re-discovered after a failover.
    Sentinel(Box<sentinel::Sentinel>),
    /// A Redis Cluster.
    Cluster(Box<cluster::Cluster>),
}

/// The server (or client) one command goes to.
enum Route<'a> {
    Link(&'a Link),
    Sentinel(&'a sentinel::Sentinel),
    Cluster(&'a cluster::Cluster),
}

impl Connection {
    /// Prepares the connection (lazily: no network traffic yet).
    pub(crate) fn open(backend: &Backend) -> Result<Connection, Error> {
        let settings = Settings::of(backend);
        match &backend.address {
            Address::Partitioned(members) => {
                validate(backend)?;
                let links = members
                    .iter()
                    .map(|m| standalone::open(&m.address, &settings.member(m)))
                    .collect::<Result<Vec<_>, _>>()?;
                let partition = Partition::new(members.iter().map(|m| (m.name.as_str(), m.weight)));
                Ok(Connection::Partitioned { members: links, partition })
            }
            Address::Sentinel { sentinels, master } => {
                Ok(Connection::Sentinel(Box::new(sentinel::Sentinel::open(sentinels, master, settings)?)))
            }
            Address::Cluster(seeds) => Ok(Connection::Cluster(Box::new(cluster::Cluster::open(seeds, settings)?))),
            address => standalone::open(address, &settings).map(Connection::Standalone),
        }
    }

    /// How many servers (members) this connection spans.
    pub(crate) fn members(&self) -> usize {
        match self {
            Connection::Standalone(_) | Connection::Sentinel(_) | Connection::Cluster(_) => 1,
            Connection::Partitioned { members, .. } => members.len(),
        }
    }

    /// Whether this is a Redis Cluster (whose scripts touch one hash slot).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Connection::Cluster(_))
    }

    /// The member that holds session `id`.
    pub(crate) fn member_of(&self, id: &str) -> usize {
        match self {
            Connection::Standalone(_) | Connection::Sentinel(_) | Connection::Cluster(_) => 0,
            Connection::Partitioned { partition, .. } => partition.member_of(id),
        }
    }

    /// Where a command for `member` goes.
    fn route(&self, member: usize) -> Route<'_> {
        match self {
            Connection::Standalone(link) => Route::Link(link),
            Connection::Partitioned { members, .. } => Route::Link(&members[member.min(members.len() - 1)]),
            Connection::Sentinel(sentinel) => Route::Sentinel(sentinel),
            Connection::Cluster(cluster) => Route::Cluster(cluster),
        }
    }

    /// Sends one command to a member and reads its reply.
    ///
    /// The hot path. The Sentinel and Cluster futures are boxed:
    /// every `.await` level above moves its child future by value, and
    /// keeping the store's futures small keeps those moves and the
    /// allocations of the futures tower-sessions boxes cheap.
    pub(crate) async fn query<T: FromRedisValue>(&self, member: usize, cmd: &Cmd) -> RedisResult<T> {
        let reply = match self.route(member) {
            Route::Link(link) => link.query(cmd).await?,
            Route::Sentinel(sentinel) => return Box::pin(sentinel.query(cmd)).await,
            Route::Cluster(cluster) => return Box::pin(cluster.query(cmd)).await,
        };
        Ok(redis::from_redis_value(reply.extract_error()?)?)
    }

    /// A session write, acknowledged once `wait`'s replicas hold it, else
    /// an error (the write ran on the master; a failover may lose it). A
    /// Sentinel backend then asks the sentinels who the master is before its
    /// next command.
    pub(crate) async fn query_replicated<T: FromRedisValue>(
        &self,
        member: usize,
        cmd: &Cmd,
        wait: Wait,
    ) -> RedisResult<T> {
        let reply = match self.route(member) {
            // A link of its own, which ends each send with `WAIT`.
            Route::Link(link) if let Some(writes) = link.writes() => writes.query(cmd).await?,
            Route::Sentinel(sentinel) => Box::pin(sentinel.query_waiting(cmd, wait)).await?,
            _ => {
                let mut pipe = redis::pipe();
                pipe.ignore_errors().add_command(cmd.clone());
                let replies = Box::pin(self.query_pipeline_replicated(member, &pipe, wait)).await?;
                replies.into_iter().next().unwrap_or(Value::Nil)
            }
        };
        Ok(redis::from_redis_value(reply.extract_error()?)?)
    }

    /// A batch of writes (`pipe`, errors kept as replies), acknowledged once
    /// `wait`'s replicas hold them: `WAIT` ends the pipeline, on the
    /// connection that carries the writes (a `WAIT` sent apart could go out
    /// on another connection, or to another master, and cover nothing). On a
    /// cluster, each write is paired with its own `WAIT` on its slot's
    /// primary.
    async fn query_pipeline_replicated(&self, member: usize, pipe: &Pipeline, wait: Wait) -> RedisResult<Vec<Value>> {
        if let Route::Cluster(cluster) = self.route(member) {
            return Box::pin(cluster.query_each_replicated(pipe, wait)).await;
        }
        let mut pipe = pipe.clone();
        replication::end_with_wait(&mut pipe, wait);
        match self.route(member) {
            Route::Sentinel(sentinel) => Box::pin(sentinel.query_pipeline_waiting(&pipe, wait)).await,
            Route::Link(link) => {
                let replies = pipe.query_async(&mut link.writes().unwrap_or(link).manager()).await?;
                replication::acknowledged(replies, wait)
            }
            Route::Cluster(_) => unreachable_connection(),
        }
    }

    /// Loads a script into every server of this backend (every primary of a
    /// cluster), so that pipelines can name it by its SHA1.
    pub(crate) async fn load_script(&self, code: &str) -> RedisResult<()> {
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(code);
        if let Connection::Cluster(cluster) = self {
            for addr in &cluster.primaries().await? {
                let _: String = cluster.query_node(addr, &load).await?;
            }
            return Ok(());
        }
        for member in 0..self.members() {
            let _: String = self.query(member, &load).await?;
        }
        Ok(())
    }

    /// Sends a pipeline of writes to a member; with `wait`, acknowledged once
    /// its replicas hold them.
    pub(crate) async fn query_pipeline_write(
        &self,
        member: usize,
        pipe: &Pipeline,
        wait: Option<Wait>,
    ) -> RedisResult<Vec<Value>> {
        match wait {
            Some(wait) => self.query_pipeline_replicated(member, pipe, wait).await,
            None => self.query_pipeline(member, pipe).await,
        }
    }

    /// Sends a pipeline to a member and reads all its replies.
    async fn query_pipeline<T: FromRedisValue>(&self, member: usize, pipe: &Pipeline) -> RedisResult<T> {
        match self.route(member) {
            Route::Link(link) => pipe.query_async(&mut link.manager()).await,
            Route::Sentinel(sentinel) => Box::pin(sentinel.query_pipeline(pipe)).await,
            Route::Cluster(cluster) => Box::pin(cluster.query_pipeline(pipe)).await,
        }
    }
}

fn unreachable_connection<T>() -> RedisResult<T> {
    Err(redis::RedisError::from((redis::ErrorKind::Client, "no connection for this backend")))
}

/// Checks a backend's connection settings without connecting.
pub(crate) fn validate(backend: &Backend) -> Result<(), Error> {
    let settings = Settings::of(backend);
    let members = match &backend.address {
        Address::Sentinel { sentinels, master } => {
            return sentinel::Sentinel::open(sentinels, master, settings).map(|_| ());
        }
        Address::Cluster(seeds) => return cluster::Cluster::open(seeds, settings).map(|_| ()),
        Address::Partitioned(members) => members,
        address => return standalone::connection_info(address, &settings).map(|_| ()),
    };
    let name = Some(backend.name.as_str());
    if members.is_empty() {
        return Err(Error::config(name, "members", "a partitioned backend needs at least one member"));
    }
    if members.iter().all(|m| m.weight == 0) {
        return Err(Error::config(name, "weight", "every member has weight 0"));
    }
    let mut labels = std::collections::HashSet::new();
    for m in members {
        if matches!(m.address, Address::Partitioned(_)) {
            return Err(Error::config(name, "members", "a member cannot itself be partitioned"));
        }
        if !labels.insert(m.name.as_str()) {
            return Err(Error::config(name, "members", format!("two members are named `{}`", m.name)));
        }
        standalone::connection_info(&m.address, &settings.member(m))?;
    }
    Ok(())
}
