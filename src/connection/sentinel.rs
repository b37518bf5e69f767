//! A backend whose master is found through Redis Sentinel. redis-rs does not
//! follow a failover by itself, so this connection:
//!
//! * asks every sentinel at once (`SENTINEL GET-MASTER-ADDR-BY-NAME`) for the
//!   master (without waiting for the rest once more than half of them name
//!   the same address), tries the address most of them name first, and connects to it
//!   only once `ROLE` confirms it is a master (a sentinel that missed a
//!   failover names the demoted one);
//! * listens to every sentinel's `+switch-master` announcement and, on one
//!   for its master, moves to the address it names (once `ROLE` confirms it)
//!   before its next command: a demoted master keeps accepting writes until
//!   it is reconfigured, and loses them when it resyncs;
//! * asks again at most once per second while in use as well (an
//!   announcement can be missed while a sentinel connection is down);
//! * after an I/O error, a dropped connection or a `READONLY` reply, asks
//!   again and retries the command once; a command given up before its
//!   reply (the store's deadline) leaves a `PING` behind, whose silence
//!   makes the next command connect anew (a connection gone silent while
//!   the master stays where it is);
//! * when no sentinel answers, keeps the master it has: the sentinels' silence
//!   is no sign that the master failed.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, FromRedisValue, IntoConnectionInfo,
    Pipeline, RedisConnectionInfo, RedisError, RedisResult, Value,
};
use tokio::time::Instant;

use super::given_up::{Unanswered, leave_ping};
use super::link::Link;
use super::replication::{Wait, acknowledged, is_not_replicated};
use super::settings::Settings;
use crate::error::Error;

/// A server's host and port.
type Addr = (String, u16);

/// Open connections to the sentinels, by index, each with a number that
/// tells it from the ones before: shared with the asks a discovery stopped
/// waiting for, which finish on their own (and, when they fail, must drop
/// the connection they used, not a newer one).
type SentinelConns = Arc<std::sync::Mutex<Vec<Option<(u64, MultiplexedConnection)>>>>;

/// Numbers the connections kept here (to the sentinels and to the master),
/// so that a late outcome acts on the connection it was about only.
static CONNS_MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn next_number() -> u64 {
    CONNS_MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// How often an open connection re-checks who the master is.
const RECHECK: Duration = Duration::from_secs(1);

struct Master {
    addr: (String, u16),
    conn: MultiplexedConnection,
    checked: Instant,
    /// Tells this connection from the ones before and after it.
    number: u64,
    /// A `PING` left behind by a command given up before its reply got
    /// nothing back within the socket timeout: the next command connects
    /// anew, even to the same address.
    silent: bool,
}

pub(crate) struct Sentinel {
    /// The backend's connection settings (TLS, timeouts).
    settings: Settings,
    sentinels: Vec<ConnectionInfo>,
    master_name: String,
    redis: RedisConnectionInfo,
    config: AsyncConnectionConfig,
    current: Arc<RwLock<Option<Master>>>,
    /// Held while a `PING` left behind by a command given up is in flight.
    following_up: Arc<std::sync::atomic::AtomicBool>,
    /// Open connections to the sentinels (by index), kept between re-checks.
    sentinel_conns: SentinelConns,
    /// One discovery at a time.
    discovering: tokio::sync::Mutex<()>,
    /// The master a sentinel announced (`+switch-master`) since the last
    /// discovery: tried first by the next one.
    announced: Arc<Announced>,
    /// A second connection to the master, for writes that wait for replicas
    /// (`WAIT` holds up every later command of its connection).
    writes: tokio::sync::Mutex<Option<Writes>>,
    /// Held while a `PING` left behind by a write given up is in flight.
    following_up_writes: Arc<std::sync::atomic::AtomicBool>,
    /// The tasks that listen to the sentinels' announcements, started on
    /// first use (a runtime is needed) and stopped with the connection.
    listeners: std::sync::OnceLock<Vec<tokio::task::JoinHandle<()>>>,
}

/// The writes' connection to the master: the master's address it was
/// made for, and whether a `PING` left behind on it timed out.
struct Writes {
    addr: Addr,
    link: Arc<Link<MultiplexedConnection>>,
    silent: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        for task in self.listeners.get().into_iter().flatten() {
            task.abort();
        }
    }
}

/// The master a sentinel announced last, until a discovery takes it.
#[derive(Default)]
struct Announced {
    addr: std::sync::Mutex<Option<Addr>>,
    /// Whether `addr` holds one: read by every command, so without a lock.
    pending: std::sync::atomic::AtomicBool,
}

impl Announced {
    fn put(&self, addr: Addr) {
        *self.addr.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(addr);
        self.pending.store(true, std::sync::atomic::Ordering::Release);
    }

    /// `addr` again, unless a newer announcement came since it was taken.
    fn put_back(&self, addr: Addr) {
        let mut slot = self.addr.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(addr);
            self.pending.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    fn take(&self) -> Option<Addr> {
        self.pending.store(false, std::sync::atomic::Ordering::Release);
        self.addr.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    fn pending(&self) -> bool {
        self.pending.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// An announced master a discovery took: handed back if the discovery is
/// dropped before it tried it, unless a newer one came meanwhile.
struct Taken<'a> {
    from: &'a Announced,
    addr: Option<Addr>,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Some(addr) = self.addr.take() {
            self.from.put_back(addr);
        }
    }
}

/// The channel on which a sentinel announces a new master:
/// `<name> <old-ip> <old-port> <new-ip> <new-port>`.
const SWITCH_MASTER: &str = "+switch-master";

/// Listens to one sentinel's `+switch-master` announcements for `name`,
/// reconnecting after an error, and leaves the new address in `announced`
/// until the connection's next discovery takes it.
async fn listen(client: redis::Client, name: String, announced: Weak<Announced>) {
    use futures_util::StreamExt;
    loop {
        if let Ok(mut pubsub) = client.get_async_pubsub().await
            && pubsub.subscribe(SWITCH_MASTER).await.is_ok()
        {
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let Ok(payload) = message.get_payload::<String>() else { continue };
                let parts: Vec<&str> = payload.split(' ').collect();
                let [master, _, _, host, port] = parts.as_slice() else { continue };
                let (true, Ok(port)) = (*master == name, port.parse::<u16>()) else { continue };
                let Some(announced) = announced.upgrade() else { return };
                tracing::info!(master = %name, host, port, "sentinel: announced a new master");
                announced.put(((*host).to_owned(), port));
            }
        }
        if announced.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(RECHECK).await;
    }
}

fn sentinel_conn(conns: &SentinelConns, i: usize) -> Option<(u64, MultiplexedConnection)> {
    let conns = conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    conns.get(i).cloned().flatten()
}

/// Keeps `conn` for sentinel `i`; its number.
fn keep_sentinel_conn(conns: &SentinelConns, i: usize, conn: MultiplexedConnection) -> u64 {
    let number = next_number();
    let mut conns = conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(slot) = conns.get_mut(i) {
        *slot = Some((number, conn));
    }
    number
}

/// Drops sentinel `i`'s connection number `number`, if it is still the one kept.
fn drop_sentinel_conn(conns: &SentinelConns, i: usize, number: u64) {
    let mut conns = conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(slot) = conns.get_mut(i)
        && slot.as_ref().is_some_and(|(kept, _)| *kept == number)
    {
        *slot = None;
    }
}

/// Whether the master may have changed.
fn failover_sign(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.kind() == ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// One command on the master's connection. `query_async` turns an error
/// reply into an error of its kind, so a `READONLY` from a demoted master is
/// a [`failover_sign`] (converting the raw reply made it a parse error).
async fn send<T: FromRedisValue>(mut conn: MultiplexedConnection, cmd: &Cmd) -> RedisResult<T> {
    cmd.query_async(&mut conn).await
}

/// A TCP address, with TLS when asked (verifying the host name).
fn addr(tls: bool, host: &str, port: u16) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls { host: host.to_owned(), port, insecure: false, tls_params: None }
    } else {
        ConnectionAddr::Tcp(host.to_owned(), port)
    }
}

/// `TCP_NODELAY` as asked (always on for the sentinels themselves).
fn nodelay(info: ConnectionInfo, on: bool) -> ConnectionInfo {
    let tcp = info.tcp_settings().clone().set_nodelay(on);
    info.set_tcp_settings(tcp)
}

impl Sentinel {
    pub(crate) fn open(sentinels: &[(String, u16)], master: &str, settings: Settings) -> Result<Sentinel, Error> {
        let name = Some(settings.name.as_str());
        if sentinels.is_empty() {
            return Err(Error::config(name, "sentinels", "no sentinel given"));
        }
        if master.is_empty() {
            return Err(Error::config(name, "master", "must not be empty"));
        }
        if settings.tls && cfg!(not(feature = "tls")) {
            return Err(Error::config(name, "tls", "TLS needs the crate feature `tls`"));
        }
        if !settings.tls && (settings.tls_root_ca.is_some() || settings.tls_client.is_some()) {
            return Err(Error::config(name, "tls", "TLS certificates given but `tls` is off"));
        }
        let sentinel_login = settings.sentinel_login();
        let sentinels = sentinels
            .iter()
            .map(|(host, port)| {
                addr(settings.tls, host, *port)
                    .into_connection_info()
                    .map(|info| nodelay(info.set_redis_settings(sentinel_login.clone()), true))
                    .map_err(|err| Error::config(name, "sentinels", err.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let redis = settings.login(RedisConnectionInfo::default())?;
        let config = settings.timeouts();
        Ok(Sentinel {
            master_name: master.to_owned(),
            redis,
            config,
            settings,
            sentinel_conns: Arc::new(std::sync::Mutex::new(vec![None; sentinels.len()])),
            sentinels,
            current: Arc::new(RwLock::new(None)),
            following_up: Arc::default(),
            following_up_writes: Arc::default(),
            discovering: tokio::sync::Mutex::new(()),
            announced: Arc::default(),
            writes: tokio::sync::Mutex::new(None),
            listeners: std::sync::OnceLock::new(),
        })
    }

    /// The addresses the sentinels name as the master, asked all at once
    /// (one timeout at most, however many are down), most named first.
    /// Connections to the sentinels are kept, so a re-check is one round trip.
    /// Once more than half of the sentinels name the same address, the
    /// others are not waited for: one sentinel that went silent (a host that
    /// vanished, whose packets are dropped) would otherwise hold every
    /// re-check, once a second, for a whole socket timeout. Their asks are
    /// not dropped but left to finish in the background (within the socket
    /// timeout), so a sentinel that is merely slower keeps its connection
    /// and one that is silent has it replaced when its ask fails.
    async fn master_candidates(&self) -> RedisResult<Vec<(String, u16)>> {
        use futures_util::StreamExt;
        let mut asking: futures_util::stream::FuturesUnordered<_> = (0..self.sentinels.len())
            .map(|i| {
                let ask = self.ask(i);
                async move { (i, ask.await) }
            })
            .collect();
        // Each address, how many name it, and the first sentinel (in the
        // configured order) that does.
        let mut named: Vec<((String, u16), usize, usize)> = Vec::new();
        let mut last = None;
        while let Some((i, answer)) = asking.next().await {
            match answer {
                Ok(addr) => match named.iter_mut().find(|(a, _, _)| *a == addr) {
                    Some((_, votes, first)) => {
                        *votes += 1;
                        *first = (*first).min(i);
                    }
                    None => named.push((addr, 1, i)),
                },
                Err(err) => last = Some(err),
            }
            if named.iter().any(|(_, votes, _)| 2 * votes > self.sentinels.len()) {
                break;
            }
        }
        if !asking.is_empty() {
            tokio::spawn(async move { while asking.next().await.is_some() {} });
        }
        if named.is_empty() {
            return Err(last.unwrap_or_else(|| RedisError::from((ErrorKind::Client, "no sentinel"))));
        }
        named.sort_by_key(|&(_, votes, first)| (std::cmp::Reverse(votes), first));
        Ok(named.into_iter().map(|(addr, _, _)| addr).collect())
    }

    /// Asks sentinel `i` which address is the master, on its kept
    /// connection (or a new one); after an error, the next ask reconnects.
    /// Owns what it needs, so an ask no one waits for any more can finish.
    fn ask(&self, i: usize) -> impl std::future::Future<Output = RedisResult<Addr>> + Send + 'static {
        let conns = Arc::clone(&self.sentinel_conns);
        let via = sentinel_conn(&conns, i).ok_or_else(|| self.client(self.sentinels[i].clone()));
        let (config, master_name) = (self.config.clone(), self.master_name.clone());
        async move {
            let (number, mut conn) = match via {
                Ok(kept) => kept,
                Err(client) => {
                    let conn = client?.get_multiplexed_async_connection_with_config(&config).await?;
                    (keep_sentinel_conn(&conns, i, conn.clone()), conn)
                }
            };
            let addr: RedisResult<Option<Addr>> =
                redis::cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(&master_name).query_async(&mut conn).await;
            if addr.is_err() {
                drop_sentinel_conn(&conns, i, number);
            }
            addr?.ok_or_else(|| RedisError::from((ErrorKind::Client, "the sentinels do not know this master")))
        }
    }

    /// The master's connection, and whether to ask the sentinels again
    /// (and to connect anew: it went silent) before using it.
    fn snapshot(&self) -> Option<(MultiplexedConnection, bool, bool)> {
        let announced = self.announced.pending();
        let guard = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.as_ref().map(|m| (m.conn.clone(), announced || m.silent || m.checked.elapsed() >= RECHECK, m.silent))
    }

    /// The number of the master connection in use, if any.
    fn master_number(&self) -> Option<u64> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().map(|m| m.number)
    }

    /// A command on master connection `number` was given up before its
    /// reply (the store's deadline, a dropped request) or redis-rs's own
    /// timeout could tell: a `PING` on it, in the background, with the whole
    /// socket timeout; if it times out, the next command connects anew.
    fn follow_up(&self, number: u64) {
        let conn = {
            let guard = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            match guard.as_ref() {
                Some(master) if master.number == number && !master.silent => master.conn.clone(),
                _ => return,
            }
        };
        let current = Arc::clone(&self.current);
        let ping = async move { send::<String>(conn, &redis::cmd("PING")).await };
        leave_ping(&self.following_up, ping, move |result| {
            if result.is_err_and(|err| err.is_timeout()) {
                let mut guard = current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(master) = guard.as_mut().filter(|master| master.number == number) {
                    tracing::debug!("sentinel: the master's connection went silent; connecting anew");
                    master.silent = true;
                }
            }
        });
    }

    /// Starts listening to the sentinels' announcements, once.
    fn listen(&self) {
        self.listeners.get_or_init(|| {
            self.sentinels
                .iter()
                .filter_map(|info| self.client(info.clone()).ok())
                .map(|client| {
                    let announced = Arc::downgrade(&self.announced);
                    tokio::spawn(listen(client, self.master_name.clone(), announced))
                })
                .collect()
        });
    }

    /// The master's connection; (re)discovers it when there is none or the
    /// last check is a second old.
    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        self.listen();
        match self.snapshot() {
            Some((conn, false, _)) => return Ok(conn),
            Some((conn, true, silent)) => {
                // Another request is already checking: use what we have.
                let Ok(_one) = self.discovering.try_lock() else { return Ok(conn) };
                return self.refresh(Some(conn), silent).await;
            }
            None => {}
        }
        let _one = self.discovering.lock().await;
        if let Some((conn, _, _)) = self.snapshot() {
            return Ok(conn); // another request connected meanwhile
        }
        self.refresh(None, false).await
    }

    /// Asks the sentinels who the master is and connects to it, confirming
    /// it with `ROLE` (a sentinel that missed a failover names the demoted
    /// master). When no sentinel answers, the master we have is kept: the
    /// sentinels' silence is no sign that it failed. With `reconnect` (after
    /// an error on the connection `current`), a new connection is made even
    /// to the same master.
    async fn refresh(
        &self,
        current: Option<MultiplexedConnection>,
        reconnect: bool,
    ) -> RedisResult<MultiplexedConnection> {
        // Taken before asking: an announcement that comes meanwhile stays
        // for the next discovery. A discovery cut short (its request's
        // deadline passed) hands it back for the next one.
        let mut taken = Taken { from: &self.announced, addr: self.announced.take() };
        let result = self.refresh_with(current, reconnect, taken.addr.clone()).await;
        taken.addr = None;
        result
    }

    async fn refresh_with(
        &self,
        current: Option<MultiplexedConnection>,
        reconnect: bool,
        announced: Option<Addr>,
    ) -> RedisResult<MultiplexedConnection> {
        let known =
            self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().map(|m| m.addr.clone());
        let current = current.filter(|_| !reconnect);
        let candidates = match self.master_candidates().await {
            // The announced master first: the others may not have heard of it yet.
            Ok(candidates) => {
                let mut all: Vec<(String, u16)> = announced.into_iter().collect();
                all.extend(candidates.into_iter().filter(|c| !all.contains(c)).collect::<Vec<_>>());
                all
            }
            Err(_) if announced.is_some() => announced.into_iter().collect(),
            Err(err) => match (&current, known) {
                (Some(conn), _) => {
                    tracing::warn!(error = %err, "sentinel: no sentinel answers; keeping the master we have");
                    self.touch();
                    return Ok(conn.clone());
                }
                (None, Some(addr)) => {
                    tracing::warn!(error = %err, "sentinel: no sentinel answers; reconnecting to the master we had");
                    vec![addr]
                }
                (None, None) => return Err(err),
            },
        };
        let mut last = None;
        for addr in candidates {
            {
                let mut guard = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let (Some(master), Some(conn)) = (guard.as_mut(), &current)
                    && master.addr == addr
                {
                    master.checked = Instant::now();
                    return Ok(conn.clone());
                }
            }
            match self.connect_master(&addr).await {
                Ok(conn) => {
                    tracing::debug!(host = %addr.0, port = addr.1, "sentinel: connected to the master");
                    let number = next_number();
                    *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(Master { addr, conn: conn.clone(), checked: Instant::now(), number, silent: false });
                    return Ok(conn);
                }
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| RedisError::from((ErrorKind::Client, "no master"))))
    }

    /// A connection to `addr`, once `ROLE` says it is a master.
    async fn connect_master(&self, addr: &(String, u16)) -> RedisResult<MultiplexedConnection> {
        let info = nodelay(
            self::addr(self.settings.tls, &addr.0, addr.1)
                .into_connection_info()?
                .set_redis_settings(self.redis.clone()),
            self.settings.tcp_nodelay,
        );
        let mut conn = self.client(info)?.get_multiplexed_async_connection_with_config(&self.config).await?;
        let role: redis::Value = redis::cmd("ROLE").query_async(&mut conn).await?;
        let is_master = match &role {
            redis::Value::Array(parts) => {
                matches!(parts.first(), Some(redis::Value::BulkString(r)) if r.as_slice() == b"master")
            }
            _ => false,
        };
        if is_master {
            Ok(conn)
        } else {
            Err(RedisError::from((ErrorKind::Client, "named by a sentinel, but ROLE says it is not a master")))
        }
    }

    /// Makes the next command ask the sentinels who the master is (a write
    /// the replicas did not acknowledge may have gone to a demoted master).
    pub(crate) fn recheck_soon(&self) {
        if let Some(master) = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner).as_mut() {
            master.checked = Instant::now().checked_sub(RECHECK).unwrap_or(master.checked);
        }
    }

    /// Marks the current master as just checked.
    fn touch(&self) {
        if let Some(master) = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner).as_mut() {
            master.checked = Instant::now();
        }
    }

    /// A client for a sentinel or the master, with the backend's TLS settings.
    fn client(&self, info: ConnectionInfo) -> RedisResult<redis::Client> {
        super::standalone::client(&self.settings, info)
            .map_err(|err| RedisError::from((ErrorKind::InvalidClientConfig, "TLS settings", err.to_string())))
    }

    /// Runs `send` on the master; after a sign of failover, once more on the
    /// master the sentinels name then.
    async fn with_master<T, F, Fut>(&self, send: F) -> RedisResult<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let attempts = async {
            let first = match self.connection().await {
                Ok(conn) => {
                    let waiting = self.master_number().map(|number| Unanswered::new(move || self.follow_up(number)));
                    let result = send(conn).await;
                    if let Some(waiting) = waiting {
                        waiting.answered();
                    }
                    result
                }
                Err(err) => Err(err),
            };
            match first {
                Err(err) if failover_sign(&err) => {
                    tracing::debug!(error = %err, "sentinel: asking for the master again");
                    // With the sentinels silent the master stays what it was,
                    // and the command fails as it did: no worse.
                    // Discovery only is serialised: other requests must
                    // not wait (or skip their own checks) while this one's
                    // command runs.
                    let conn = {
                        let _one = self.discovering.lock().await;
                        self.refresh(None, true).await?
                    };
                    send(conn).await
                }
                other => other,
            }
        };
        // One bound for both attempts and the discovery between them, as
        // for the other kinds of backend (twice the socket timeout).
        let bound = self.settings.socket_timeout.saturating_mul(2);
        match tokio::time::timeout(bound, attempts).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {bound:?} (two attempts and a discovery)"),
            ))),
        }
    }

    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        self.with_master(|conn| send(conn, cmd)).await
    }

    pub(crate) async fn query_pipeline<T: FromRedisValue>(&self, pipe: &Pipeline) -> RedisResult<T> {
        self.with_master(|mut conn| async move { pipe.query_async(&mut conn).await }).await
    }

    /// A pipeline of writes that ends with `WAIT`, on the writes' own
    /// connection to the master (a `WAIT` holds up every later command of
    /// its connection, and reads must not queue behind replication): its
    /// replies once the replicas acknowledged them.
    pub(crate) async fn query_pipeline_waiting(&self, pipe: &Pipeline, wait: Wait) -> RedisResult<Vec<Value>> {
        self.waiting(wait, |link| async move {
            let replies = pipe.query_async(&mut link.manager()).await?;
            acknowledged(replies, wait)
        })
        .await
    }

    /// One write, acknowledged once the replicas hold it: on the writes' own
    /// link to the master, which ends each send with `WAIT` (under load, one
    /// `WAIT` covers a batch of writes).
    pub(crate) async fn query_waiting(&self, cmd: &Cmd, wait: Wait) -> RedisResult<Value> {
        self.waiting(wait, |link| async move { link.query(cmd).await }).await
    }

    /// Runs `send` on the writes' link to the master; a write the replicas
    /// did not acknowledge makes the next command ask the sentinels again.
    async fn waiting<T, F, Fut>(&self, wait: Wait, send: F) -> RedisResult<T>
    where
        F: Fn(Arc<Link<MultiplexedConnection>>) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let result = self
            .with_master(|_| async {
                let (link, silent) = self.writes_link(wait).await?;
                // Its own follow-up: this connection can go silent while
                // the master's stays alive (or is replaced, at the same
                // address, which does not replace this one).
                let waiting = Unanswered::new(|| self.follow_up_writes(&link, silent));
                let result = send(link.clone()).await;
                waiting.answered();
                if result.as_ref().is_err_and(failover_sign) {
                    // This link only: another task may have made a fresh one.
                    let mut writes = self.writes.lock().await;
                    if writes.as_ref().is_some_and(|cached| Arc::ptr_eq(&cached.link, &link)) {
                        *writes = None;
                    }
                }
                result
            })
            .await;
        if result.as_ref().is_err_and(is_not_replicated) {
            self.recheck_soon();
        }
        result
    }

    /// A write on the writes' link was given up before its reply: a `PING`
    /// on its connection, in the background, with the whole socket timeout;
    /// if it times out, the next write connects anew.
    fn follow_up_writes(&self, link: &Link<MultiplexedConnection>, silent: Arc<std::sync::atomic::AtomicBool>) {
        let mut conn = link.manager();
        let ping = async move { redis::cmd("PING").query_async::<String>(&mut conn).await };
        leave_ping(&self.following_up_writes, ping, move |result| {
            if result.is_err_and(|err| err.is_timeout()) {
                tracing::debug!("sentinel: the writes' connection went silent; connecting anew");
                silent.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }

    /// The writes' link to the current master (and its silence flag), made
    /// when there is none for it yet, or the one there went silent.
    async fn writes_link(
        &self,
        wait: Wait,
    ) -> RedisResult<(Arc<Link<MultiplexedConnection>>, Arc<std::sync::atomic::AtomicBool>)> {
        let master =
            || self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().map(|m| m.addr.clone());
        // The master is read under the lock (a task that waited for it must
        // not connect to a master replaced meanwhile), and again after
        // connecting.
        let mut writes = self.writes.lock().await;
        let Some(addr) = master() else {
            return Err(RedisError::from((ErrorKind::Client, "no master")));
        };
        if let Some(cached) = writes.as_ref()
            && cached.addr == addr
            && !cached.silent.load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok((cached.link.clone(), cached.silent.clone()));
        }
        let link = Arc::new(Link::waiting(self.connect_master(&addr).await?, wait));
        if master().as_ref() != Some(&addr) {
            return Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "the master changed while connecting to it",
            )));
        }
        let silent = Arc::default();
        *writes = Some(Writes { addr, link: link.clone(), silent: Arc::clone(&silent) });
        Ok((link, silent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::RedisServer;

    #[test]
    fn a_discovery_dropped_hands_its_announcement_back_unless_a_newer_came() {
        let announced = Announced::default();
        let addr = |port| ("10.0.0.1".to_owned(), port);
        announced.put(addr(1));
        drop(Taken { from: &announced, addr: announced.take() });
        assert!(announced.pending());
        assert_eq!(announced.take(), Some(addr(1)), "handed back");
        announced.put(addr(1));
        let taken = Taken { from: &announced, addr: announced.take() };
        announced.put(addr(2));
        drop(taken);
        assert_eq!(announced.take(), Some(addr(2)), "the newer one stays");
        let mut done = Taken { from: &announced, addr: None };
        announced.put(addr(3));
        done.addr = announced.take();
        done.addr = None; // tried: consumed
        drop(done);
        assert!(!announced.pending());
    }

    /// A demoted master answers writes with `READONLY`: that must read as a
    /// sign of failover (ask the sentinels again), not as a parse error.
    #[tokio::test]
    async fn a_readonly_reply_is_a_sign_of_failover() {
        let master = RedisServer::start().unwrap();
        let port = master.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).unwrap();
        let conn = replica.client().unwrap().get_multiplexed_async_connection().await.unwrap();
        let err = send::<()>(conn, redis::cmd("SET").arg("k").arg("v")).await.unwrap_err();
        assert!(failover_sign(&err), "{err:?}");
    }
}
