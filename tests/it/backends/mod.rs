//! Each kind of backend on real servers: a partition, a Sentinel group, a
//! Redis Cluster, TLS and ACL users, and the pipelining of one server's link.

pub(crate) mod cluster;
mod partition;
mod pipelining;
mod sentinel;
mod tls_acl;
