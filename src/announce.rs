//! What each store instance announces in its backends, so an operator sees
//! which configurations are live and when a rolling deploy finished: the
//! fingerprint of its configuration (backend names, modes and order, and the
//! store-wide settings; never an address or a secret), in a key that lives
//! [`LiveConfiguration::ANNOUNCE_TTL`] and that a task of the store refreshes every
//! [`LiveConfiguration::ANNOUNCE_EVERY`] while the store lives.
//!
//! The key is `<prefix>multi-redis-sessions:instance:<fingerprint>:<instance>`
//! in every backend the store writes or deletes from, and its name is added
//! to that backend's registry, a sorted set at
//! `<prefix>multi-redis-sessions:instance:all`. Neither is a session id, so
//! the migrator, `verify` and `stats` pass them by. Cost: one `SET` and one
//! pipelined `ZADD` per such backend and instance every five seconds.
//! `announce(false)` (config key `announce = false`) turns it off.
//!
//! Why a registry: reading what is live must be cheap enough for a move to
//! check it again every few seconds while it runs (`migrate.rs`), and a
//! `SCAN` for the announcements walks the whole keyspace. The registry is
//! only the list of names; each name is live while its key is there (the
//! key's expiry is the server's, so no clock of an instance is trusted).
//! Its entries are scored by when they were last renewed (ms since the Unix
//! epoch, on the instance's clock), and an instance that renews drops those
//! an hour old: an instance gone without withdrawing its name.

use std::fmt::Write as _;
use std::sync::Weak;
use std::time::Duration;

use serde::Serialize;

use crate::error::Error;
use crate::keys::{ANNOUNCE_REGISTRY, ANNOUNCE_TAIL};
use crate::mode::{Mode, Modes};
use crate::node::Node;
use crate::store::{Inner, MultiRedisStore};

/// The configurations live in a store's backends (from
/// [`MultiRedisStore::live_configurations`]).
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct LiveConfiguration {
    /// Its fingerprint ([`MultiRedisStore::fingerprint`]).
    pub fingerprint: String,
    /// Its backends and modes, in order, e.g. `new:read+write old:read+delete`.
    pub backends: String,
    /// How many instances announce it now.
    pub instances: usize,
}

/// How many instances run it, its fingerprint and its backends:
/// `2 instance(s) of 9f3c...: new:read+write old:read+delete ...`.
impl std::fmt::Display for LiveConfiguration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} instance(s) of {}: {}", self.instances, self.fingerprint, self.backends.trim())
    }
}

impl LiveConfiguration {
    /// How often an instance renews its announcement.
    pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

    /// How long an announcement lives without renewal.
    pub const ANNOUNCE_TTL: Duration = Duration::from_secs(15);

    /// The modes this configuration gives the backend named `backend`, read
    /// from its [`backends`](Self::backends): `Ok(None)` when it has no
    /// backend of that name, `Err(())` when the description cannot say (a
    /// name that holds another backend's name and a colon, or text from an
    /// unknown release), which a caller deciding what is safe must treat as
    /// the worst case.
    pub(crate) fn modes_of(&self, backend: &str) -> Result<Option<Modes>, ()> {
        let mut found = None;
        let tag = format!("{backend}:");
        for (at, _) in self.backends.match_indices(&tag) {
            if at > 0 && !self.backends[..at].ends_with(' ') {
                continue;
            }
            let rest = &self.backends[at + tag.len()..];
            let word = rest.split(' ').next().unwrap_or_default();
            let Ok(modes) = word.split('+').map(str::parse::<Mode>).collect::<Result<Vec<_>, _>>() else {
                continue;
            };
            if found.replace(Modes::from(modes)).is_some() {
                return Err(());
            }
        }
        Ok(found)
    }
}

impl MultiRedisStore {
    /// What this configuration is, without any address or secret: the
    /// backends' names and modes in order, and the store-wide settings.
    pub(crate) fn description(&self) -> String {
        let o = self.options();
        let mut settings = format!(
            "copy_on_read={:?} read_policy={:?} write_policy={:?} refuse_late_writes={} tombstone_ttl={:?}",
            o.copy_on_read, o.read_policy, o.write_policy, o.refuse_late_writes, o.tombstone_ttl
        );
        if let Some(users) = self.users() {
            // Only when set: the fingerprints of other configurations stay.
            let _ = write!(settings, " user_key={:?} max_sessions_per_user={}", users.key, users.cap);
        }
        describe(self.nodes().iter().map(|n| (n.name.clone(), n.modes.to_string())), &settings)
    }

    /// The fingerprint of this configuration (16 hex digits): equal for two
    /// instances built from the same file, different when a backend, its
    /// modes, their order or a store-wide setting differ. Addresses and
    /// secrets are not part of it.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.description())
    }

    /// The configurations that app instances announce in this store's
    /// backends right now, and how many instances run each: a rolling deploy
    /// is done when only one is left (see `announce`).
    ///
    /// # Errors
    ///
    /// When a backend's registry of announcements cannot be read.
    pub async fn live_configurations(&self) -> Result<Vec<LiveConfiguration>, Error> {
        live(self.nodes()).await
    }
}

/// The fingerprint of a configuration's description (FNV-1a, 64 bits: fixed
/// across processes and releases, unlike `std`'s hasher).
pub(crate) fn fingerprint(description: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in description.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Announces `store` now and then every [`LiveConfiguration::ANNOUNCE_EVERY`] until it is
/// dropped, from a task of its own (when a tokio runtime runs the build).
pub(crate) fn start(store: &MultiRedisStore) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let weak: Weak<Inner> = store.downgrade();
    let instance = format!("{:032x}", tower_sessions_core::session::Id::default().0);
    let id = format!("{ANNOUNCE_TAIL}{}:{instance}", store.fingerprint());
    store.announced_as(id.clone());
    runtime.spawn(async move {
        loop {
            let Some(store) = MultiRedisStore::upgrade(&weak) else { return };
            announce(&store, &id).await;
            drop(store);
            tokio::time::sleep(LiveConfiguration::ANNOUNCE_EVERY).await;
        }
    });
}

/// How old (by its score) an entry of the registry must be to be dropped.
const STALE: Duration = Duration::from_secs(3600);

async fn announce(store: &MultiRedisStore, id: &str) {
    let value = store.description();
    let now = crate::users::unix_ms();
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    for node in store.nodes().iter().filter(|n| n.modes.can_delete()) {
        // The key first: a name in the registry without its key reads as
        // gone, never the other way round.
        let announced = match node.announce(id, &value, LiveConfiguration::ANNOUNCE_TTL).await {
            Ok(()) => {
                let score = now.saturating_add(ms(LiveConfiguration::ANNOUNCE_TTL));
                node.register(ANNOUNCE_REGISTRY, id, score, now.saturating_sub(ms(STALE))).await
            }
            Err(err) => Err(err),
        };
        if let Err(err) = announced {
            tracing::debug!(backend = %node.name, error = %err, "could not announce this instance");
        }
    }
}

/// A store dropped (an instance shutting down, or replaced in a rolling
/// deploy) withdraws its announcement at once, best effort, from a task of
/// its own: else it would count as live for up to
/// [`LiveConfiguration::ANNOUNCE_TTL`], and hold up a move (`migrate.rs`).
impl Drop for Inner {
    fn drop(&mut self) {
        let Some(id) = self.announced.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let nodes = std::mem::take(&mut self.nodes);
        runtime.spawn(async move {
            for node in nodes.iter().filter(|n| n.modes.can_delete()) {
                let _ = node.del(&id, None).await;
                let _ = node.unregister(ANNOUNCE_REGISTRY, &id).await;
            }
        });
    }
}

/// The announcements found in `nodes`, by fingerprint: the names in each
/// backend's registry whose key is there.
pub(crate) async fn live(nodes: &[Node]) -> Result<Vec<LiveConfiguration>, Error> {
    let mut found: Vec<LiveConfiguration> = Vec::new();
    let mut instances = std::collections::HashSet::new();
    for node in nodes.iter().filter(|n| n.modes.can_delete()) {
        let names = node.registered(ANNOUNCE_REGISTRY).await?;
        // Only names an instance writes: anything else in the set is not
        // read.
        let names: Vec<&str> = names.iter().map(String::as_str).filter(|name| parse(name).is_some()).collect();
        if names.is_empty() {
            continue;
        }
        let values = node.per_session_each::<Option<Vec<u8>>>("GET", names.iter().copied(), None).await?;
        for (name, value) in names.into_iter().zip(values) {
            let Some((fingerprint, instance)) = parse(name) else { continue };
            // Gone (expired, or withdrawn since the registry was read), or
            // not a string: not live.
            let Ok(Some(value)) = value else { continue };
            if !instances.insert((fingerprint.to_owned(), instance.to_owned())) {
                continue;
            }
            match found.iter_mut().find(|c| c.fingerprint == fingerprint) {
                Some(config) => config.instances += 1,
                None => found.push(LiveConfiguration {
                    fingerprint: fingerprint.to_owned(),
                    backends: String::from_utf8_lossy(&value).into_owned(),
                    instances: 1,
                }),
            }
        }
    }
    found.sort_by(|a, b| b.instances.cmp(&a.instances).then_with(|| a.fingerprint.cmp(&b.fingerprint)));
    Ok(found)
}

/// The fingerprint and instance an announcement's name holds.
fn parse(name: &str) -> Option<(&str, &str)> {
    name.strip_prefix(ANNOUNCE_TAIL)?.split_once(':')
}

/// A configuration's description: what the fingerprint is taken of.
pub(crate) fn describe(backends: impl Iterator<Item = (String, String)>, settings: &str) -> String {
    let mut text = String::new();
    for (name, modes) in backends {
        let _ = write!(text, "{name}:{modes} ");
    }
    text.push_str(settings);
    text
}

#[cfg(test)]
mod tests {
    use super::LiveConfiguration;
    use crate::Modes;

    #[test]
    fn a_backends_modes_are_read_back_from_the_description() {
        let live =
            |backends: &str| LiveConfiguration { fingerprint: String::new(), backends: backends.into(), instances: 1 };
        let c = live("new:read+write old:read+delete copy_on_read=Move read_policy=First");
        assert_eq!(c.modes_of("old"), Ok(Some(Modes::READ_DELETE)));
        assert_eq!(c.modes_of("new"), Ok(Some(Modes::READ_WRITE)));
        assert_eq!(c.modes_of("ld"), Ok(None), "a suffix of a name is not the name");
        assert_eq!(c.modes_of("other"), Ok(None));
        // A name with a space, and one that holds another's name and a colon.
        assert_eq!(live("my old:read my new:write ").modes_of("my old"), Ok(Some(Modes::READ)));
        assert_eq!(live("a:read x a:write ").modes_of("a"), Err(()));
    }

    #[test]
    fn the_fingerprint_is_fixed() {
        // Changing this makes every running instance look like another configuration.
        assert_eq!(super::fingerprint(""), "cbf29ce484222325");
        assert_eq!(super::fingerprint("new:read+write"), super::fingerprint("new:read+write"));
        assert_ne!(super::fingerprint("new:read+write"), super::fingerprint("new:read+delete"));
    }
}
