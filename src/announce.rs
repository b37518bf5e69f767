//! What each store instance announces in its backends, so an operator sees
//! which configurations are live and when a rolling deploy finished: the
//! fingerprint of its configuration (backend names, modes and order, and the
//! store-wide settings; never an address or a secret), in a key that lives
//! [`LiveConfiguration::ANNOUNCE_TTL`] and that a task of the store refreshes every
//! [`LiveConfiguration::ANNOUNCE_EVERY`] while the store lives.
//!
//! The key is `<prefix>multi-redis-sessions:instance:<fingerprint>:<instance>`
//! in every backend the store writes or deletes from. It is not a session id,
//! so the migrator, `verify` and `stats` pass it by. Cost: one `SET` per such
//! backend and instance every five seconds. `announce(false)` (config key
//! `announce = false`) turns it off.

use std::fmt::Write as _;
use std::sync::Weak;
use std::time::Duration;

use serde::Serialize;

use crate::error::Error;
use crate::keys::ANNOUNCE_TAIL;
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
    /// When a backend cannot be scanned.
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

async fn announce(store: &MultiRedisStore, id: &str) {
    let value = store.description();
    for node in store.nodes().iter().filter(|n| n.modes.can_delete()) {
        if let Err(err) = node.announce(id, &value, LiveConfiguration::ANNOUNCE_TTL).await {
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
            }
        });
    }
}

/// The announcements found in `nodes`, by fingerprint.
pub(crate) async fn live(nodes: &[Node]) -> Result<Vec<LiveConfiguration>, Error> {
    let mut found: Vec<LiveConfiguration> = Vec::new();
    let mut instances = std::collections::HashSet::new();
    for node in nodes.iter().filter(|n| n.modes.can_delete()) {
        let (mut cursor, walk) = (0, crate::connection::Walk::default());
        loop {
            let (next, keys) = node.scan_after_prefix(cursor, 1000, ANNOUNCE_TAIL, &walk).await?;
            for key in keys {
                let Some(id) = node.id_of(&key) else { continue };
                let Some(rest) = id.strip_prefix(ANNOUNCE_TAIL) else { continue };
                let Some((fingerprint, instance)) = rest.split_once(':') else { continue };
                if !instances.insert((fingerprint.to_owned(), instance.to_owned())) {
                    continue;
                }
                let backends = node.get(id, None).await?.map(|v| String::from_utf8_lossy(&v).into_owned());
                match found.iter_mut().find(|c| c.fingerprint == fingerprint) {
                    Some(config) => config.instances += 1,
                    None => found.push(LiveConfiguration {
                        fingerprint: fingerprint.to_owned(),
                        backends: backends.unwrap_or_default(),
                        instances: 1,
                    }),
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    found.sort_by(|a, b| b.instances.cmp(&a.instances).then_with(|| a.fingerprint.cmp(&b.fingerprint)));
    Ok(found)
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
