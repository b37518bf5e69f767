//! `multi-redis-sessions`: migrate, verify and count the sessions of a
//! `MultiRedisStore` configuration. Parses arguments and draws progress; the
//! work is done by the library (`Migrator`, `MultiRedisStore::stats`).
//!
//! Exit codes (also in `--help`): see [`EXIT_CODES`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tower_sessions_multi_redis_store::migrate::{self, Migrator, Progress, Report};
use tower_sessions_multi_redis_store::{BackendStats, Error, LiveConfiguration, MultiRedisStore};

/// What each exit code means.
const EXIT_CODES: &str = "Exit codes:
  0  done, and clean
  1  done, but not clean: a session failed or was corrupt, `verify` found sessions missing or different
     (or, with --empty, left), `check` found the two configurations unsafe side by side
  2  bad arguments or configuration, or a move refused while instances of an earlier step run: nothing was touched
  3  a backend could not be reached or read; what was done is printed, with the cursor to resume from
  4  interrupted (Ctrl-C); what was done is printed, with the cursor to resume from";

/// Move, check and count the sessions of a MultiRedisStore configuration.
#[derive(Parser)]
#[command(name = "multi-redis-sessions", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy (with --move: move) every live session from the source backend into the targets.
    Migrate(MigrateArgs),
    /// List the live sessions of the source that a target lacks or holds with other bytes.
    Verify(VerifyArgs),
    /// Delete from the target (--to) every session the source (--from) does not hold with the same bytes.
    Repair(Pair),
    /// Per backend: reachable, round-trip time, sessions under its prefix.
    Stats(Common),
    /// The configurations app instances run now (each announces its fingerprint), and how many run each.
    Status(Common),
    /// Write the steps of a migration from one configuration to another: DIR/01.toml, ..., and DIR/NN.sh
    /// to run once every instance runs step NN.
    Plan(PlanArgs),
    /// Whether app instances on configuration A and on B may run side by side (exit 0), or not (exit 1).
    Check(CheckArgs),
    /// A user's live sessions: id, expiry, backend (needs `user_key` in the configuration).
    Sessions(UserArgs),
    /// Log out every session of a user, in every backend (needs `user_key` in the configuration).
    Revoke(UserArgs),
}

#[derive(Args)]
struct UserArgs {
    #[command(flatten)]
    common: Common,
    /// The user, as the session data names it (`user_key`).
    #[arg(long)]
    user: String,
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    pair: Pair,
    /// Fail (exit 1) unless the source holds no live session at all.
    #[arg(long)]
    empty: bool,
}

#[derive(Args)]
struct PlanArgs {
    /// The configuration now (TOML, one backend that reads and writes).
    #[arg(long)]
    from: PathBuf,
    /// The configuration to reach (TOML, one backend that reads and writes, another name).
    #[arg(long)]
    to: PathBuf,
    /// Where to write the steps.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct CheckArgs {
    /// One configuration file.
    a: PathBuf,
    /// The other (the same file: that configuration's own hazards).
    b: PathBuf,
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct Common {
    /// The configuration file (.toml or .json), the same one the app uses.
    #[arg(short, long, env = "MULTI_REDIS_SESSIONS_CONFIG")]
    config: PathBuf,
    /// Print one JSON document on stdout instead of text (no progress bar).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct Pair {
    #[command(flatten)]
    common: Common,
    /// Backend to read sessions from [default: the one read backend without write].
    #[arg(long)]
    from: Option<String>,
    /// Backend to write into; repeat for several [default: every write backend].
    #[arg(long)]
    to: Vec<String>,
    /// Keys per SCAN and per pipeline.
    #[arg(long, default_value_t = migrate::DEFAULT_BATCH_SIZE)]
    batch: usize,
}

#[derive(Args)]
struct MigrateArgs {
    #[command(flatten)]
    pair: Pair,
    /// Delete each session from the source once every target holds it.
    #[arg(long = "move")]
    move_sessions: bool,
    /// Change nothing; count what would be copied.
    #[arg(long)]
    dry_run: bool,
    /// Move even while app instances announce a configuration that writes
    /// the source, or reads it and no target (see `status`). Without it, the
    /// move refuses to start while one does, and stops (exit 3, with the
    /// cursor to resume from) if one starts while it runs.
    #[arg(long, requires = "move_sessions")]
    force: bool,
    /// At most this many keys per second scanned from the source (its sessions, and any other key under its prefix).
    #[arg(long)]
    rate: Option<u32>,
    /// Resume from the cursor an interrupted run printed (from 0 if the
    /// source restarted or failed over since: a cursor means nothing to
    /// another server process).
    #[arg(long, default_value_t = 0)]
    cursor: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = match &cli.command {
        Command::Migrate(args) => args.pair.common.json,
        Command::Verify(args) => args.pair.common.json,
        Command::Repair(pair) => pair.common.json,
        Command::Stats(common) | Command::Status(common) => common.json,
        Command::Sessions(args) | Command::Revoke(args) => args.common.json,
        Command::Check(args) => args.json,
        Command::Plan(_) => false,
    };
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            if json {
                println!("{}", serde_json::json!({ "error": err.to_string() }));
            } else {
                eprintln!("error: {err}");
            }
            // A configuration problem (or a refused move) touched nothing; anything else is a
            // backend that could not be reached or read.
            match err {
                Failure::File { .. }
                | Failure::Hazards { .. }
                | Failure::Store(Error::Config { .. } | Error::ConfigFile { .. }) => ExitCode::from(2),
                _ => ExitCode::from(3),
            }
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match cli.command {
        Command::Migrate(args) => migrate(args).await,
        Command::Verify(args) => verify(args).await,
        Command::Repair(pair) => repair(pair).await,
        Command::Stats(common) => stats(common).await,
        Command::Status(common) => status(common).await,
        Command::Plan(args) => plan(args),
        Command::Check(args) => check(args),
        Command::Sessions(args) => sessions(args).await,
        Command::Revoke(args) => revoke(args).await,
    }
}

async fn migrator(pair: &Pair, options: migrate::Options) -> Result<Migrator, Error> {
    let store = store(&pair.common.config).await?;
    let targets: Vec<&str> = pair.to.iter().map(String::as_str).collect();
    Migrator::new(&store, pair.from.as_deref(), &targets, options.batch_size(pair.batch))
}

/// The store a configuration file describes, which does not announce itself:
/// a command is not an app instance (`status` counts those).
async fn store(path: &std::path::Path) -> Result<MultiRedisStore, Error> {
    tower_sessions_multi_redis_store::Config::from_file(path)?.into_builder()?.announce(false).build().await
}

/// Why a command failed: the store's error, or a file of the command's own.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Store(#[from] Error),
    #[error("--{option} {}: {source}", .path.display())]
    File { option: &'static str, path: PathBuf, source: std::io::Error },
    #[error(
        "not moving sessions out of {from:?}: app instances run a configuration that writes it, or reads it \
         and no target, and would miss what the move takes out ({}); deploy the step that reads {from:?} as a \
         source everywhere (`status` lists what runs), or pass --force",
        hazards(.live)
    )]
    Hazards { from: String, live: Vec<LiveConfiguration> },
}

fn hazards(live: &[LiveConfiguration]) -> String {
    live.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

impl Failure {
    fn file(option: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Failure + use<> {
        let path = path.to_owned();
        move |source| Failure::File { option, path, source }
    }
}

fn progress_line(p: &Progress) -> String {
    format!(
        "scanned {}  copied {}  already there {}  removed from source {}  skipped {}  corrupt {}  failed {}",
        p.scanned, p.copied, p.already_present, p.removed_from_source, p.skipped, p.corrupt, p.failed
    )
}

async fn migrate(args: MigrateArgs) -> Result<ExitCode, Failure> {
    let options = migrate::Options::default()
        .move_sessions(args.move_sessions)
        .dry_run(args.dry_run)
        .rate_limit(args.rate)
        .cursor(args.cursor)
        // And while it runs: an instance of an earlier step may start
        // (a rollback).
        .stop_on_hazard(args.move_sessions && !args.dry_run && !args.force);
    let migrator = migrator(&args.pair, options).await?;
    if args.move_sessions && !args.dry_run && !args.force {
        // Before anything is deleted: instances of an earlier step would
        // miss what the move takes out of the source.
        let live = migrator.hazards().await?;
        if !live.is_empty() {
            return Err(Failure::Hazards { from: migrator.source().to_owned(), live });
        }
    }
    let json = args.pair.common.json;
    let bar = if json { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    if !json {
        let mode = if args.dry_run {
            " (dry run)"
        } else if args.move_sessions {
            " (move)"
        } else {
            ""
        };
        eprintln!("migrating {} -> {}{mode}", migrator.source(), migrator.targets().join(", "));
    }
    let started = Instant::now();
    let interrupted = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let report = migrator.run(|p| bar.set_message(progress_line(p)), interrupted).await?;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    print_report(&report, elapsed, json);
    Ok(match (&report.stopped_by, report.finished) {
        (Some(_), _) => ExitCode::from(3),
        (None, false) => ExitCode::from(4),
        (None, true) if report.is_clean() => ExitCode::SUCCESS,
        (None, true) => ExitCode::from(1),
    })
}

fn print_report(report: &Report, elapsed: f64, json: bool) {
    if json {
        let mut value = shortened(serde_json::to_value(report).unwrap_or_default());
        value["elapsed_seconds"] = serde_json::json!(elapsed);
        println!("{value}");
        return;
    }
    let p = &report.progress;
    println!("{}", progress_line(p));
    let rate = if elapsed > 0.0 { p.scanned as f64 / elapsed } else { 0.0 };
    if report.finished {
        println!(
            "finished in {elapsed:.1}s ({rate:.0} keys/s){}",
            if report.dry_run { ", dry run: nothing written" } else { "" }
        );
    } else if let Some(why) = &report.stopped_by {
        println!("stopped after {elapsed:.1}s: {why}; resume with --cursor {}", p.cursor);
    } else {
        println!("interrupted after {elapsed:.1}s; resume with --cursor {}", p.cursor);
    }
    for key in &report.corrupt_keys {
        println!("corrupt (left in place): {}", short_key(key));
    }
    for failure in &report.failures {
        println!("failed: {}: {}", short_key(&failure.key), failure.reason);
    }
}

async fn verify(args: VerifyArgs) -> Result<ExitCode, Failure> {
    let pair = args.pair;
    let migrator = migrator(&pair, migrate::Options::default()).await?;
    let report = migrator.verify().await?;
    if pair.common.json {
        println!("{}", shortened(serde_json::to_value(&report).unwrap_or_default()));
    } else {
        println!(
            "{} -> {}: checked {}  missing {}  different {}",
            migrator.source(),
            migrator.targets().join(", "),
            report.checked,
            report.missing,
            report.different
        );
        for key in &report.missing_keys {
            println!("missing: {}", short_key(key));
        }
        for key in &report.different_keys {
            println!("different: {}", short_key(key));
        }
    }
    let clean = report.missing == 0 && (!args.empty || report.checked == 0);
    if args.empty && report.checked > 0 && !pair.common.json {
        println!("not empty: {} live sessions left in {}", report.checked, migrator.source());
    }
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

async fn repair(pair: Pair) -> Result<ExitCode, Failure> {
    let migrator = migrator(&pair, migrate::Options::default()).await?;
    let report = migrator.repair().await?;
    if pair.common.json {
        println!("{}", shortened(serde_json::to_value(&report).unwrap_or_default()));
    } else {
        println!(
            "{} against {}: checked {}  removed {}",
            migrator.targets().join(", "),
            migrator.source(),
            report.checked,
            report.removed
        );
        for key in &report.removed_keys {
            println!("removed: {}", short_key(key));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read(path: &std::path::Path, option: &'static str) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(Failure::file(option, path))
}

fn plan(args: PlanArgs) -> Result<ExitCode, Failure> {
    let steps = tower_sessions_multi_redis_store::plan::plan(&read(&args.from, "from")?, &read(&args.to, "to")?)?;
    let write = |name: String, text: &str| {
        let path = args.out.join(name);
        write_private(&path, text).map_err(Failure::file("out", &path))?;
        Ok::<_, Failure>(path)
    };
    std::fs::create_dir_all(&args.out).map_err(Failure::file("out", &args.out))?;
    for (i, step) in steps.iter().enumerate() {
        let n = i + 1;
        println!("{}", write(format!("{n:02}.toml"), &step.config)?.display());
        if let Some(then) = &step.then {
            let script = format!(
                "#!/bin/sh\n# Run once every app instance runs {n:02}.toml, before any moves to {next:02}.toml.\n\
                 # Exits non-zero until it is safe to go on.\nset -eu\nDIR=\"$(cd \"$(dirname \"$0\")\" && pwd)\"\n{then}",
                next = n + 1
            );
            let path = write(format!("{n:02}.sh"), &script)?;
            make_executable(&path);
            println!("{}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` to `path`, readable by its owner only where the platform
/// says so: a step's configuration holds the backends' passwords.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        // A file that was already there keeps its mode otherwise.
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    options.open(path)?.write_all(text.as_bytes())
}

#[cfg(unix)]
fn make_executable(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755));
}

#[cfg(not(unix))]
fn make_executable(_: &std::path::Path) {}

fn check(args: CheckArgs) -> Result<ExitCode, Failure> {
    use tower_sessions_multi_redis_store::{Config, plan};
    let (a, b) = (Config::from_file(&args.a)?, Config::from_file(&args.b)?);
    let findings = plan::check(&a, &b);
    let unsafe_ = plan::is_unsafe(&findings);
    if args.json {
        println!("{}", serde_json::json!({ "safe": !unsafe_, "findings": findings }));
    } else {
        for finding in &findings {
            println!("{finding}");
        }
        println!(
            "{}",
            if unsafe_ {
                "A and B must not run side by side"
            } else if findings.iter().any(|f| f.severity == plan::Severity::Requires) {
                "A and B may run side by side once what they require holds"
            } else {
                "A and B may run side by side"
            }
        );
    }
    Ok(if unsafe_ { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

async fn status(common: Common) -> Result<ExitCode, Failure> {
    let store = store(&common.config).await?;
    let live = store.live_configurations().await?;
    let this = store.fingerprint();
    if common.json {
        println!("{}", serde_json::json!({ "this_file": this, "live": live }));
    } else {
        println!("{:<18} {:>9}  backends", "fingerprint", "instances");
        for config in &live {
            let mark = if config.fingerprint == this { "  (this file)" } else { "" };
            println!("{:<18} {:>9}  {}{mark}", config.fingerprint, config.instances, config.backends);
        }
        if !live.iter().any(|c| c.fingerprint == this) {
            println!("no instance runs this file's configuration ({this})");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn stats(common: Common) -> Result<ExitCode, Failure> {
    let store = store(&common.config).await?;
    let stats: Vec<BackendStats> = store.stats().await;
    if common.json {
        println!("{}", serde_json::to_value(&stats).unwrap_or_default());
    } else {
        println!("{:<16} {:<18} {:<10} {:>10} {:>12}", "backend", "modes", "reachable", "rtt (ms)", "sessions");
        for s in &stats {
            println!(
                "{:<16} {:<18} {:<10} {:>10} {:>12}",
                s.name,
                s.modes,
                if s.reachable { "yes" } else { "no" },
                s.round_trip_ms.map(|ms| format!("{ms:.2}")).unwrap_or_else(|| "-".into()),
                s.sessions.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            );
            if let Some(err) = &s.error {
                println!("  {err}");
            }
        }
    }
    Ok(if stats.iter().all(|s| s.reachable && s.error.is_none()) { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// A session key as printed: a session id is a bearer token (whoever has
/// it is logged in), so only its first characters, as [`short`] does.
fn short_key(key: &str) -> String {
    let id_at = key.len().saturating_sub(22);
    match key.get(id_at..).map(str::parse::<tower_sessions_core::session::Id>) {
        Some(Ok(_)) => format!("{}…", &key[..id_at + 8]),
        _ => key.to_owned(),
    }
}

/// A report as JSON with every session key in it shortened.
fn shortened(mut value: serde_json::Value) -> serde_json::Value {
    for list in ["corrupt_keys", "missing_keys", "different_keys", "removed_keys"] {
        if let Some(keys) = value.get_mut(list).and_then(serde_json::Value::as_array_mut) {
            for key in keys {
                *key = serde_json::json!(short_key(key.as_str().unwrap_or_default()));
            }
        }
    }
    if let Some(failures) = value.get_mut("failures").and_then(serde_json::Value::as_array_mut) {
        for failure in failures {
            let key = short_key(failure["key"].as_str().unwrap_or_default());
            failure["key"] = serde_json::json!(key);
        }
    }
    value
}

/// A session id as the CLI shows it: its first 8 characters. The whole id
/// is the session's bearer token (the cookie), not for terminals and logs.
fn short(id: &tower_sessions_core::session::Id) -> String {
    let id = id.to_string();
    format!("{}…", &id[..id.len().min(8)])
}

async fn sessions(args: UserArgs) -> Result<ExitCode, Failure> {
    let store = store(&args.common.config).await?;
    let sessions = store.sessions_of(&args.user).await?;
    let expiry = |s: &tower_sessions_multi_redis_store::UserSession| {
        s.expiry.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
    };
    if args.common.json {
        let list: Vec<serde_json::Value> = sessions
            .iter()
            .map(|s| serde_json::json!({ "id": short(&s.id), "expiry": expiry(s), "backend": s.backend }))
            .collect();
        println!("{}", serde_json::json!({ "user": args.user, "sessions": list }));
    } else {
        println!("{:<12} {:<32} backend", "id", "expires");
        for s in &sessions {
            println!("{:<12} {:<32} {}", short(&s.id), expiry(s), s.backend);
        }
        println!("{} sessions", sessions.len());
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(args: UserArgs) -> Result<ExitCode, Failure> {
    let store = store(&args.common.config).await?;
    let revoked = store.revoke_user(&args.user).await?;
    if args.common.json {
        println!("{}", serde_json::json!({ "user": args.user, "revoked": revoked }));
    } else {
        println!("revoked {revoked} sessions of {}", args.user);
    }
    Ok(ExitCode::SUCCESS)
}
