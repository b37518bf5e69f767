//! The integration tests, in one binary (one link to build, one place for the
//! shared helpers): a module per topic, every test against real servers it
//! starts itself (`testing::RedisServer`), never the default port.

mod common;

mod backends;
mod bad_input;
mod cli;
mod compat;
mod contract;
mod faults;
mod hygiene;
mod migration;
mod model;
mod props;
mod races;
mod secrets;
mod spans;
mod users;
