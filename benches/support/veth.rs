//! `BENCH_LINK=veth`: redis-servers in a network namespace of their own,
//! reached over a veth pair (MTU 1500, like Ethernet) instead of loopback
//! (MTU 65536). Linux, root and `ip` (iproute2) only.
//!
//! Loopback hides what a real link does to small writes: with a 64 KB MTU,
//! Nagle's algorithm coalesces many commands into one segment and one wake-up
//! of the server, which no network path does. A veth pair has an
//! Ethernet-sized MTU and a real device queue, with no added delay (this
//! kernel has no `netem`).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A network namespace holding one end of a veth pair; deleted on drop.
pub struct Veth {
    ns: String,
    host_if: String,
    /// The servers' address, inside the namespace.
    pub server_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|err| format!("ip {}: {err}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Veth {
    /// Creates the namespace and the link, named after this process.
    pub fn create() -> Result<Veth, String> {
        let id = std::process::id() % 250 + 1;
        let veth = Veth {
            ns: format!("tsmrs-bench-{}", std::process::id()),
            host_if: format!("tsmrs{id}h"),
            server_ip: format!("10.213.{id}.2"),
        };
        let peer_if = format!("tsmrs{id}s");
        let (host_cidr, server_cidr) = (format!("10.213.{id}.1/24"), format!("{}/24", veth.server_ip));
        ip(&["netns", "add", &veth.ns])?;
        // From here on, drop cleans up whatever was made.
        ip(&["link", "add", &veth.host_if, "type", "veth", "peer", "name", &peer_if])?;
        ip(&["link", "set", &peer_if, "netns", &veth.ns])?;
        ip(&["addr", "add", &host_cidr, "dev", &veth.host_if])?;
        ip(&["link", "set", &veth.host_if, "up"])?;
        ip(&["netns", "exec", &veth.ns, "ip", "addr", "add", &server_cidr, "dev", &peer_if])?;
        ip(&["netns", "exec", &veth.ns, "ip", "link", "set", &peer_if, "up"])?;
        ip(&["netns", "exec", &veth.ns, "ip", "link", "set", "lo", "up"])?;
        Ok(veth)
    }

    /// Starts a redis-server inside the namespace, listening on the link.
    pub fn start_server(&self, port: u16) -> Result<NsServer, String> {
        let dir = tempfile::Builder::new().prefix("tsmrs-veth-").tempdir().map_err(|err| err.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "redis-server", "--port", &port.to_string(), "--bind", &self.server_ip])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir"])
            .arg(dir.path())
            .arg("--logfile")
            .arg(dir.path().join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("ip netns exec redis-server: {err}"))?;
        let server = NsServer { child, url: format!("redis://{}:{port}", self.server_ip), _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = format!("{}:{port}", self.server_ip).parse().map_err(|err| format!("{err}"))?;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                return Err(format!("redis-server in {} did not listen on {addr} within 10 s", self.ns));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Deleting the namespace deletes the peer, and with it the pair.
        let _ = ip(&["netns", "delete", &self.ns]);
        let _ = ip(&["link", "delete", &self.host_if]);
    }
}

/// A redis-server inside a [`Veth`] namespace, killed on drop.
pub struct NsServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl NsServer {
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// `ip netns exec` execs the server, so this is the server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
