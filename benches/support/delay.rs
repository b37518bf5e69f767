//! `BENCH_DELAY_MS=n`: a proxy in front of each server that holds every chunk
//! of bytes, both ways, for `n` ms (at the tokio timer's 1 ms resolution),
//! without holding back the chunks behind it: a slow link's round trip, not
//! its bandwidth. It runs on a thread of its own in the bench's process.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// Starts a proxy to `url` (`redis://host:port`); returns the proxy's URL.
pub fn start(url: &str, delay: Duration) -> String {
    let upstream = url.trim_start_matches("redis://").trim_end_matches('/').to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("proxy runtime");
        runtime.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy listener");
            tx.send(listener.local_addr().expect("proxy address")).expect("proxy address sent");
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(forward(client_read, server_write, delay));
                tokio::spawn(forward(server_read, client_write, delay));
            }
        });
    });
    format!("redis://{}", rx.recv().expect("proxy started"))
}

/// Copies `from` to `to`, each chunk `delay` after it was read.
async fn forward(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
