//! Migration plans for rolling deploys: which configurations may serve the
//! same users at the same time ([`check`]), and the sequence of steps from
//! one Redis to another in which every two adjacent steps may ([`plan`]).
//!
//! A rolling deploy moves app instances to a new configuration one at a
//! time, so two configurations serve the same users for a while, and no rule
//! inside one configuration can repair what an instance with the other does.
//! The plan from `[old: read+write]` to `[new: read+write]` (Stripe's online
//! migration: dual write, backfill, switch reads, stop writing, remove):
//!
//! | step | backends (read order) | `old` is | before the next step |
//! |---|---|---|---|
//! | 01 | `old: rw` | authoritative | |
//! | 02 | `old: rw`, `new: w` | authoritative; `new` shadows every write | `repair` `new` against `old` |
//! | 03 | `new: rw`, `old: rw` | written still; `new` answers first | |
//! | 04 | `new: rw`, `old: read+delete` | a source: copied on read | `migrate --move`, then `verify --empty` |
//! | 05 | `new: rw` | gone | |
//!
//! Why each adjacent pair is safe (I1 a logout sticks, I2 no lost update, I3
//! no live session looks logged out):
//!
//! * **01 + 02.** Both read `old` only, and both write and delete there. `new`
//!   is not read: whatever it holds (02's copies, older than 01's saves, or
//!   left behind by 01's logouts) cannot be served. Step 01 must already run
//!   this crate's release with tombstones: a 02 save that misses `old` but
//!   hits `new` fills `old`, which a logout on 01 must have tombstoned.
//! * **02 + 03**, once every instance ran 02 and `new` was repaired. Both
//!   write both, so every save after the repair reaches both; both delete
//!   from both (tombstones). The repair deleted from `new` every session that
//!   `old` does not hold with the same bytes (01's saves and logouts never
//!   reached `new`), so what `new` holds is what `old` holds, or a newer save
//!   still landing on `old`. Deleting from `new` is always safe here: `old`
//!   has every session, and 03 falls back to it (`old` is written, so what
//!   it answers is current) and 03's next save fills `new` again.
//! * **03 + 04.** 04 reads `new` first and writes only `new`; 03 reads `new`
//!   first too, and reaches `old` only when `new` lacks the session: 04's
//!   saves never leave it so (a save that misses `new` fills it from `old`,
//!   04's source), but a logout does, and 04 leaves `old` older than `new`.
//!   So 03 treats what `old` answers after `new` missed as a source's copy:
//!   copied into `new` unless a tombstone is there, which means "not found"
//!   (`store.rs`). Both tombstone both on logout (a logout leaves a
//!   tombstone in every backend it deletes from), so 04's copies into `new`
//!   and 03's fills into `old` meet the other's logouts. (The rolling-walk
//!   model test found the gap before this rule: a logout that reached `new`
//!   only, then a 03 load serving `old`'s older copy.)
//! * **04 + 05**, once `old` holds no session (the migrator moved them all,
//!   and no instance writes `old` any more). 05 never reads `old`; 04 reads it
//!   after `new` and finds nothing.
//!
//! [`check`] finds the same conditions from the modes and the read order of
//! any two configurations; `multi-redis-sessions plan` writes the steps as
//! files with the scripts to run between them.

use std::fmt;

use serde::Serialize;

use crate::config::Config;
use crate::error::Error;
use crate::mode::Mode;

/// How bad a [`Finding`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Severity {
    /// The two configurations must not run side by side.
    Unsafe,
    /// Safe side by side once this holds (e.g. a backend was drained).
    Requires,
    /// Safe, but costly or surprising.
    Warning,
}

/// One thing [`check`] found.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// The invariant at stake (`I1`...`I4`), or `-` for a warning.
    pub invariant: &'static str,
    /// The backend it is about.
    pub backend: String,
    /// What would go wrong, or what must hold first.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.severity {
            Severity::Unsafe => "unsafe",
            Severity::Requires => "requires",
            Severity::Warning => "warning",
        };
        write!(f, "{what} [{}] backend `{}`: {}", self.invariant, self.backend, self.message)
    }
}

/// One configuration as [`check`] sees it: names and modes, in read order.
struct Shape<'a> {
    label: &'a str,
    backends: Vec<Role<'a>>,
    config: &'a Config,
}

/// One backend of a [`Shape`]: its name and what the configuration does with it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Role<'a> {
    name: &'a str,
    read: bool,
    write: bool,
    delete: bool,
}

impl<'a> Shape<'a> {
    fn of(label: &'a str, config: &'a Config) -> Shape<'a> {
        let backends = config
            .backends
            .iter()
            .map(|b| {
                let has = |m: Mode| b.modes.contains(&m);
                let write = has(Mode::Write);
                Role { name: b.name.as_str(), read: has(Mode::Read), write, delete: write || has(Mode::Delete) }
            })
            .collect();
        Shape { label, backends, config }
    }

    fn reads(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.backends.iter().filter(|b| b.read).map(|b| b.name)
    }

    fn writes(&self, name: &str) -> bool {
        self.backends.iter().any(|b| b.name == name && b.write)
    }

    fn reads_backend(&self, name: &str) -> bool {
        self.backends.iter().any(|b| b.name == name && b.read)
    }

    fn deletes(&self, name: &str) -> bool {
        self.backends.iter().any(|b| b.name == name && b.delete)
    }

    fn is_source(&self, name: &str) -> bool {
        self.reads_backend(name) && !self.writes(name)
    }
}

/// Whether instances on `a` and on `b` may serve the same users at the same
/// time, from the backends' modes and read order (`check(a, a)`: one
/// configuration's own hazards). Backends are matched by name.
///
/// ```
/// use tower_sessions_multi_redis_store::{Config, plan::{check, Severity}};
///
/// let old = Config::from_toml_str("[[backends]]\nname = \"old\"\nmodes = [\"read\", \"write\"]\nurl = \"redis://10.0.0.1\"\n").unwrap();
/// let switched = Config::from_toml_str(
///     "[[backends]]\nname = \"new\"\nmodes = [\"read\", \"write\"]\nurl = \"redis://10.0.0.2\"\n\
///      [[backends]]\nname = \"old\"\nmodes = [\"read\", \"delete\"]\nurl = \"redis://10.0.0.1\"\n",
/// ).unwrap();
/// // The one-step switch: instances still on `old` never see what the others write to `new`.
/// assert!(check(&old, &switched).iter().any(|f| f.severity == Severity::Unsafe));
/// ```
pub fn check(a: &Config, b: &Config) -> Vec<Finding> {
    let (a, b) = (Shape::of("A", a), Shape::of("B", b));
    let mut findings = Vec::new();
    own_hazards(&a, &mut findings);
    if same(&a, &b) {
        return findings;
    }
    own_hazards(&b, &mut findings);
    settings(&a, &b, &mut findings);
    beside(&a, &b, &mut findings);
    beside(&b, &a, &mut findings);
    let mut seen = std::collections::HashSet::new();
    findings.retain(|f| seen.insert((f.backend.clone(), f.message.clone())));
    findings
}

fn same(a: &Shape<'_>, b: &Shape<'_>) -> bool {
    a.backends == b.backends
}

/// The first backend a configuration reads that it also writes.
fn first<'a>(s: &Shape<'a>) -> &'a str {
    s.backends.iter().find(|b| b.read && b.write).map_or("-", |b| b.name)
}

/// Store-wide settings that must agree between two configurations.
fn settings(a: &Shape<'_>, b: &Shape<'_>, out: &mut Vec<Finding>) {
    use crate::{CopyOnRead, WritePolicy};
    if a.config.tombstone_ttl != b.config.tombstone_ttl {
        out.push(finding(
            Severity::Unsafe,
            "I1",
            first(a),
            "`tombstone_ttl` differs: a copy made under the longer one may outlive a tombstone of the shorter".into(),
        ));
    }
    if a.config.user_key != b.config.user_key {
        out.push(finding(
            Severity::Unsafe,
            "revoke",
            first(a),
            "`user_key` differs: instances that do not index a user's sessions (or find the user elsewhere) \
             extend them without their index, and `revoke_user` may miss them; turn it on everywhere, then \
             save or migrate every session, before relying on revoke"
                .into(),
        ));
    }
    if a.config.refuse_late_writes.unwrap_or(true) != b.config.refuse_late_writes.unwrap_or(true) {
        out.push(finding(
            Severity::Unsafe,
            "I2",
            first(a),
            "`refuse_late_writes` differs: a save that timed out on one side may land over a later save".into(),
        ));
    }
    for (x, y) in [(a, b), (b, a)] {
        if y.config.write_policy == WritePolicy::Any && first(x) != first(y) {
            out.push(finding(
                Severity::Unsafe,
                "I2",
                first(x),
                format!(
                    "{} saves with write policy `any`, which need not reach `{}`, where {} reads first",
                    y.label,
                    first(x),
                    x.label
                ),
            ));
        }
        if y.config.copy_on_read == CopyOnRead::Move && !x.backends.iter().any(|b| b.read && !b.write) {
            for source in y.backends.iter().filter(|b| b.read && !b.write && x.reads_backend(b.name)) {
                out.push(finding(
                    Severity::Unsafe,
                    "I3",
                    source.name,
                    format!(
                        "{} moves sessions out of `{}` on read, which {} reads without a second look at the \
                         backends they move to",
                        y.label, source.name, x.label
                    ),
                ));
            }
        }
    }
}

fn finding(severity: Severity, invariant: &'static str, backend: &str, message: String) -> Finding {
    Finding { severity, invariant, backend: backend.to_owned(), message }
}

/// Hazards of one configuration alone.
fn own_hazards(x: &Shape<'_>, out: &mut Vec<Finding>) {
    let mut seen_source = None;
    for &Role { name, read, write, .. } in &x.backends {
        if read && !write && seen_source.is_none() {
            seen_source = Some(name);
        }
        if read
            && write
            && let Some(source) = seen_source
        {
            out.push(finding(
                Severity::Warning,
                "-",
                source,
                format!(
                    "{}: read before `{name}`, which reads and writes: every load asks it first, and a session \
                     copied from it is read there, then again from `{name}`",
                    x.label
                ),
            ));
        }
    }
}

/// What instances on `y` do to those on `x`.
fn beside(x: &Shape<'_>, y: &Shape<'_>, out: &mut Vec<Finding>) {
    let (xl, yl) = (x.label, y.label);
    // I3: what y creates must be where x looks.
    if !x.reads().any(|r| y.writes(r)) {
        let first = y.backends.iter().find(|b| b.write).map_or("-", |b| b.name);
        out.push(finding(
            Severity::Unsafe,
            "I3",
            first,
            format!("{yl} creates sessions where {xl} never reads: they look logged out on {xl}"),
        ));
    }
    // I2: x answers from the first backend holding the session.
    let mut reached = false; // an earlier backend of x is written by y
    for r in x.reads() {
        if y.writes(r) {
            reached = true;
            continue;
        }
        if !reached {
            out.push(finding(
                Severity::Unsafe,
                "I2",
                r,
                format!(
                    "{xl} answers from `{r}` before any backend {yl} writes: {yl}'s saves never reach it, so {xl} \
                     serves older copies"
                ),
            ));
        } else if !y.is_source(r) {
            out.push(finding(
                Severity::Requires,
                "I2",
                r,
                format!(
                    "{xl} still reads `{r}`, which {yl} neither writes nor reads: it must hold no session (run \
                     `migrate --move` from it, then `verify --empty`) before {yl} runs beside {xl}"
                ),
            ));
        }
    }
    // y starts reading what x only shadows: it may be stale or hold logged-out sessions.
    for r in y.reads() {
        if x.writes(r)
            && !x.reads_backend(r)
            && let Some(reference) = x.reads().find(|other| y.writes(other))
        {
            out.push(finding(
                Severity::Requires,
                "I1/I2",
                r,
                format!(
                    "{yl} reads `{r}`, which {xl} only writes (it may hold older copies and logged-out sessions \
                     from before): once every instance runs {xl}, run `repair --from {reference} --to {r}` \
                     before any moves to {yl}"
                ),
            ));
        }
    }
    // I1: x's logouts must reach everything y reads.
    for r in y.reads() {
        if !x.deletes(r) {
            out.push(finding(
                Severity::Requires,
                "I1",
                r,
                format!(
                    "{xl}'s logouts never reach `{r}`, which {yl} reads: it must hold no session before they run \
                     side by side"
                ),
            ));
        }
    }
    // I1: y's copies and fills must meet x's tombstones, wherever anyone reads.
    for &Role { name, write, .. } in &y.backends {
        if write && !x.deletes(name) && (x.reads_backend(name) || y.reads_backend(name)) {
            out.push(finding(
                Severity::Unsafe,
                "I1",
                name,
                format!(
                    "{yl} writes into `{name}` (copies, and saves filling it), where {xl}'s logouts leave no \
                     tombstone: a write racing a logout on {xl} brings the session back"
                ),
            ));
        }
    }
}

/// Whether any finding makes the pair unsafe.
pub fn is_unsafe(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Unsafe)
}

/// One step of a [`plan`]: a configuration file's text, and the shell script
/// to run once every instance runs it, if any.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Step {
    /// The configuration, in TOML.
    pub config: String,
    /// What to run after every instance runs this step and before any moves
    /// to the next (a `multi-redis-sessions` command line per line), if anything.
    pub then: Option<String>,
}

/// The steps from `from` (TOML text with one backend that reads and writes)
/// to `to` (TOML text with one backend that reads and writes, of another
/// name): see the module docs. Every field of both backends (addresses,
/// credentials, prefixes, timeouts) is kept as written; only modes and
/// order change. The top-level options of `from` apply to step 02 and those
/// of `to` from step 03 on, with copy-on-read `copy` in steps 02 to 04.
///
/// # Errors
///
/// [`Error::Config`] when a text does not parse, or is not of that shape.
pub fn plan(from: &str, to: &str) -> Result<Vec<Step>, Error> {
    let parse = |text: &str, field: &'static str| -> Result<toml::Table, Error> {
        Config::from_toml_str(text)?; // the same validation as the app's
        text.parse::<toml::Table>().map_err(|e| Error::config(None, field, e.to_string()))
    };
    let (a, b) = (parse(from, "from")?, parse(to, "to")?);
    let one = |t: &toml::Table, field: &'static str| -> Result<toml::Table, Error> {
        match t.get("backends").and_then(toml::Value::as_array).map(Vec::as_slice) {
            Some([toml::Value::Table(backend)]) => Ok(backend.clone()),
            _ => Err(Error::config(None, field, "a plan goes from one backend to one other backend")),
        }
    };
    let (old, new) = (one(&a, "from")?, one(&b, "to")?);
    let name = |t: &toml::Table| t.get("name").and_then(toml::Value::as_str).unwrap_or_default().to_owned();
    let (old_name, new_name) = (name(&old), name(&new));
    if old_name == new_name {
        return Err(Error::config(Some(&old_name), "name", "the two backends need different names"));
    }
    let with_modes = |backend: &toml::Table, modes: &[&str]| {
        let mut backend = backend.clone();
        backend.insert("modes".into(), toml::Value::Array(modes.iter().map(|m| (*m).into()).collect()));
        toml::Value::Table(backend)
    };
    let step = |top: &toml::Table, backends: Vec<toml::Value>| {
        let mut table = top.clone();
        // While two backends are read, a move by one instance could delete
        // from "old" what an instance of the neighbouring step reads there
        // after missing in "new" (03 has no source to ask "new" again for).
        table.insert("copy_on_read".into(), "copy".into());
        table.insert("backends".into(), toml::Value::Array(backends));
        table.to_string()
    };
    let cli = "multi-redis-sessions";
    let (old_name, new_name) = (shell_quoted(&old_name), shell_quoted(&new_name));
    Ok(vec![
        Step { config: from.to_owned(), then: None },
        Step {
            config: step(&a, vec![with_modes(&old, &["read", "write"]), with_modes(&new, &["write"])]),
            then: Some(format!("{cli} repair --config \"$DIR/02.toml\" --from {old_name} --to {new_name}\n")),
        },
        Step {
            config: step(&b, vec![with_modes(&new, &["read", "write"]), with_modes(&old, &["read", "write"])]),
            then: None,
        },
        Step {
            config: step(&b, vec![with_modes(&new, &["read", "write"]), with_modes(&old, &["read", "delete"])]),
            then: Some(format!(
                "{cli} migrate --config \"$DIR/04.toml\" --move\n{cli} verify --config \"$DIR/04.toml\" --empty\n"
            )),
        },
        Step { config: to.to_owned(), then: None },
    ])
}

/// `word` as one word for `sh`, taken literally (a backend's name may hold
/// spaces, `$` or quotes).
fn shell_quoted(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_name_reaches_the_scripts_as_one_literal_word() {
        assert_eq!(shell_quoted("old"), "'old'");
        assert_eq!(shell_quoted("it's"), r"'it'\''s'");
        let old = OLD.replace("name = \"old\"", "name = \"old $(touch pwned)\"");
        let steps = plan(&old, NEW).unwrap();
        let repair = steps[1].then.as_deref().unwrap();
        assert!(repair.contains("--from 'old $(touch pwned)' --to 'new'"), "{repair}");
    }

    fn config(text: &str) -> Config {
        Config::from_toml_str(text).unwrap()
    }

    const OLD: &str = "[[backends]]\nname = \"old\"\nmodes = [\"read\", \"write\"]\nurl = \"redis://10.0.0.1\"\n";
    const NEW: &str = "[[backends]]\nname = \"new\"\nmodes = [\"read\", \"write\"]\nurl = \"redis://10.0.0.2\"\n";

    #[test]
    fn every_adjacent_pair_of_a_plan_passes_with_what_its_scripts_establish() {
        let steps: Vec<Config> = plan(OLD, NEW).unwrap().iter().map(|s| config(&s.config)).collect();
        let requires = |a: usize, b: usize| {
            let findings = check(&steps[a], &steps[b]);
            assert!(!is_unsafe(&findings), "{} -> {}: {findings:#?}", a + 1, b + 1);
            findings.iter().filter(|f| f.severity == Severity::Requires).count()
        };
        assert_eq!(requires(0, 1), 0);
        assert_eq!(requires(1, 2), 1, "the repair");
        assert_eq!(requires(2, 3), 0);
        assert_eq!(requires(3, 4), 2, "old empty, for I2 and I1");
        // Skipping a step is not safe.
        assert!(is_unsafe(&check(&steps[0], &steps[2])));
        assert!(is_unsafe(&check(&steps[1], &steps[3])));
    }

    #[test]
    fn store_wide_settings_must_agree() {
        let steps = plan(OLD, NEW).unwrap();
        let (a, b) = (&steps[2].config, &steps[3].config);
        for (setting, invariant) in [("tombstone_ttl = 7200\n", "I1"), ("refuse_late_writes = false\n", "I2")] {
            let findings = check(&config(&format!("{setting}{a}")), &config(b));
            let found = findings.iter().any(|f| f.severity == Severity::Unsafe && f.invariant == invariant);
            assert!(found, "{setting}: {findings:#?}");
        }
        // Write policy `any` beside a step that reads another backend first.
        let any = format!("write_policy = \"any\"\n{}", steps[1].config);
        let findings = check(&config(&any), &config(a));
        assert!(findings.iter().any(|f| f.severity == Severity::Unsafe && f.backend == "new"), "{findings:#?}");
        let moving = b.replace("copy_on_read = \"copy\"", "copy_on_read = \"move\"");
        let findings = check(&config(a), &config(&moving));
        assert!(findings.iter().any(|f| f.invariant == "I3" && f.backend == "old"), "{findings:#?}");
    }
}
