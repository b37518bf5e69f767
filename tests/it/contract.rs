//! The full `SessionStore` contract on one, two and three backends,
//! for every mode combination that validates, reaching the servers by URL,
//! host/port and unix socket. Also checks that exactly the combinations the
//! contract allows are accepted.

use crate::common::{acceptance, servers};
use tower_sessions_multi_redis_store::testing::RedisServer;
use tower_sessions_multi_redis_store::{Backend, Error, Mode, Modes, MultiRedisStore};

/// Every non-empty set of modes.
fn all_modes() -> Vec<Modes> {
    let m = [Mode::Read, Mode::Write, Mode::Delete];
    (1u8..8).map(|bits| Modes::from((0..3).filter(|i| bits & (1 << i) != 0).map(|i| m[i]))).collect()
}

/// The contract's rule, written independently of the builder.
fn should_validate(modes: &[Modes]) -> bool {
    modes.iter().all(|m| !m.can_read() || m.can_delete())
        && modes.iter().any(|m| m.can_read())
        && modes.iter().any(|m| m.can_write())
        && modes.iter().any(|m| m.can_read() && m.can_write())
}

/// Backend `i` on `server`, reached three different ways.
fn backend(i: usize, server: &RedisServer, modes: Modes, prefix: &str) -> Backend {
    let name = format!("b{i}");
    let b = match i % 3 {
        0 => Backend::url(name, server.url()),
        1 => Backend::tcp(name, "127.0.0.1", server.port()),
        _ => Backend::unix(name, server.unix_socket()),
    };
    b.modes(modes).prefix(prefix)
}

async fn every_combination(n: usize) -> usize {
    let servers = servers(n);
    let modes = all_modes();
    let mut combos: Vec<Vec<Modes>> = vec![vec![]];
    for _ in 0..n {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                modes.iter().map(move |m| {
                    let mut c = c.clone();
                    c.push(*m);
                    c
                })
            })
            .collect();
    }
    let mut validated = 0;
    for (k, combo) in combos.iter().enumerate() {
        let prefix = format!("c{k}:");
        let builder = combo
            .iter()
            .enumerate()
            .fold(MultiRedisStore::builder(), |b, (i, m)| b.backend(backend(i, &servers[i], *m, &prefix)));
        let label = format!("{combo:?}");
        match builder.build().await {
            Ok(store) => {
                assert!(should_validate(combo), "{label} should have been refused");
                acceptance(&store, &label).await;
                validated += 1;
            }
            Err(Error::Config { field, .. }) => {
                assert!(!should_validate(combo), "{label} refused ({field}) but is valid");
                assert_eq!(field, "modes", "{label}");
            }
            Err(other) => panic!("{label}: unexpected error {other}"),
        }
    }
    validated
}

#[tokio::test]
async fn one_backend_every_valid_mode_set() {
    assert_eq!(every_combination(1).await, 2, "read+write and read+write+delete");
}

#[tokio::test]
async fn two_backends_every_valid_combination() {
    let validated = every_combination(2).await;
    assert!(validated >= 10, "{validated}");
}

#[tokio::test]
async fn three_backends_every_valid_combination() {
    let validated = every_combination(3).await;
    assert!(validated >= 100, "{validated}");
}
