//! TLS (`rediss://` with a CA and client certificates generated here, against
//! `redis-server --tls-port`) and ACL users, on real servers.
#![cfg(feature = "tls")]

use std::path::Path;

use crate::common::{acceptance, record};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tower_sessions_core::{SessionStore, session_store};
use tower_sessions_multi_redis_store::testing::{RedisServer, free_port};
use tower_sessions_multi_redis_store::{Backend, Config, MultiRedisStore};

struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Pki { ca_pem, issuer: Issuer::new(params, key) }
    }

    /// A leaf certificate and key (PEM) for these names.
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        let key = KeyPair::generate().unwrap();
        (params.signed_by(&key, &self.issuer).unwrap().pem(), key.serialize_pem())
    }
}

/// A server's files, PEM: the CA, its certificate and its key.
struct Files {
    ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl Pki {
    /// The CA and a certificate for a server on this machine, written into `dir`.
    fn server_files(&self, dir: &Path) -> Files {
        let (cert, key) = self.leaf(&["localhost", "127.0.0.1"]);
        Files {
            ca: write(dir, "ca.pem", &self.ca_pem),
            cert: write(dir, "server.pem", &cert),
            key: write(dir, "server.key", &key),
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn store(backend: Backend) -> MultiRedisStore {
    MultiRedisStore::builder().backend(backend).build().await.unwrap()
}

fn backend_error(result: session_store::Result<Option<tower_sessions_core::session::Record>>) -> String {
    match result {
        Err(session_store::Error::Backend(msg)) => msg,
        other => panic!("expected a backend error, got {other:?}"),
    }
}

#[tokio::test]
async fn rediss_with_a_custom_ca_and_client_certificates() {
    let (dir, pki) = (tempfile::tempdir().unwrap(), Pki::new("test CA"));
    let Files { ca, cert, key } = pki.server_files(dir.path());

    // Server authenticates by certificate only.
    let server = RedisServer::start_tls(&cert, &key, &ca, false).unwrap();
    let url = format!("rediss://127.0.0.1:{}", server.tls_port().unwrap());
    let secure = store(Backend::url("secure", &url).tls_root_ca(pki.ca_pem.clone())).await;
    acceptance(&secure, "rediss").await;

    // A CA that did not sign the server certificate: refused, clearly.
    let stranger = Pki::new("another CA");
    let wrong = store(Backend::url("secure", &url).tls_root_ca(stranger.ca_pem.clone())).await;
    let msg = backend_error(wrong.load(&record("x").id).await);
    assert!(msg.contains("backend `secure`"), "{msg}");
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");

    // Mutual TLS: a client certificate signed by the CA is required.
    let mtls = RedisServer::start_tls(&cert, &key, &ca, true).unwrap();
    let url = format!("rediss://127.0.0.1:{}", mtls.tls_port().unwrap());
    let (client_cert, client_key) = pki.leaf(&["app"]);
    let with_cert = store(
        Backend::url("mtls", &url)
            .tls_root_ca(pki.ca_pem.clone())
            .tls_client_cert(client_cert.clone(), client_key.clone()),
    )
    .await;
    acceptance(&with_cert, "mtls").await;
    let without = store(Backend::url("mtls", &url).tls_root_ca(pki.ca_pem.clone())).await;
    let msg = backend_error(without.load(&record("x").id).await);
    assert!(msg.contains("backend `mtls`"), "{msg}");

    // The same from a config file.
    let client_cert_path = write(dir.path(), "client.pem", &client_cert);
    let client_key_path = write(dir.path(), "client.key", &client_key);
    let config = Config::from_toml_str(&format!(
        "[[backends]]\nname = \"mtls\"\nmodes = [\"read\", \"write\"]\nurl = \"{url}\"\ntls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        ca.display(),
        client_cert_path.display(),
        client_key_path.display()
    ))
    .unwrap();
    let from_file = config.into_builder().unwrap().build().await.unwrap();
    acceptance(&from_file, "mtls from config").await;
}

/// `tls = true` on a `host`/`port` backend: TLS, never plain text (before,
/// the flag was read only for Sentinel backends, and the others connected,
/// and sent their password, in plain text).
#[tokio::test]
async fn a_host_and_port_backend_with_tls_speaks_tls() {
    let (dir, pki) = (tempfile::tempdir().unwrap(), Pki::new("test CA"));
    let Files { ca, cert, key } = pki.server_files(dir.path());
    let server = RedisServer::start_tls(&cert, &key, &ca, false).unwrap();
    let port = server.tls_port().unwrap();
    let secure = store(Backend::tcp("secure", "127.0.0.1", port).tls(true).tls_root_ca(pki.ca_pem.clone())).await;
    acceptance(&secure, "host and port over TLS").await;
    // The same from a config file.
    let config = Config::from_toml_str(&format!(
        "[[backends]]\nname = \"secure\"\nmodes = [\"read\", \"write\"]\nhost = \"127.0.0.1\"\nport = {port}\ntls = true\ntls_ca_file = \"{}\"\n",
        ca.display()
    ))
    .unwrap();
    acceptance(&config.into_builder().unwrap().build().await.unwrap(), "host and port over TLS, from a file").await;
}

/// A Redis Cluster over TLS (`tls-cluster yes`): the seeds, the nodes the
/// slot map names, and the scan's own connections to each node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_backend_over_tls() {
    let (dir, pki) = (tempfile::tempdir().unwrap(), Pki::new("test CA"));
    let Files { ca, cert, key } = pki.server_files(dir.path());
    let (ca_s, cert_s, key_s) = (ca.display().to_string(), cert.display().to_string(), key.display().to_string());
    let mut tls_ports = Vec::new();
    let nodes: Vec<RedisServer> = (0..3)
        .map(|_| {
            let port = free_port().unwrap().to_string();
            tls_ports.push(port.clone());
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "3000",
                "--tls-port",
                &port,
                "--tls-cert-file",
                &cert_s,
                "--tls-key-file",
                &key_s,
                "--tls-ca-cert-file",
                &ca_s,
                "--tls-auth-clients",
                "no",
                "--tls-cluster",
                "yes",
                "--tls-replication",
                "yes",
            ];
            RedisServer::start_with(&args).unwrap()
        })
        .collect();
    let mut create: Vec<String> = ["--tls", "--cacert", &ca_s, "--cluster", "create"].map(str::to_owned).to_vec();
    create.extend(tls_ports.iter().map(|p| format!("127.0.0.1:{p}")));
    create.extend(["--cluster-yes".to_owned()]);
    super::cluster::redis_cli(&create.iter().map(String::as_str).collect::<Vec<_>>());
    for _ in 0..100 {
        let ok = nodes.iter().all(|n| {
            super::cluster::redis_cli(&["-p", &n.port().to_string(), "CLUSTER", "INFO"]).contains("cluster_state:ok")
        });
        if ok {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let seeds: Vec<(&str, u16)> = tls_ports.iter().map(|p| ("127.0.0.1", p.parse().unwrap())).collect();
    let secure = store(Backend::cluster("secure", seeds.clone()).tls(true).tls_root_ca(pki.ca_pem.clone())).await;
    acceptance(&secure, "cluster over TLS").await;
    // The walk of every slot goes over TLS too.
    let stats = secure.stats().await;
    assert!(stats[0].error.is_none() && stats[0].sessions.is_some(), "{stats:?}");

    // Without the CA: refused, naming the backend, never plain text.
    let unknown = store(Backend::cluster("secure", seeds).tls(true)).await;
    let msg = backend_error(unknown.load(&record("x").id).await);
    assert!(msg.contains("backend `secure`"), "{msg}");
}

#[tokio::test]
async fn an_acl_user_with_limited_rights_works_and_a_wrong_password_names_the_backend() {
    let server = RedisServer::start().unwrap();
    // Only the session keys, only the commands the store uses.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("app")
        .arg("on")
        .arg(">app-password")
        .arg("resetkeys")
        .arg("~sess:*")
        .arg("-@all")
        .arg("+get")
        .arg("+set")
        .arg("+del")
        .arg("+exists")
        .arg("+eval")
        .arg("+evalsha")
        .arg("+time")
        .arg("+pttl")
        .arg("+ping")
        .query_async(&mut crate::common::conn(&server).await)
        .await
        .unwrap();
    let limited =
        store(Backend::tcp("acl", "127.0.0.1", server.port()).username("app").password("app-password").prefix("sess:"))
            .await;
    acceptance(&limited, "acl user").await;

    // Outside its keys: refused by the server, reported with the backend.
    let outside = store(
        Backend::tcp("acl", "127.0.0.1", server.port()).username("app").password("app-password").prefix("other:"),
    )
    .await;
    let msg = backend_error(outside.load(&record("x").id).await);
    assert!(msg.contains("backend `acl`") && msg.to_lowercase().contains("noperm"), "{msg}");

    let wrong = store(Backend::url("acl", format!("redis://app:wrong-password@127.0.0.1:{}", server.port()))).await;
    let msg = backend_error(wrong.load(&record("x").id).await);
    assert!(msg.contains("backend `acl`"), "{msg}");
    assert!(msg.contains("WRONGPASS") || msg.to_lowercase().contains("auth"), "{msg}");
    assert!(!msg.contains("wrong-password"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_backend_over_tls() {
    let (dir, pki) = (tempfile::tempdir().unwrap(), Pki::new("test CA"));
    let Files { ca, cert, key } = pki.server_files(dir.path());
    let (ca_s, cert_s, key_s) = (ca.display().to_string(), cert.display().to_string(), key.display().to_string());
    let tls = |port: &str| -> Vec<String> {
        ["--tls-port", port, "--tls-cert-file", &cert_s, "--tls-key-file", &key_s, "--tls-ca-cert-file", &ca_s]
            .iter()
            .map(|s| (*s).to_owned())
            .chain(["--tls-auth-clients".to_owned(), "no".to_owned(), "--tls-replication".to_owned(), "yes".to_owned()])
            .collect()
    };
    let master_tls = free_port().unwrap().to_string();
    let args = tls(&master_tls);
    let master = RedisServer::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    let replica_tls = free_port().unwrap().to_string();
    let mut args = tls(&replica_tls);
    args.extend(["--replicaof".to_owned(), "127.0.0.1".to_owned(), master_tls.clone()]);
    let _replica = RedisServer::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    let mut sentinel_tls_ports = Vec::new();
    let sentinels: Vec<RedisServer> = (0..3)
        .map(|_| {
            let port = free_port().unwrap();
            sentinel_tls_ports.push(port);
            let lines = [
                format!("tls-port {port}"),
                format!("tls-cert-file {cert_s}"),
                format!("tls-key-file {key_s}"),
                format!("tls-ca-cert-file {ca_s}"),
                "tls-auth-clients no".to_owned(),
                "tls-replication yes".to_owned(),
            ];
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            RedisServer::start_sentinel_with("sessions", master_tls.parse().unwrap(), &lines).unwrap()
        })
        .collect();
    crate::common::wait_for_replica(&master.url()).await;
    let addrs: Vec<(&str, u16)> = sentinel_tls_ports.iter().map(|p| ("127.0.0.1", *p)).collect();
    let store = MultiRedisStore::builder()
        .backend(Backend::sentinel("ha", addrs.clone(), "sessions").tls(true).tls_root_ca(pki.ca_pem.clone()))
        .build()
        .await
        .unwrap();
    acceptance(&store, "sentinel over TLS").await;
    let mut rec = record("ada");
    store.create(&mut rec).await.unwrap();
    let found: bool = redis::cmd("EXISTS")
        .arg(rec.id.to_string())
        .query_async(&mut crate::common::conn(&master).await)
        .await
        .unwrap();
    assert!(found, "written to the master");

    // Another CA: refused, naming the backend.
    let stranger = Pki::new("another CA");
    let wrong = MultiRedisStore::builder()
        .backend(Backend::sentinel("ha", addrs, "sessions").tls(true).tls_root_ca(stranger.ca_pem.clone()))
        .build()
        .await
        .unwrap();
    let msg = backend_error(wrong.load(&rec.id).await);
    assert!(msg.contains("backend `ha`"), "{msg}");
    drop(sentinels);
}
