//! The built `multi-redis-sessions` binary on config files.
#![cfg(feature = "cli")]

use std::io::Write;
use std::process::{Command, Output};

use crate::common::{conn, plant, raw_set, record, servers};
use redis::AsyncCommands;
use tower_sessions_multi_redis_store::codec;
use tower_sessions_multi_redis_store::testing::RedisServer;

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_multi-redis-sessions"))
        .args(args)
        .env_remove("MULTI_REDIS_SESSIONS_CONFIG")
        .output()
        .expect("run the CLI")
}

fn config(new: &RedisServer, old: &RedisServer) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    write!(
        file,
        "[[backends]]\nname = \"new\"\nmodes = [\"read\", \"write\"]\nurl = \"{}\"\nprefix = \"s:\"\n\n\
         [[backends]]\nname = \"old\"\nmodes = [\"read\", \"delete\"]\nhost = \"127.0.0.1\"\nport = {}\nprefix = \"s:\"\nsocket_timeout = 1\n",
        new.url(),
        old.port()
    )
    .unwrap();
    file
}

async fn fill(server: &RedisServer, n: usize) {
    for i in 0..n {
        let rec = record(&format!("u{i}"));
        plant(server, "s:", &rec).await;
    }
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

async fn count(server: &RedisServer) -> usize {
    let keys: Vec<String> = conn(server).await.keys("*").await.unwrap();
    keys.len()
}

#[tokio::test]
async fn stats_verify_migrate_verify() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    fill(old, 250).await;
    let file = config(new, old);
    let path = file.path().to_str().unwrap();

    let stats = cli(&["stats", "--config", path, "--json"]);
    assert!(stats.status.success(), "{stats:?}");
    let stats = json(&stats);
    assert_eq!(stats[0]["name"], "new");
    assert_eq!(stats[0]["sessions"], 0);
    assert_eq!(stats[1]["sessions"], 250);
    assert_eq!(stats[1]["reachable"], true);

    // Before: every session is missing from "new".
    let verify = cli(&["verify", "--config", path]);
    assert_eq!(verify.status.code(), Some(1));
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(text.contains("old -> new: checked 250  missing 250"), "{text}");
    let missing = text.lines().filter(|l| l.starts_with("missing: s:")).collect::<Vec<_>>();
    assert!(!missing.is_empty() && missing.iter().all(|l| l.len() == "missing: s:".len() + 8 + "…".len()), "{text}");

    let migrate = cli(&["migrate", "--config", path, "--move", "--json"]);
    assert!(migrate.status.success(), "{migrate:?}");
    let report = json(&migrate);
    assert_eq!(report["finished"], true);
    assert_eq!(report["progress"]["copied"], 250);
    assert_eq!(report["progress"]["removed_from_source"], 250);
    assert_eq!((count(new).await, count(old).await), (250, 0));

    // Text output, nothing left to do.
    let again = cli(&["migrate", "--config", path, "--move"]);
    assert!(again.status.success());
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(text.contains("scanned 0") && text.contains("finished in"), "{text}");

    let verify = cli(&["verify", "--config", path, "--json"]);
    assert!(verify.status.success());
    assert_eq!(json(&verify)["missing"], 0);
}

#[tokio::test]
async fn a_dry_run_and_explicit_backends() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    fill(old, 40).await;
    let file = config(new, old);
    let path = file.path().to_str().unwrap();
    let dry =
        cli(&["migrate", "--config", path, "--from", "old", "--to", "new", "--dry-run", "--move", "--batch", "7"]);
    assert!(dry.status.success(), "{dry:?}");
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(text.contains("copied 40") && text.contains("dry run"), "{text}");
    assert_eq!((count(new).await, count(old).await), (0, 40));

    let unknown = cli(&["migrate", "--config", path, "--from", "older"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("backend `older`, field `from`"));
}

#[tokio::test]
async fn corrupt_sessions_make_the_run_fail_and_stay_in_place() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    fill(old, 10).await;
    let bad = format!("s:{}", record("x").id);
    raw_set(old, &bad, b"\x00garbage").await;
    let file = config(new, old);
    let out = cli(&["migrate", "--config", file.path().to_str().unwrap(), "--move"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    // A session id is a bearer token: only its first characters are printed.
    assert!(text.contains(&format!("corrupt (left in place): {}…", &bad[..10])), "{text}");
    assert!(!text.contains(&bad), "{text}");
    assert!(text.contains("copied 10") && text.contains("corrupt 1"), "{text}");
    assert_eq!((count(new).await, count(old).await), (10, 1));
}

#[tokio::test]
async fn an_invalid_config_is_refused_clearly_and_touches_nothing() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    fill(old, 5).await;
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    write!(
        file,
        "[[backends]]\nname = \"new\"\nmodes = [\"read\", \"write\"]\nurl = \"{}\"\n\n[[backends]]\nname = \"old\"\nmodes = [\"read\", \"remove\"]\nurl = \"{}\"\n",
        new.url(),
        old.url()
    )
    .unwrap();
    let out = cli(&["migrate", "--config", file.path().to_str().unwrap(), "--move"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 8") && err.contains("unknown mode `remove`"), "{err}");

    // Valid syntax, invalid shape: a read backend that logout never reaches.
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    write!(file, "[[backends]]\nname = \"new\"\nmodes = [\"read\", \"write\"]\nurl = \"{}\"\n\n[[backends]]\nname = \"old\"\nmodes = [\"read\"]\nurl = \"{}\"\n", new.url(), old.url()).unwrap();
    let out = cli(&["migrate", "--config", file.path().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let err = json(&out)["error"].as_str().unwrap().to_owned();
    assert!(err.contains("backend `old`, field `modes`"), "{err}");

    assert_eq!((count(new).await, count(old).await), (0, 5), "nothing touched");
    let help = cli(&["--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("migrate"));
}

/// `plan` writes the steps and their scripts; `check` accepts every adjacent
/// pair and rejects the one-step switch; the scripts run against real servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_writes_steps_that_check_accepts_and_whose_scripts_run() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    let dir = tempfile::tempdir().unwrap();
    let one = |name: &str, url: String| {
        format!("[[backends]]\nname = \"{name}\"\nmodes = [\"read\", \"write\"]\nurl = \"{url}\"\nprefix = \"s:\"\n")
    };
    let (from, to) = (dir.path().join("old.toml"), dir.path().join("new.toml"));
    std::fs::write(&from, one("old", old.url())).unwrap();
    std::fs::write(&to, one("new", new.url())).unwrap();
    let steps = dir.path().join("steps");
    let planned = cli(&[
        "plan",
        "--from",
        from.to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
        "--out",
        steps.to_str().unwrap(),
    ]);
    assert!(planned.status.success(), "{planned:?}");
    let step = |n: usize| steps.join(format!("{n:02}.toml")).to_str().unwrap().to_owned();
    #[cfg(unix)]
    for n in 1..=5 {
        use std::os::unix::fs::PermissionsExt;
        // A step's configuration holds the backends' passwords.
        let mode = std::fs::metadata(step(n)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{n:02}.toml");
    }
    for n in 1..5 {
        let checked = cli(&["check", &step(n), &step(n + 1)]);
        assert_eq!(checked.status.code(), Some(0), "{n} -> {}: {}", n + 1, String::from_utf8_lossy(&checked.stdout));
    }
    let switch = dir.path().join("switch.toml");
    std::fs::write(
        &switch,
        format!(
            "{}[[backends]]\nname = \"old\"\nmodes = [\"read\", \"delete\"]\nurl = \"{}\"\n",
            one("new", new.url()),
            old.url()
        ),
    )
    .unwrap();
    let rejected = cli(&["check", from.to_str().unwrap(), switch.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&rejected.stdout);
    assert_eq!(rejected.status.code(), Some(1), "{text}");
    assert!(text.contains("unsafe [I2] backend `old`") && text.contains("unsafe [I3]"), "{text}");

    // Sessions in "old"; one stale copy and one left over from a logout in "new".
    fill(old, 20).await;
    let keys = crate::common::session_keys(old).await;
    raw_set(new, &keys[0], &codec::encode(&record("stale")).unwrap()).await;
    let gone = record("gone");
    plant(new, "s:", &gone).await;
    let run = |script: &str| {
        let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_multi-redis-sessions")).parent().unwrap().to_owned();
        let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
        Command::new(steps.join(script)).env("PATH", path).output().unwrap()
    };
    let repaired = run("02.sh");
    assert!(repaired.status.success(), "{repaired:?}");
    assert!(String::from_utf8_lossy(&repaired.stdout).contains("removed 2"), "{repaired:?}");
    let moved = run("04.sh");
    assert!(moved.status.success(), "{moved:?}");
    assert!(crate::common::session_keys(old).await.is_empty());
    assert_eq!(crate::common::session_keys(new).await.len(), 20);
}

/// A source that goes away: before the run, exit 3 (not 2: the arguments
/// were fine); mid-run, the report of what was done and the cursor, exit 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_source_exits_3_and_a_scan_failing_mid_run_prints_the_cursor() {
    let mut servers = servers(2);
    fill(&servers[1], 300).await;
    let file = config(&servers[0], &servers[1]);
    let path = file.path().to_str().unwrap().to_owned();
    let run = {
        let path = path.clone();
        std::thread::spawn(move || cli(&["migrate", "--config", &path, "--move", "--batch", "10", "--rate", "300"]))
    };
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    servers[1].kill();
    let out = run.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("stopped after") && text.contains("resume with --cursor"), "{text}");
    assert!(!text.contains("copied 0 "), "what was done is reported: {text}");

    let gone = cli(&["migrate", "--config", &path]);
    assert_eq!(gone.status.code(), Some(3), "{gone:?}");
    assert!(String::from_utf8_lossy(&gone.stderr).contains("backend `old`"), "{gone:?}");
}

/// Each app instance announces its configuration's fingerprint; `status`
/// lists the live ones and how many instances run each. No address or
/// secret is in them; commands of the CLI do not count as instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_the_live_configurations_and_their_instances() {
    use tower_sessions_multi_redis_store::{Backend, MultiRedisStore};
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    let file = config(new, old);
    let step_a = || MultiRedisStore::from_config_file(file.path());
    let (a1, a2) = (step_a().await.unwrap(), step_a().await.unwrap());
    let b = MultiRedisStore::builder().backend(Backend::url("new", new.url()).prefix("s:")).build().await.unwrap();
    let quiet = MultiRedisStore::builder().backend(Backend::url("new", new.url()).prefix("s:")).announce(false);
    let _quiet = quiet.build().await.unwrap();
    assert_eq!(a1.fingerprint(), a2.fingerprint());
    assert_ne!(a1.fingerprint(), b.fingerprint());
    let mut live = Vec::new();
    for _ in 0..200 {
        live = a1.live_configurations().await.unwrap();
        if live.iter().map(|c| c.instances).sum::<usize>() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let counts: Vec<(String, usize)> = live.iter().map(|c| (c.fingerprint.clone(), c.instances)).collect();
    assert_eq!(counts, [(a1.fingerprint(), 2), (b.fingerprint(), 1)], "{live:?}");
    assert!(live[0].backends.starts_with("new:read+write old:read+delete"), "{live:?}");
    assert!(!format!("{live:?}").contains("127.0.0.1"), "no address: {live:?}");

    let out = cli(&["status", "--config", file.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let line = text.lines().find(|l| l.starts_with(&a1.fingerprint())).unwrap_or_default();
    assert!(line.split_whitespace().nth(1) == Some("2") && line.ends_with("(this file)"), "{text}");
    // The migrator does not count announcements as sessions.
    let migrate = cli(&["migrate", "--config", file.path().to_str().unwrap(), "--move", "--json"]);
    assert!(migrate.status.success(), "{migrate:?}");
    assert_eq!(json(&migrate)["progress"]["skipped"], 0, "{migrate:?}");
}

/// `migrate --move` refuses to start while an app instance runs a step before
/// the one that reads "old" as a source (here 03: "new" and "old" both read and
/// written): that instance would save into "old" alone, or miss what the move
/// takes out. It names the configuration, touches nothing, and exits 2; once
/// the instance is gone (or with `--force`) the move runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_waits_for_every_instance_to_read_the_source_as_a_source() {
    use tower_sessions_multi_redis_store::{Backend, Modes, MultiRedisStore};
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    fill(old, 20).await;
    let file = config(new, old);
    let path = file.path().to_str().unwrap();
    let step = |old_modes| {
        MultiRedisStore::builder()
            .backend(Backend::url("new", new.url()).prefix("s:"))
            .backend(Backend::url("old", old.url()).prefix("s:").modes(old_modes))
            .build()
    };
    let (step_03, step_04) = (step(Modes::READ_WRITE).await.unwrap(), step(Modes::READ_DELETE).await.unwrap());
    let watcher = step_04.clone();
    let announced = |n| {
        let watcher = watcher.clone();
        async move {
            for _ in 0..200 {
                if watcher.live_configurations().await.unwrap().iter().map(|c| c.instances).sum::<usize>() == n {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("not {n} instances announced");
        }
    };
    announced(2).await;

    let refused = cli(&["migrate", "--config", path, "--move"]);
    let text = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(text.contains("not moving sessions out of \"old\"") && text.contains(&step_03.fingerprint()), "{text}");
    assert!(!text.contains(&step_04.fingerprint()), "04 reads old as a source: {text}");
    // Beside the sessions, each server holds the two announcements and
    // their registry.
    assert_eq!((count(new).await, count(old).await), (3, 20 + 3), "nothing copied or removed");
    let json_refused = cli(&["migrate", "--config", path, "--move", "--json"]);
    assert!(json(&json_refused)["error"].as_str().unwrap_or_default().contains("pass --force"), "{json_refused:?}");
    // A copy deletes nothing: it runs.
    let copy = cli(&["migrate", "--config", path, "--json"]);
    assert_eq!(json(&copy)["progress"]["copied"], 20, "{copy:?}");

    // 03's instances are gone (a dropped store withdraws its announcement).
    drop(step_03);
    announced(1).await;
    let moved = cli(&["migrate", "--config", path, "--move", "--json"]);
    assert!(moved.status.success(), "{moved:?}");
    assert_eq!(json(&moved)["progress"]["removed_from_source"], 20, "{moved:?}");

    // --force moves whatever runs.
    let _step_03 = step(Modes::READ_WRITE).await.unwrap();
    announced(2).await;
    fill(old, 5).await;
    let forced = cli(&["migrate", "--config", path, "--move", "--force", "--json"]);
    assert!(forced.status.success(), "{forced:?}");
    assert_eq!(json(&forced)["progress"]["removed_from_source"], 5, "{forced:?}");
}

/// Ctrl-C (SIGINT) mid-run: what was done, the cursor to resume from, exit 4;
/// the resumed run finishes the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_exits_4_with_its_cursor_and_resumes() {
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    fill(old, 300).await;
    let file = config(new, old);
    let path = file.path().to_str().unwrap().to_owned();
    let child = Command::new(env!("CARGO_BIN_EXE_multi-redis-sessions"))
        .args(["migrate", "--config", &path, "--move", "--batch", "10", "--rate", "200"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    let cursor = text.split("resume with --cursor ").nth(1).map(str::trim).unwrap_or_default().to_owned();
    assert!(text.contains("interrupted after") && !cursor.is_empty() && cursor != "0", "{text}");
    let resumed = cli(&["migrate", "--config", &path, "--move", "--cursor", &cursor]);
    assert!(resumed.status.success(), "{resumed:?}");
    assert_eq!((count(new).await, count(old).await), (300, 0));
}

/// `sessions --user` lists a user's sessions with shortened ids (an id is a
/// bearer token), `revoke --user` logs them all out; without `user_key`,
/// both are a configuration error (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_revoke_of_a_user() {
    let server = RedisServer::start().unwrap();
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    write!(
        file,
        "user_key = \"user\"\n[[backends]]\nname = \"main\"\nmodes = [\"read\", \"write\"]\nurl = \"{}\"\n",
        server.url()
    )
    .unwrap();
    let path = file.path().to_str().unwrap();
    let store = tower_sessions_multi_redis_store::MultiRedisStore::from_config_file(path).await.unwrap();
    let mut ids = Vec::new();
    for user in ["ann", "ann", "bob"] {
        let mut rec = record(user);
        tower_sessions_core::SessionStore::create(&store, &mut rec).await.unwrap();
        ids.push(rec.id.to_string());
    }

    let listed = cli(&["sessions", "--user", "ann", "--config", path, "--json"]);
    assert!(listed.status.success(), "{listed:?}");
    let listed = json(&listed);
    let sessions = listed["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{listed}");
    for s in sessions {
        let shown = s["id"].as_str().unwrap();
        assert!(shown.chars().count() == 9 && shown.ends_with('…'), "{shown}");
        assert!(!ids.iter().any(|id| listed.to_string().contains(id.as_str())), "no whole id printed");
        assert_eq!(s["backend"], "main");
    }

    let revoked = cli(&["revoke", "--user", "ann", "--config", path, "--json"]);
    assert!(revoked.status.success(), "{revoked:?}");
    assert_eq!(json(&revoked)["revoked"], 2);
    let left = cli(&["sessions", "--user", "ann", "--config", path, "--json"]);
    assert_eq!(json(&left)["sessions"].as_array().unwrap().len(), 0);
    assert_eq!(
        json(&cli(&["sessions", "--user", "bob", "--config", path, "--json"]))["sessions"].as_array().unwrap().len(),
        1
    );

    let mut plain = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    write!(plain, "[[backends]]\nname = \"main\"\nmodes = [\"read\", \"write\"]\nurl = \"{}\"\n", server.url())
        .unwrap();
    let refused = cli(&["revoke", "--user", "ann", "--config", plain.path().to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("user_key"), "{refused:?}");
}

/// A move under way when an instance of an earlier step starts (a rollback:
/// here step 03, which writes "old") stops before its next batch: exit 3,
/// the configuration named, the cursor to resume from, and nothing lost.
/// Before, only the start was checked, and the move went on deleting from
/// "old" what that instance saves there. Looking at what runs costs no
/// `SCAN`: "new", which the move never walks, is scanned by nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_stops_when_an_instance_of_an_earlier_step_starts_while_it_runs() {
    use tower_sessions_multi_redis_store::{Backend, Modes, MultiRedisStore};
    const N: usize = 4000;
    let servers = servers(2);
    let (new, old) = (&servers[0], &servers[1]);
    fill(old, N).await;
    let file = config(new, old);
    let path = file.path().to_str().unwrap().to_owned();
    let step = |old_modes| {
        MultiRedisStore::builder()
            .backend(Backend::url("new", new.url()).prefix("s:"))
            .backend(Backend::url("old", old.url()).prefix("s:").modes(old_modes))
            .build()
    };
    let _step_04 = step(Modes::READ_DELETE).await.unwrap();
    // 500 keys a second: 8 s for the whole move.
    let run =
        tokio::task::spawn_blocking(move || cli(&["migrate", "--config", &path, "--move", "--rate", "500", "--json"]));
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let step_03 = step(Modes::READ_WRITE).await.unwrap();
    let out = run.await.unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let report = json(&out);
    eprintln!("{report}");
    let why = report["stopped_by"].as_str().unwrap_or_default();
    assert!(why.contains(&step_03.fingerprint()) && why.contains("old:read+write"), "{report}");
    let removed = report["progress"]["removed_from_source"].as_u64().unwrap_or_default();
    assert!(removed > 0 && (removed as usize) < N, "stopped part way: {report}");
    assert_ne!(report["progress"]["cursor"], 0, "{report}");
    // Nothing lost: what left "old" is in "new".
    let sessions = |keys: Vec<String>| keys.into_iter().filter(|k| !k.contains("multi-redis-sessions")).count();
    let in_old = sessions(conn(old).await.keys("s:*").await.unwrap());
    let in_new = sessions(conn(new).await.keys("s:*").await.unwrap());
    assert_eq!(in_old, N - removed as usize);
    assert!(in_new >= removed as usize, "{in_new} in new, {removed} removed");
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn(new).await).await.unwrap();
    assert!(!stats.contains("cmdstat_scan"), "{stats}");
}
