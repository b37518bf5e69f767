//! Throwaway `redis-server` processes for tests and demos (feature `test-util`).
//!
//! Each [`RedisServer`] runs in its own temporary directory, on a free port
//! of 127.0.0.1 (never 6379) and a unix socket, and is killed when dropped.
//!
//! ```no_run
//! use tower_sessions_multi_redis_store::testing::RedisServer;
//!
//! let mut server = RedisServer::start().expect("redis-server");
//! let url = server.url();          // redis://127.0.0.1:<port>
//! server.kill();                   // SIGKILL, as a crash would
//! server.restart().unwrap();       // same port, empty data
//! ```

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use tempfile::TempDir;

/// Which member of a partitioned backend a session id lives on (weighted
/// rendezvous hashing; the mapping is fixed across processes and releases).
pub use crate::partition::Partition;

/// Why a test server could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The binary is not on `PATH`.
    #[error(
        "`{0}` was not found on PATH; install it (Debian/Ubuntu: `apt-get install -y redis-server`, \
         macOS: `brew install redis`) or run ./scripts/test, which does"
    )]
    NotInstalled(&'static str),
    /// It started but never answered `PING`.
    #[error("redis-server on port {port} did not become ready: {reason}")]
    NotReady {
        /// The port it was given.
        port: u16,
        /// The end of its log, or what failed.
        reason: String,
    },
    /// Another I/O failure (temp dir, spawn, signal).
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A `redis-server` process owned by the caller.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    extra_args: Vec<String>,
    /// `Some(master name, master port)` for a sentinel.
    sentinel: Option<(String, u16)>,
}

const READY_TIMEOUT: Duration = Duration::from_secs(10);

impl RedisServer {
    /// Starts a server with default settings (no persistence).
    ///
    /// # Errors
    ///
    /// [`ServerError::NotInstalled`] when `redis-server` is missing.
    pub fn start() -> Result<RedisServer, ServerError> {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra command-line settings, e.g.
    /// `["--requirepass", "pw"]`.
    ///
    /// # Errors
    ///
    /// [`ServerError::NotInstalled`] when `redis-server` is missing.
    pub fn start_with(extra_args: &[&str]) -> Result<RedisServer, ServerError> {
        let mut dir = tempfile::Builder::new().prefix("tsmrs-redis-").tempdir()?;
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let mut server = RedisServer {
                child: None,
                port,
                dir,
                extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
                sentinel: None,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(err @ ServerError::NotInstalled(_)) => return Err(err),
                Err(err) => {
                    // Most likely the port was taken between probe and bind.
                    last = Some(err);
                    dir = std::mem::replace(&mut server.dir, tempfile::tempdir()?);
                }
            }
        }
        Err(last.unwrap_or(ServerError::NotReady { port: 0, reason: "no free port".into() }))
    }

    /// Starts a Redis Sentinel that monitors the master `name` at
    /// 127.0.0.1:`master_port` (quorum 2, down after 1 s, failover timeout 5 s).
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub fn start_sentinel(name: &str, master_port: u16) -> Result<RedisServer, ServerError> {
        RedisServer::start_sentinel_with(name, master_port, &[])
    }

    /// As [`start_sentinel`](Self::start_sentinel), with extra lines for its
    /// configuration file, e.g. `sentinel auth-pass <name> <password>` or
    /// `requirepass <password>`.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub fn start_sentinel_with(name: &str, master_port: u16, extra_conf: &[&str]) -> Result<RedisServer, ServerError> {
        let mut server = RedisServer {
            child: None,
            port: free_port()?,
            dir: tempfile::Builder::new().prefix("tsmrs-sentinel-").tempdir()?,
            extra_args: Vec::new(),
            sentinel: Some((name.to_owned(), master_port)),
        };
        let conf = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
             sentinel monitor {name} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 5000\n",
            port = server.port,
            dir = server.dir.path().display(),
            log = server.log_path().display(),
        );
        let conf = extra_conf.iter().fold(conf, |conf, line| conf + line + "\n");
        std::fs::write(server.dir.path().join("sentinel.conf"), conf)?;
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), ServerError> {
        if self.sentinel.is_some() {
            let child = Command::new("redis-server")
                .arg(self.dir.path().join("sentinel.conf"))
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|err| match err.kind() {
                    io::ErrorKind::NotFound => ServerError::NotInstalled("redis-server"),
                    _ => err.into(),
                })?;
            self.child = Some(child);
            return self.wait_ready();
        }
        let dir = self.dir.path();
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--unixsocket")
            .arg(self.unix_socket())
            .args(["--unixsocketperm", "700", "--logfile"])
            .arg(self.log_path())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(ServerError::NotInstalled("redis-server"));
            }
            Err(err) => return Err(err.into()),
        };
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), ServerError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(self.not_ready(format!("exited with {status}")));
            }
            if ping(self.port).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(self.not_ready("no PONG within 10s".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn not_ready(&self, what: String) -> ServerError {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        ServerError::NotReady {
            port: self.port,
            reason: format!("{what}; log: {}", tail.into_iter().rev().collect::<Vec<_>>().join(" | ")),
        }
    }

    /// Starts a server that also listens with TLS on [`tls_port`](Self::tls_port),
    /// with the given PEM files. With `require_client_cert`, clients must
    /// present a certificate signed by `ca`.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub fn start_tls(
        cert: &Path,
        key: &Path,
        ca: &Path,
        require_client_cert: bool,
    ) -> Result<RedisServer, ServerError> {
        let tls_port = free_port()?.to_string();
        let path = |p: &Path| p.display().to_string();
        let (cert, key, ca) = (path(cert), path(key), path(ca));
        let auth = if require_client_cert { "yes" } else { "no" };
        RedisServer::start_with(&[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            auth,
        ])
    }

    /// The TLS port, for a server started with [`start_tls`](Self::start_tls).
    pub fn tls_port(&self) -> Option<u16> {
        let at = self.extra_args.iter().position(|a| a == "--tls-port")?;
        self.extra_args.get(at + 1)?.parse().ok()
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The unix socket the server also listens on.
    pub fn unix_socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The server's temporary directory (its log is `redis.log` there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL (as a crash would) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (data is gone: no persistence).
    ///
    /// # Errors
    ///
    /// When it does not come back.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.kill();
        let _ = std::fs::remove_file(self.unix_socket());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() > deadline => return Err(err),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Freezes the server with SIGSTOP: connections stay open, nothing answers.
    ///
    /// # Errors
    ///
    /// When the signal cannot be sent.
    pub fn freeze(&self) -> Result<(), ServerError> {
        self.signal(Signal::STOP)
    }

    /// Resumes a frozen server with SIGCONT.
    ///
    /// # Errors
    ///
    /// When the signal cannot be sent.
    pub fn thaw(&self) -> Result<(), ServerError> {
        self.signal(Signal::CONT)
    }

    /// Freezes the server now and thaws it after `duration`, from a thread of
    /// its own (join the handle to wait for the thaw).
    ///
    /// # Errors
    ///
    /// When the signal cannot be sent.
    pub fn freeze_for(&self, duration: Duration) -> Result<std::thread::JoinHandle<()>, ServerError> {
        let child = self.child.as_ref().ok_or_else(|| io::Error::other("server is not running"))?;
        let pid = Pid::from_child(child);
        self.freeze()?;
        Ok(std::thread::spawn(move || {
            std::thread::sleep(duration);
            let _ = kill_process(pid, Signal::CONT);
        }))
    }

    /// Sends a signal with the `kill` system call (no `kill` program needed:
    /// minimal images lack procps).
    fn signal(&self, signal: Signal) -> Result<(), ServerError> {
        let child = self.child.as_ref().ok_or_else(|| io::Error::other("server is not running"))?;
        kill_process(Pid::from_child(child), signal).map_err(io::Error::from)?;
        Ok(())
    }

    /// A redis-rs client for this server, to look at its keys directly.
    ///
    /// # Errors
    ///
    /// When the URL is refused by redis-rs.
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        redis::Client::open(self.url())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL ends a frozen process too; SIGCONT first lets it go at once.
        let _ = self.thaw();
        self.kill();
    }
}

/// A Sentinel group of throwaway servers: a master, its replicas, and three
/// sentinels watching it (quorum 2); every process is killed on drop.
///
/// ```no_run
/// use tower_sessions_multi_redis_store::Backend;
/// use tower_sessions_multi_redis_store::testing::SentinelGroup;
///
/// let group = SentinelGroup::start("sessions", 1).expect("redis-server");
/// let backend = Backend::sentinel("ha", group.sentinel_addrs(), "sessions");
/// ```
#[non_exhaustive]
pub struct SentinelGroup {
    /// The master.
    pub master: RedisServer,
    /// Its replicas.
    pub replicas: Vec<RedisServer>,
    /// The sentinels.
    pub sentinels: Vec<RedisServer>,
}

impl SentinelGroup {
    /// Starts a master named `name` with `replicas` replicas and three
    /// sentinels, and returns once every replica acknowledges writes
    /// (`WAIT`) and the sentinels know a replica (so a failover can happen).
    ///
    /// # Errors
    ///
    /// As [`RedisServer::start`], or [`ServerError::NotReady`] when the group
    /// does not settle within 15 s.
    pub fn start(name: &str, replicas: usize) -> Result<SentinelGroup, ServerError> {
        // A replica's full sync starts at once (by default it waits 5 s for others to join it).
        let master = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"])?;
        let port = master.port().to_string();
        let replica_args = ["--replicaof", "127.0.0.1", &port, "--repl-diskless-sync-delay", "0"];
        let replicas = (0..replicas).map(|_| RedisServer::start_with(&replica_args)).collect::<Result<Vec<_>, _>>()?;
        let sentinels =
            (0..3).map(|_| RedisServer::start_sentinel(name, master.port())).collect::<Result<Vec<_>, _>>()?;
        let group = SentinelGroup { master, replicas, sentinels };
        group.settle(name)?;
        Ok(group)
    }

    /// The sentinels' addresses, for [`Backend::sentinel`](crate::Backend::sentinel).
    pub fn sentinel_addrs(&self) -> Vec<(String, u16)> {
        self.sentinels.iter().map(|s| ("127.0.0.1".to_owned(), s.port())).collect()
    }

    fn settle(&self, name: &str) -> Result<(), ServerError> {
        let not_ready = |reason: String| ServerError::NotReady { port: self.master.port(), reason };
        let timeout = Some(Duration::from_secs(1));
        let connect = |server: &RedisServer| {
            let conn = server.client().and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))?;
            conn.set_read_timeout(timeout)?;
            Ok::<_, redis::RedisError>(conn)
        };
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < Duration::from_secs(15) {
            let ready = (|| {
                let wanted = self.replicas.len();
                let mut master = connect(&self.master)?;
                redis::cmd("SET").arg("sentinel-group-probe").arg(1).exec(&mut master)?;
                let acked: usize = redis::cmd("WAIT").arg(wanted).arg(100).query(&mut master)?;
                let known: Vec<redis::Value> =
                    redis::cmd("SENTINEL").arg("REPLICAS").arg(name).query(&mut connect(&self.sentinels[0])?)?;
                Ok::<_, redis::RedisError>(acked >= wanted && (wanted == 0 || !known.is_empty()))
            })();
            match ready {
                Ok(true) => return Ok(()),
                Ok(false) => last = "replicas not in sync yet".to_owned(),
                Err(err) => last = err.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(not_ready(format!("the Sentinel group did not settle: {last}")))
    }
}

/// A port the OS considers free right now (never 6379).
pub fn free_port() -> io::Result<u16> {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if port != 6379 {
            return Ok(port);
        }
    }
}

fn ping(port: u16) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(b"PING\r\n")?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?.take(64)).read_line(&mut line)?;
    let _ = stream.shutdown(Shutdown::Both);
    // A server with `requirepass` answers NOAUTH: it is up all the same.
    if line.starts_with("+PONG") || line.starts_with("-NOAUTH") {
        Ok(())
    } else {
        Err(io::Error::other(format!("unexpected reply {line:?}")))
    }
}
