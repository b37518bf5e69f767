//! A Redis Cluster backend (redis-rs `cluster-async`): commands are routed by
//! key (redis-rs follows MOVED/ASK during resharding); batches become
//! concurrent single commands, since a cluster pipeline must stay on one node;
//! a scan walks the hash slots in order (see [`Cluster::scan_slots`]); a
//! command that times out has the connection remade (see [`Remake`]);
//! retries the cluster asks for (TRYAGAIN) wait milliseconds, not seconds.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

use futures_util::future::join_all;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, FromRedisValue, IntoConnectionInfo, Pipeline, RedisError, RedisResult, Value};

use super::busy::Busy;
use super::given_up::{Unanswered, leave_ping};
use super::replication::Wait;
use super::settings::Settings;
use crate::error::Error;

/// The key a session command names: `EVAL[SHA] script numkeys key ...`
/// or `<command> key ...`.
fn key_of(cmd: &Cmd) -> Option<Vec<u8>> {
    let mut args = cmd.args_iter().filter_map(|arg| match arg {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next()?.to_ascii_uppercase();
    let skip = if name.starts_with(b"EVAL") { 2 } else { 0 };
    args.nth(skip).map(<[u8]>::to_vec)
}

/// The shortest and longest wait (ms) before redis-rs retries a command the
/// cluster asked to retry (TRYAGAIN, CLUSTERDOWN).
const RETRY_WAIT_MS: (u64, u64) = (10, 250);

/// Hash slots in a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;
/// How often a slot scan reads again while the topology changes, and how
/// long it waits between reads (a reshard moves a slot in milliseconds; a
/// failover takes the node timeout).
const SETTLE_ATTEMPTS: usize = 200;
const SETTLE_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// What a slot scan needs of `CLUSTER NODES`: the live primaries, who owns
/// each slot, and the slots being migrated. The part of it about the slots
/// read is compared before and after the read: equal means nothing of
/// theirs moved meanwhile.
/// A range of slots (first, last) and its owner's node id; `None` for a
/// failed primary.
type SlotRange = (u16, u16, Option<String>);

/// Several nodes' views of the topology; the last is the one whose
/// primaries were asked for theirs.
struct Views(Vec<Topology>);

impl Views {
    fn primaries(&self) -> &[(String, u16)] {
        self.0.last().map_or(&[], |view| view.primaries.as_slice())
    }

    /// Whether every view finds slots `from..to` settled, with the same owners.
    fn settled(&self, from: u16, to: u16) -> bool {
        let first = self.0.first().map(|view| view.of(from, to).0);
        self.0.iter().all(|view| view.settled(from, to) && Some(view.of(from, to).0) == first)
    }

    /// What every view says of slots `from..to`.
    fn of(&self, from: u16, to: u16) -> Vec<(Vec<&SlotRange>, Vec<u16>)> {
        self.0.iter().map(|view| view.of(from, to)).collect()
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Topology {
    /// Live primaries (host, port), sorted.
    primaries: Vec<(String, u16)>,
    /// Owner of each slot range, sorted.
    owners: Vec<SlotRange>,
    /// Slots being migrated or imported.
    moving: Vec<u16>,
}

impl Topology {
    fn parse(nodes: &str) -> Topology {
        let mut topology = Topology { primaries: Vec::new(), owners: Vec::new(), moving: Vec::new() };
        for line in nodes.lines() {
            // <id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot> ...
            let fields: Vec<&str> = line.split(' ').collect();
            let (Some(id), Some(addr), Some(flags)) = (fields.first(), fields.get(1), fields.get(2)) else {
                continue;
            };
            if !flags.contains("master") {
                continue;
            }
            let live = !flags.contains("fail");
            let address = addr.split('@').next().and_then(|a| a.rsplit_once(':'));
            if let (true, Some((host, port))) = (live, address)
                && let Ok(port) = port.parse()
            {
                topology.primaries.push((host.to_owned(), port));
            }
            for slot in fields.iter().skip(8) {
                if let Some(moving) = slot.strip_prefix('[') {
                    // [slot->-id] (migrating) or [slot-<-id] (importing)
                    if let Some(n) = moving.split('-').next().and_then(|n| n.parse().ok()) {
                        topology.moving.push(n);
                    }
                    continue;
                }
                let (first, last) = slot.split_once('-').unwrap_or((slot, slot));
                if let (Ok(first), Ok(last)) = (first.parse(), last.parse()) {
                    topology.owners.push((first, last, live.then(|| (*id).to_owned())));
                }
            }
        }
        topology.primaries.sort();
        topology.owners.sort();
        topology.moving.sort_unstable();
        topology
    }

    /// What of this topology concerns slots `from..to`: their owners, and
    /// which of them are being moved.
    fn of(&self, from: u16, to: u16) -> (Vec<&SlotRange>, Vec<u16>) {
        let owners = self.owners.iter().filter(|(first, last, _)| *last >= from && *first < to).collect();
        (owners, self.moving.iter().copied().filter(|s| (from..to).contains(s)).collect())
    }

    /// Whether slots `from..to` can be read now: none is being moved, and
    /// each has a live owner.
    fn settled(&self, from: u16, to: u16) -> bool {
        if self.moving.iter().any(|s| (from..to).contains(s)) {
            return false;
        }
        let mut next = from;
        for (first, last, owner) in &self.owners {
            if *last < next || *first >= to {
                continue;
            }
            if *first > next || owner.is_none() {
                return false; // a gap (a slot nobody serves) or a failed owner
            }
            next = last.saturating_add(1);
            if next >= to {
                return true;
            }
        }
        next >= to
    }
}

pub(crate) struct Cluster {
    client: ClusterClient,
    /// The nodes' credentials and timeouts, for the scan's own connections.
    /// For the connections to single nodes.
    settings: Settings,
    /// Connections to single nodes by address, for slot scans: redis-rs's
    /// cluster client reaches only the nodes its (possibly stale) slot map
    /// names, and a scan asks the nodes `CLUSTER NODES` names.
    nodes: std::sync::Mutex<std::collections::HashMap<(String, u16), redis::aio::MultiplexedConnection>>,
    current: Arc<RwLock<Option<ClusterConnection>>>,
    connecting: tokio::sync::Mutex<()>,
    /// Makes a new cluster connection after a timeout.
    remake: Remake,
    /// Held while a `PING` left behind by a command given up is in flight.
    following_up: Arc<AtomicBool>,
}

/// Makes a new cluster connection in the background and puts it in place of
/// the current one once it is up; at most one per socket timeout.
///
/// Why: redis-rs learns a new slot map from a MOVED reply or a broken
/// connection, and a node that went silent (frozen, or gone without a
/// reset) gives neither. After the cluster promoted its replica, the
/// connection would still send that shard's commands to it, and time out,
/// for as long as it stays silent. A new connection reads the slot map
/// afresh from the nodes that answer. Requests meanwhile use the current
/// one, so the other shards are not held up by the remaking.
#[derive(Clone)]
struct Remake {
    client: ClusterClient,
    current: Arc<RwLock<Option<ClusterConnection>>>,
    /// Held while a connection is being made, and for `pause` after.
    busy: Arc<AtomicBool>,
    pause: std::time::Duration,
}

impl Remake {
    fn start(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let Some(busy) = Busy::claim(&self.busy) else { return };
        let (client, current, pause) = (self.client.clone(), Arc::clone(&self.current), self.pause);
        runtime.spawn(async move {
            let _busy = busy;
            match client.get_async_connection().await {
                Ok(conn) => {
                    tracing::debug!("cluster: a command timed out; a new connection read the slot map afresh");
                    *current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn);
                }
                Err(err) => tracing::debug!(error = %err, "cluster: a new connection failed; the current one stays"),
            }
            tokio::time::sleep(pause).await;
        });
    }
}

impl Cluster {
    pub(crate) fn open(seeds: &[(String, u16)], settings: Settings) -> Result<Cluster, Error> {
        let name = Some(settings.name.as_str());
        if seeds.is_empty() {
            return Err(Error::config(name, "cluster", "no seed node given"));
        }
        if settings.db().is_some_and(|db| db != 0) {
            return Err(Error::config(name, "db", "a Redis Cluster has only database 0"));
        }
        if settings.tls && cfg!(not(feature = "tls")) {
            return Err(Error::config(name, "tls", "TLS needs the crate feature `tls`"));
        }
        if !settings.tls && (settings.tls_root_ca.is_some() || settings.tls_client.is_some()) {
            return Err(Error::config(name, "tls", "TLS certificates given but `tls` is off"));
        }
        let scheme = if settings.tls { "rediss" } else { "redis" };
        let nodes: Vec<String> = seeds
            .iter()
            .map(|(host, port)| match host.contains(':') && !host.starts_with('[') {
                // An IPv6 address, bracketed in a URL.
                true => format!("{scheme}://[{host}]:{port}"),
                false => format!("{scheme}://{host}:{port}"),
            })
            .collect();
        let mut builder = ClusterClientBuilder::new(nodes)
            .connection_timeout(settings.socket_timeout)
            .response_timeout(settings.socket_timeout)
            // After TRYAGAIN (a script naming a session and its tombstone
            // while their slot moves) or CLUSTERDOWN, retry within tens of
            // milliseconds, backing off to a quarter of a second: redis-rs's
            // own first wait, 1.28 s, outlasts the usual socket timeout, so
            // every logout, copy and fill in a moving slot failed.
            .min_retry_wait(RETRY_WAIT_MS.0)
            .max_retry_wait(RETRY_WAIT_MS.1)
            .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(settings.tcp_nodelay));
        let (username, password) = settings.credentials();
        if let Some(username) = username {
            builder = builder.username(username);
        }
        if let Some(password) = password {
            builder = builder.password(password);
        }
        #[cfg(feature = "tls")]
        if let Some(certificates) = super::standalone::certificates(&settings)? {
            builder = builder.certs(certificates);
        }
        let client = builder.build().map_err(|err| Error::config(name, "cluster", err.to_string()))?;
        let current = Arc::new(RwLock::new(None));
        let remake = Remake {
            client: client.clone(),
            current: Arc::clone(&current),
            busy: Arc::default(),
            pause: settings.socket_timeout,
        };
        Ok(Cluster {
            client,
            settings,
            nodes: std::sync::Mutex::new(std::collections::HashMap::new()),
            current,
            connecting: tokio::sync::Mutex::new(()),
            remake,
            following_up: Arc::default(),
        })
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
        // Waiting behind another request's connect, only the socket
        // timeout: else each waiter would try in turn after it failed. The
        // connect itself is not cut short (redis-rs bounds each of its steps,
        // and a slow first connect must be able to finish).
        let waited = tokio::time::timeout(self.settings.socket_timeout, self.connecting.lock()).await;
        let Ok(_one) = waited else {
            return Err(RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)));
        };
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let conn = self.client.get_async_connection().await?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }

    /// After a command's `result`: a timeout makes a new cluster connection
    /// (see [`Remake`]).
    fn noticed<T>(&self, result: RedisResult<T>) -> RedisResult<T> {
        if result.as_ref().is_err_and(RedisError::is_timeout) {
            self.remake.start();
        }
        result
    }

    /// `cmd` was given up before its reply: a `PING` to its key's node, in
    /// the background, with the whole socket timeout, whose timeout makes a
    /// new connection as the command's own would have.
    fn follow_up(&self, cmd: &Cmd) {
        let (Some(key), Some(mut conn)) = (key_of(cmd), self.cached()) else { return };
        let route =
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(&key, SlotAddr::Master)));
        let ping = async move { conn.route_command(redis::cmd("PING"), route).await };
        let remake = self.remake.clone();
        leave_ping(&self.following_up, ping, move |result| {
            if result.is_err_and(|err| err.is_timeout()) {
                remake.start();
            }
        });
    }

    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        let mut conn = self.connection().await?;
        let waiting = Unanswered::new(|| self.follow_up(cmd));
        let result = cmd.query_async(&mut conn).await;
        waiting.answered();
        self.noticed(result)
    }

    /// The commands of `pipe`, each routed by its key, concurrently.
    pub(crate) async fn query_pipeline<T: FromRedisValue>(&self, pipe: &Pipeline) -> RedisResult<T> {
        let conn = self.connection().await?;
        let replies = join_all(pipe.cmd_iter().map(|cmd| {
            let mut conn = conn.clone();
            async move { cmd.query_async::<Value>(&mut conn).await }
        }))
        .await;
        // Any timeout, not only the first error's.
        if replies.iter().any(|reply| reply.as_ref().is_err_and(RedisError::is_timeout)) {
            self.remake.start();
        }
        // As a pipeline that ignores errors: a command's error reply is its
        // reply (one key of another type must not fail its batch); the
        // batch fails only on a connection's or a timeout's error.
        let values = replies.into_iter().map(error_reply_as_value).collect::<RedisResult<Vec<Value>>>()?;
        redis::from_redis_value(Value::Array(values)).map_err(RedisError::from)
    }

    /// The keys of hash slots `from..` (a run of `slots` slots at most, cut
    /// after the slot that brings them to `want` keys: a batch's memory and
    /// its reads stay bounded however full the slots are), read from every
    /// primary (`CLUSTER COUNTKEYSINSLOT`, then `GETKEYSINSLOT`), and the
    /// slot to go on from (`None` after the last).
    ///
    /// Why by slot, not `SCAN` per node: a `SCAN` cursor belongs to one node,
    /// and a failover or a reshard changes which node holds what, so a
    /// cursor carried across one skips keys or reads another node's table.
    /// A slot is a position that means the same on any topology. Every
    /// primary is asked, so a key is found wherever it is, and the slots are
    /// read again while the topology changes under the read (an owner
    /// changed, a slot is being migrated, a primary failed): what is
    /// returned is the slots' keys at one moment, each key once.
    pub(crate) async fn scan_slots(
        &self,
        from: u16,
        slots: u16,
        want: usize,
    ) -> RedisResult<(Vec<String>, Option<u16>)> {
        let mut to = from.saturating_add(slots.max(1)).min(SLOTS);
        for _ in 0..SETTLE_ATTEMPTS {
            if let Some(before) = self.views().await?
                && before.settled(from, to)
                && let Some((keys, end)) = self.keys_in_slots(before.primaries(), from, to, want).await?
                && let Some(after) = self.views().await?
                && after.settled(from, to)
                && after.of(from, to) == before.of(from, to)
            {
                return Ok((keys, (end < SLOTS).then_some(end)));
            }
            // Something moved in this range meanwhile (a reshard goes slot by
            // slot): read fewer slots at once, so that the range settles.
            to = from + (to - from).div_ceil(2);
            tokio::time::sleep(SETTLE_PAUSE).await;
        }
        Err(RedisError::from((
            redis::ErrorKind::Client,
            "the cluster's topology kept changing",
            format!("slot {from} was being moved or had no live primary"),
        )))
    }

    /// The keys of slots `from..end` on these primaries, each once (a key
    /// whose name is not UTF-8 is not a session's, and is left out), `end`
    /// being the first slot from which `from..` holds `want` keys, or `to`.
    /// `None` when keys arrived between counting and reading them.
    async fn keys_in_slots(
        &self,
        primaries: &[(String, u16)],
        from: u16,
        to: u16,
        want: usize,
    ) -> RedisResult<Option<(Vec<String>, u16)>> {
        /// Asked for beyond the count: a reply that fills it may be missing keys.
        const SLACK: u64 = 32;
        let mut counts = Vec::with_capacity(primaries.len());
        let mut per_slot = vec![0u64; usize::from(to - from)];
        for addr in primaries {
            let mut count = redis::pipe();
            for slot in from..to {
                count.cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot);
            }
            let here: Vec<u64> = self.pipeline_on(addr, &count).await?;
            per_slot.iter_mut().zip(&here).for_each(|(sum, n)| *sum = sum.saturating_add(*n));
            counts.push(here);
        }
        let mut end = to;
        let mut sum = 0u64;
        for (slot, n) in (from..to).zip(&per_slot) {
            sum = sum.saturating_add(*n);
            if sum >= want as u64 {
                end = slot + 1;
                break;
            }
        }
        let mut keys = std::collections::BTreeSet::new();
        for (addr, counts) in primaries.iter().zip(counts) {
            let mut get = redis::pipe();
            let mut asked = Vec::new();
            for (slot, n) in (from..end).zip(counts).filter(|(_, n)| *n > 0) {
                get.cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(n + SLACK);
                asked.push(n + SLACK);
            }
            if !get.is_empty() {
                let found: Vec<Vec<Vec<u8>>> = self.pipeline_on(addr, &get).await?;
                if found.iter().zip(&asked).any(|(got, &asked)| got.len() as u64 >= asked) {
                    return Ok(None);
                }
                keys.extend(found.into_iter().flatten().filter_map(|key| String::from_utf8(key).ok()));
            }
        }
        Ok(Some((keys.into_iter().collect(), end)))
    }

    /// Every primary's view of the topology (the markers of a slot being
    /// migrated appear only in the views of the two nodes moving it), or
    /// `None` when a primary did not answer.
    async fn views(&self) -> RedisResult<Option<Views>> {
        let first = self.topology().await?;
        let mut views = Vec::with_capacity(first.primaries.len());
        for addr in &first.primaries {
            let mut ask = redis::pipe();
            ask.cmd("CLUSTER").arg("NODES");
            match self.pipeline_on::<(String,)>(addr, &ask).await {
                Ok((nodes,)) => views.push(Topology::parse(&nodes)),
                Err(_) => return Ok(None),
            }
        }
        views.push(first);
        Ok(Some(Views(views)))
    }

    /// A pipeline on the node at `addr`, over a connection of our own.
    async fn pipeline_on<T: FromRedisValue>(&self, addr: &(String, u16), pipe: &Pipeline) -> RedisResult<T> {
        let cached = self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(addr).cloned();
        let mut conn = match cached {
            Some(conn) => conn,
            None => {
                let config =
                    |err: Error| RedisError::from((redis::ErrorKind::InvalidClientConfig, "config", err.to_string()));
                let info = super::standalone::tcp_addr(&self.settings, &addr.0, addr.1)
                    .map_err(config)?
                    .into_connection_info()?;
                let login = self.settings.login(redis::RedisConnectionInfo::default()).map_err(config)?;
                let info = self.settings.nodelay(info.set_redis_settings(login));
                let timeouts = self.settings.timeouts();
                let client = super::standalone::client(&self.settings, info).map_err(config)?;
                let conn = client.get_multiplexed_async_connection_with_config(&timeouts).await?;
                self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(addr.clone(), conn.clone());
                conn
            }
        };
        let result = pipe.query_async(&mut conn).await;
        if result.as_ref().is_err_and(|err| err.is_io_error() || err.is_connection_dropped() || err.is_timeout()) {
            self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(addr);
        }
        result
    }

    /// The commands of `pipe` concurrently, each followed by `WAIT` on the
    /// primary of its key's slot (errors kept as replies).
    pub(crate) async fn query_each_replicated(&self, pipe: &Pipeline, wait: Wait) -> RedisResult<Vec<Value>> {
        let replies = join_all(pipe.cmd_iter().map(|cmd| async move {
            let Some(key) = key_of(cmd) else {
                return Err(RedisError::from((redis::ErrorKind::Client, "a batched write without a key")));
            };
            let mut pair = redis::pipe();
            pair.ignore_errors().add_command(cmd.clone());
            super::replication::end_with_wait(&mut pair, wait);
            let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master));
            let replies = self.noticed(self.connection().await?.route_pipeline(pair, 0, 2, route).await)?;
            Ok(super::replication::acknowledged(replies, wait)?.into_iter().next().unwrap_or(Value::Nil))
        }))
        .await;
        replies.into_iter().collect()
    }

    /// The primaries' addresses, sorted.
    pub(crate) async fn primaries(&self) -> RedisResult<Vec<(String, u16)>> {
        Ok(self.topology().await?.primaries)
    }

    /// The topology as the node redis-rs picks sees it.
    async fn topology(&self) -> RedisResult<Topology> {
        let mut conn = self.connection().await?;
        let nodes: String = self.noticed(redis::cmd("CLUSTER").arg("NODES").query_async(&mut conn).await)?;
        Ok(Topology::parse(&nodes))
    }

    /// One command on the primary at `addr`.
    pub(crate) async fn query_node<T: FromRedisValue>(&self, addr: &(String, u16), cmd: &Cmd) -> RedisResult<T> {
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: addr.0.clone(), port: addr.1 });
        let value = self.noticed(self.connection().await?.route_command(cmd.clone(), routing).await)?;
        // An error reply is an error of its kind, not a parse error.
        redis::from_redis_value(value.extract_error()?).map_err(RedisError::from)
    }
}

/// A command's error reply (`WRONGTYPE`, `NOPERM`, ...) as the value it
/// was, not an error.
fn error_reply_as_value(reply: RedisResult<Value>) -> RedisResult<Value> {
    match reply {
        Err(err) if err.code().is_some() => match err.clone().into_server_errors().as_deref() {
            Some([(_, one)]) => Ok(Value::ServerError(one.clone())),
            _ => Err(err),
        },
        reply => reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_range_is_settled_only_with_live_owners_and_nothing_moving() {
        let nodes = "a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                     b 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922 [10922->-c]\n\
                     c 127.0.0.1:7002@17002 master,fail - 0 0 3 connected 10923-16383\n\
                     d 127.0.0.1:7003@17003 slave a 0 0 1 connected\n";
        let t = Topology::parse(nodes);
        assert_eq!(t.primaries, vec![("127.0.0.1".to_owned(), 7000), ("127.0.0.1".to_owned(), 7001)]);
        assert_eq!(t.moving, vec![10922]);
        assert!(t.settled(0, 5461) && t.settled(5000, 10922));
        assert!(!t.settled(10000, 10923), "slot 10922 is moving");
        assert!(!t.settled(12000, 12001), "its owner failed");
        let gap = Topology::parse("a 127.0.0.1:7000@17000 master - 0 0 1 connected 0-99 200-16383\n");
        assert!(!gap.settled(50, 150) && gap.settled(200, 300));
    }
}
