//! Races between requests: colliding ids, saves and copies racing logouts,
//! and one forced interleaving per way a command of unknown outcome (timed
//! out, reply lost, held up) used to break an invariant.

mod logins_and_saves;
mod unknown_outcomes;
