//! A Redis Cluster backend (redis-rs `cluster-async`): commands are routed by
//! key (redis-rs follows MOVED/ASK during resharding); batches become
//! concurrent single commands, since a cluster pipeline must stay on one node;
//! SCAN walks every primary, in the order of their addresses.

use std::sync::RwLock;

use futures_util::future::join_all;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, RedisResult, Value};

use crate::backend::{Address, Backend};
use crate::error::Error;

pub(crate) struct Cluster {
    client: ClusterClient,
    current: RwLock<Option<ClusterConnection>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Cluster {
    pub(crate) fn open(backend: &Backend) -> Result<Cluster, Error> {
        let name = Some(backend.name.as_str());
        let Address::Cluster(seeds) = &backend.address else {
            return Err(Error::config(name, "cluster", "not a cluster backend"));
        };
        if seeds.is_empty() {
            return Err(Error::config(name, "cluster", "no seed node given"));
        }
        let nodes: Vec<String> = seeds.iter().map(|(host, port)| format!("redis://{host}:{port}")).collect();
        let mut builder = ClusterClientBuilder::new(nodes)
            .connection_timeout(backend.socket_timeout)
            .response_timeout(backend.socket_timeout)
            .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(backend.tcp_nodelay));
        if let Some(username) = &backend.username {
            builder = builder.username(username.clone());
        }
        if let Some(password) = &backend.password {
            builder = builder.password(password.clone());
        }
        let client = builder.build().map_err(|err| Error::config(name, "cluster", err.to_string()))?;
        Ok(Cluster { client, current: RwLock::new(None), connecting: tokio::sync::Mutex::new(()) })
    }

    fn cached(&self) -> Option<ClusterConnection> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The cluster connection, made on first use (the store can be built
    /// while the cluster is down).
    async fn connection(&self) -> RedisResult<ClusterConnection> {
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let _one = self.connecting.lock().await;
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let conn = self.client.get_async_connection().await?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }

    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        cmd.query_async(&mut self.connection().await?).await
    }

    /// The commands of `pipe`, each routed by its key, concurrently.
    pub(crate) async fn query_pipeline<T: FromRedisValue>(&self, pipe: &Pipeline) -> RedisResult<T> {
        let conn = self.connection().await?;
        let replies = join_all(pipe.cmd_iter().map(|cmd| {
            let mut conn = conn.clone();
            async move { cmd.query_async::<Value>(&mut conn).await }
        }))
        .await;
        let values = replies.into_iter().collect::<RedisResult<Vec<Value>>>()?;
        redis::from_redis_value(Value::Array(values)).map_err(RedisError::from)
    }

    /// The primaries' addresses, sorted.
    pub(crate) async fn primaries(&self) -> RedisResult<Vec<(String, u16)>> {
        let mut conn = self.connection().await?;
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut conn).await?;
        let mut primaries: Vec<(String, u16)> = nodes
            .lines()
            .filter(|line| {
                line.split(' ').nth(2).is_some_and(|flags| flags.contains("master") && !flags.contains("fail"))
            })
            .filter_map(|line| {
                // <id> <ip:port@cport[,hostname]> ...
                let addr = line.split(' ').nth(1)?.split('@').next()?;
                let (host, port) = addr.rsplit_once(':')?;
                Some((host.to_owned(), port.parse().ok()?))
            })
            .collect();
        primaries.sort();
        Ok(primaries)
    }

    /// One command on the primary at `addr`.
    pub(crate) async fn query_node<T: FromRedisValue>(&self, addr: &(String, u16), cmd: &Cmd) -> RedisResult<T> {
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: addr.0.clone(), port: addr.1 });
        let value = self.connection().await?.route_command(cmd.clone(), routing).await?;
        // An error reply is an error of its kind, not a parse error.
        redis::from_redis_value(value.extract_error()?).map_err(RedisError::from)
    }
}
