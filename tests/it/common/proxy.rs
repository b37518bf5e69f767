//! A TCP proxy in front of one server, for one store only: it delays what
//! the client sends by a fixed time (a slow network path), or, with
//! [`DelayProxy::holding`], only the chunks that contain a given command
//! name, while `hold` is on: a command held up in the network while others
//! pass, which is how a write comes to land after its sender gave up on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct DelayProxy {
    listening: Listening,
    hold: Arc<AtomicBool>,
    counts: Arc<Counts>,
}

/// Chunks held up so far, and those of them passed on since.
#[derive(Default)]
struct Counts {
    held: AtomicUsize,
    passed: AtomicUsize,
}

/// Which chunks to delay.
#[derive(Clone, Copy)]
struct Rule {
    delay: Duration,
    /// Only chunks holding one of these (and only while `hold` is on); else every chunk.
    needles: Option<&'static [&'static [u8]]>,
    /// Close the client's connection as soon as a chunk is held (the chunk
    /// still reaches the server after `delay`).
    drop_client: bool,
}

impl DelayProxy {
    /// Delays every chunk by `delay`.
    pub async fn start(upstream_port: u16, delay: Duration) -> DelayProxy {
        DelayProxy::spawn(upstream_port, Rule { delay, needles: None, drop_client: false }, true).await
    }

    /// Delays by `delay` the chunks that contain one of `needles` (e.g.
    /// `b"EVALSHA"`), once [`hold`](Self::hold) is on; nothing at first.
    pub async fn holding(upstream_port: u16, needles: &'static [&'static [u8]], delay: Duration) -> DelayProxy {
        DelayProxy::spawn(upstream_port, Rule { delay, needles: Some(needles), drop_client: false }, false).await
    }

    /// As [`holding`](Self::holding), and closes the client's connection as
    /// soon as it holds a chunk: the client sees its command fail at once,
    /// while the command still reaches the server after `delay` (a dropped
    /// connection says nothing of what the server ran).
    pub async fn dropping(upstream_port: u16, needles: &'static [&'static [u8]], delay: Duration) -> DelayProxy {
        DelayProxy::spawn(upstream_port, Rule { delay, needles: Some(needles), drop_client: true }, false).await
    }

    async fn spawn(upstream_port: u16, rule: Rule, hold: bool) -> DelayProxy {
        let hold = Arc::new(AtomicBool::new(hold));
        let counts = Arc::new(Counts::default());
        let listening = Listening::serve({
            let (hold, counts) = (hold.clone(), counts.clone());
            move |client| pipe(client, upstream_port, rule, hold.clone(), counts.clone())
        })
        .await;
        DelayProxy { listening, hold, counts }
    }

    /// How many chunks were held up so far.
    pub fn held(&self) -> usize {
        self.counts.held.load(Ordering::SeqCst)
    }

    /// How many of the held chunks were passed on to the server since.
    pub fn passed(&self) -> usize {
        self.counts.passed.load(Ordering::SeqCst)
    }

    /// Turns holding on or off (for [`holding`](Self::holding) proxies).
    pub fn hold(&self, on: bool) {
        self.hold.store(on, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        self.listening.url()
    }
}

/// A listener on a free local port that hands each connection to a task of
/// its own, until dropped.
struct Listening {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Listening {
    async fn serve<F, Fut>(each: F) -> Listening
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(each(client));
            }
        });
        Listening { addr, task }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(client: TcpStream, upstream_port: u16, rule: Rule, hold: Arc<AtomicBool>, counts: Arc<Counts>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let dropped = Arc::new(tokio::sync::Notify::new());
    let drop_client = dropped.clone();
    let upstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
            let chunk = &buf[..n];
            let delayed = hold.load(Ordering::SeqCst)
                && rule.needles.is_none_or(|needles| {
                    needles.iter().any(|needle| chunk.windows(needle.len()).any(|w| w == *needle))
                });
            if delayed {
                counts.held.fetch_add(1, Ordering::SeqCst);
                if rule.drop_client {
                    drop_client.notify_one();
                }
                tokio::time::sleep(rule.delay).await;
            }
            if server_write.write_all(chunk).await.is_err() {
                break;
            }
            if delayed {
                counts.passed.fetch_add(1, Ordering::SeqCst);
                if rule.drop_client {
                    break;
                }
            }
        }
    };
    let downstream = async move {
        tokio::select! {
            _ = tokio::io::copy(&mut server_read, &mut client_write) => {}
            // Dropping the write half closes it: the client reads EOF.
            () = dropped.notified() => {}
        }
    };
    tokio::join!(upstream, downstream);
}

/// A TCP proxy that passes what its clients send to one server and, once
/// [`switch`](Self::switch)ed, to another, on the same client connections:
/// the client sees no error while the process that answers it changes (a
/// failover behind a load balancer or a DNS name).
pub struct SwitchingProxy {
    listening: Listening,
    switched: Arc<AtomicBool>,
}

impl SwitchingProxy {
    pub async fn start(first_port: u16, second_port: u16) -> SwitchingProxy {
        let switched = Arc::new(AtomicBool::new(false));
        let listening = Listening::serve({
            let switched = switched.clone();
            move |client| switching_pipe(client, [first_port, second_port], switched.clone())
        })
        .await;
        SwitchingProxy { listening, switched }
    }

    /// From the next command on, every connection talks to the second server.
    /// Call it while no reply is on its way.
    pub fn switch(&self) {
        self.switched.store(true, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        self.listening.url()
    }
}

async fn switching_pipe(client: TcpStream, ports: [u16; 2], switched: Arc<AtomicBool>) {
    let (mut client_read, client_write) = client.into_split();
    let client_write = Arc::new(tokio::sync::Mutex::new(client_write));
    // Replies from `server` to the client, until aborted.
    let replies = |server: tokio::net::tcp::OwnedReadHalf| {
        let client_write = client_write.clone();
        tokio::spawn(async move {
            let mut server = server;
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = server.read(&mut buf).await {
                if client_write.lock().await.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        })
    };
    let mut on_second = switched.load(Ordering::SeqCst);
    let Ok(server) = TcpStream::connect(("127.0.0.1", ports[usize::from(on_second)])).await else {
        return;
    };
    let (server_read, mut server_write) = server.into_split();
    let mut down = replies(server_read);
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = client_read.read(&mut buf).await {
        if !on_second && switched.load(Ordering::SeqCst) {
            down.abort();
            let Ok(server) = TcpStream::connect(("127.0.0.1", ports[1])).await else {
                return;
            };
            let (server_read, write) = server.into_split();
            server_write = write;
            down = replies(server_read);
            on_second = true;
        }
        if server_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    down.abort();
}

/// A TCP proxy whose connections, once [`stall`](Self::stall)ed, swallow
/// what the client sends and never answer, without closing (a peer gone
/// behind a load balancer); connections made after pass as usual.
pub struct StallingProxy {
    listening: Listening,
    stalled: Arc<AtomicBool>,
}

impl StallingProxy {
    pub async fn start(upstream_port: u16) -> StallingProxy {
        let stalled = Arc::new(AtomicBool::new(false));
        let listening = Listening::serve({
            let stalled = stalled.clone();
            move |client| stalling_pipe(client, upstream_port, stalled.clone())
        })
        .await;
        StallingProxy { listening, stalled }
    }

    /// Every connection made so far goes silent.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        self.listening.url()
    }

    pub fn port(&self) -> u16 {
        self.listening.addr.port()
    }

    /// Stalls every connection made so far, then loads `rec` through `store`
    /// every 50 ms until it is answered (over a new connection), for
    /// `within` at most: how long that took, and how many loads failed
    /// first. Panics if none answered in time, or if the first did (the
    /// silent connection was not the one in use).
    pub async fn stall_until_answered(
        &self,
        store: &tower_sessions_multi_redis_store::MultiRedisStore,
        rec: &tower_sessions_core::session::Record,
        within: Duration,
    ) -> (Duration, usize) {
        use tower_sessions_core::SessionStore;
        self.stall_until(within, || async {
            let found = store.load(&rec.id).await?;
            assert_eq!(found.map(|r| r.id), Some(rec.id));
            Ok(())
        })
        .await
    }

    /// As [`stall_until_answered`](Self::stall_until_answered), for any
    /// request `op`.
    pub async fn stall_until<F, Fut>(&self, within: Duration, op: F) -> (Duration, usize)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), tower_sessions_core::session_store::Error>>,
    {
        self.stall();
        let stalled = std::time::Instant::now();
        let mut errors = 0;
        while stalled.elapsed() < within {
            match op().await {
                Ok(()) => {
                    assert!(errors > 0, "the silent connection was used first");
                    return (stalled.elapsed(), errors);
                }
                Err(_) => errors += 1,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("still no answer after {within:?} ({errors} requests failed): the silent connection was never replaced");
    }
}

async fn stalling_pipe(client: TcpStream, upstream_port: u16, stalled: Arc<AtomicBool>) {
    // A connection made after `stall` is never stalled.
    let born_after = stalled.load(Ordering::SeqCst);
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let silent = || !born_after && stalled.load(Ordering::SeqCst);
    let upstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
            if !silent() && server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let downstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = server_read.read(&mut buf).await {
            if !silent() && client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(upstream, downstream);
}
