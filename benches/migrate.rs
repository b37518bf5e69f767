//! Bulk migration throughput: `Migrator` (move) against a `redis-cli --scan`
//! piped into per-key copies (`MIGRATE ... COPY`, one round trip per key),
//! measured in the same run on the same machine.
//!
//! ```sh
//! cargo bench --bench migrate --features test-util            # 1,000,000 sessions
//! BENCH_SESSIONS=200000 cargo bench --bench migrate --features test-util
//! ```
//!
//! Prints a table and writes `target/bench-migrate.csv`.

#[path = "support/mod.rs"]
mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use time::{Duration, OffsetDateTime};
use tower_sessions_core::session::{Id, Record};
use tower_sessions_multi_redis_store::migrate::{self, Migrator};
use tower_sessions_multi_redis_store::testing::RedisServer;
use tower_sessions_multi_redis_store::{Backend, Modes, MultiRedisStore, codec};

const PREFIX: &str = "s:";

/// A session of about 300 bytes encoded.
fn session(i: usize) -> Record {
    Record {
        id: Id::default(),
        data: [
            ("user_id".to_owned(), serde_json::json!(i)),
            ("name".to_owned(), serde_json::json!(format!("user number {i}"))),
            ("roles".to_owned(), serde_json::json!(["reader", "writer"])),
            ("csrf".to_owned(), serde_json::json!("x".repeat(64))),
            ("cart".to_owned(), serde_json::json!({"items": [1, 2, 3], "note": "y".repeat(100)})),
        ]
        .into(),
        expiry_date: OffsetDateTime::now_utc() + Duration::hours(2) + Duration::seconds(i as i64 % 3600),
    }
}

async fn populate(server: &RedisServer, n: usize) -> usize {
    let mut conn = server.client().unwrap().get_multiplexed_async_connection().await.unwrap();
    let mut size = 0;
    for start in (0..n).step_by(10_000) {
        let mut pipe = redis::pipe();
        for i in start..(start + 10_000).min(n) {
            let rec = session(i);
            let bytes = codec::encode(&rec).unwrap();
            size = bytes.len();
            pipe.cmd("SET")
                .arg(format!("{PREFIX}{}", rec.id))
                .arg(bytes)
                .arg("PXAT")
                .arg(codec::expiry_millis(rec.expiry_date))
                .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await.unwrap();
    }
    size
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn dbsize(server: &RedisServer) -> u64 {
    let out = Command::new("redis-cli").args(["-p", &server.port().to_string(), "DBSIZE"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// `redis-cli --scan | (MIGRATE ... COPY per key) | redis-cli`: sessions/s.
fn baseline(source: &RedisServer, target: &RedisServer) -> f64 {
    let started = Instant::now();
    let scan = Command::new("redis-cli")
        .args(["-p", &source.port().to_string(), "--scan", "--pattern", &format!("{PREFIX}*")])
        .output()
        .unwrap();
    let keys = String::from_utf8_lossy(&scan.stdout);
    let mut copier = Command::new("redis-cli")
        .args(["-p", &source.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = copier.stdin.take().unwrap();
    let mut n = 0;
    for key in keys.lines() {
        writeln!(stdin, "MIGRATE 127.0.0.1 {} {key} 0 5000 COPY", target.port()).unwrap();
        n += 1;
    }
    drop(stdin);
    copier.wait().unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(dbsize(target), n, "baseline copied everything");
    n as f64 / elapsed
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let baseline_n = (n / 10).max(10_000);
    let (old, new) = (RedisServer::start().unwrap(), RedisServer::start().unwrap());
    let (base_src, base_dst) = (RedisServer::start().unwrap(), RedisServer::start().unwrap());

    let size = populate(&old, n).await;
    populate(&base_src, baseline_n).await;
    eprintln!("populated {n} sessions of {size} bytes (baseline: {baseline_n})");

    let base_rate =
        if std::env::var("BENCH_BASELINE").as_deref() == Ok("0") { f64::NAN } else { baseline(&base_src, &base_dst) };
    drop((base_src, base_dst));

    let store = MultiRedisStore::builder()
        .backend(Backend::url("new", new.url()).prefix(PREFIX))
        .backend(Backend::url("old", old.url()).prefix(PREFIX).modes(Modes::READ_DELETE))
        .build()
        .await
        .unwrap();
    let rss_before = peak_rss_mb();
    let cpu = |s: &RedisServer| support::cpu_seconds(s.pid().unwrap());
    let cpu_before = (cpu(&old), cpu(&new), support::cpu_seconds(std::process::id()));
    let batch: usize = std::env::var("BENCH_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let migrator =
        Migrator::for_store(&store, migrate::Options::default().move_sessions(true).batch_size(batch)).unwrap();
    let started = Instant::now();
    let report = migrator.run(|_| {}, std::future::pending()).await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let rate = report.progress.copied as f64 / elapsed;
    let peak = peak_rss_mb();
    eprintln!(
        "cpu seconds during migration: source redis {:.2}, target redis {:.2}, migrator {:.2} (wall {elapsed:.2})",
        cpu(&old) - cpu_before.0,
        cpu(&new) - cpu_before.1,
        support::cpu_seconds(std::process::id()) - cpu_before.2
    );
    assert!(report.finished && report.is_clean() && report.progress.copied == n as u64, "{report:?}");
    assert_eq!((dbsize(&new), dbsize(&old)), (n as u64, 0));

    println!("| what | sessions | seconds | sessions/s | ratio to baseline | peak RSS (MB) |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| Migrator --move, batch {batch} | {n} | {elapsed:.2} | {rate:.0} | {:.1}x | {peak:.1} (before: {rss_before:.1}) |",
        rate / base_rate
    );
    println!(
        "| redis-cli --scan + MIGRATE COPY per key | {baseline_n} | {:.2} | {base_rate:.0} | 1.0x | - |",
        baseline_n as f64 / base_rate
    );
    let csv = format!(
        "what,sessions,seconds,sessions_per_s,ratio,peak_rss_mb\nmigrator_move,{n},{elapsed:.3},{rate:.0},{:.2},{peak:.1}\nredis_cli_migrate_copy,{baseline_n},{:.3},{base_rate:.0},1,\n",
        rate / base_rate,
        baseline_n as f64 / base_rate
    );
    let _ = std::fs::create_dir_all("target");
    let _ = std::fs::write("target/bench-migrate.csv", csv);
}
