//! A real `redis-server` per test: a free loopback port, its own temp dir,
//! killed when dropped. `scripts/test.sh` installs redis-server.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server.
pub struct Redis {
    pub port: u16,
    dir: std::path::PathBuf,
    aof: bool,
    /// Run as a node of a Redis Cluster.
    cluster: bool,
    /// More arguments (`--replicaof`).
    extra: Vec<String>,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Redis {
    /// Starts a server without persistence (a restart loses everything).
    pub fn start() -> Redis {
        Self::start_with(false)
    }

    /// Starts a server; with `aof`, every write is fsynced to an append-only
    /// file (`appendfsync always`) and survives a restart.
    pub fn start_with(aof: bool) -> Redis {
        Self::start_node(aof, false)
    }

    fn start_node(aof: bool, cluster: bool) -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("tidings-redis-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let mut redis = Redis {
            port: free_port(),
            dir,
            aof,
            cluster,
            extra: Vec::new(),
            child: None,
        };
        redis.spawn();
        redis
    }

    /// Starts a server that speaks TLS only, with a certificate for
    /// 127.0.0.1 signed by a CA made for it (openssl); see [`Redis::ca`].
    pub fn start_tls() -> Redis {
        let mut redis = Self::start_node(false, false);
        redis.kill();
        let dir = redis.dir.clone();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl runs (scripts/test.sh installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=tidings-test-ca",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "redis.key",
            "-out",
            "redis.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "redis.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "redis.crt",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ]);
        let port = redis.port.to_string();
        redis.extra = [
            "--port",
            "0",
            "--tls-port",
            &port,
            "--tls-cert-file",
            "redis.crt",
            "--tls-key-file",
            "redis.key",
            "--tls-ca-cert-file",
            "ca.crt",
            "--tls-auth-clients",
            "no",
        ]
        .map(String::from)
        .to_vec();
        redis.spawn();
        redis
    }

    /// The CA of a [`Redis::start_tls`] server.
    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.join("ca.crt")
    }

    /// The `rediss://` URL of a [`Redis::start_tls`] server.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// Starts a replica of `master`.
    pub fn start_replica_of(master: &Redis) -> Redis {
        let mut replica = Self::start_node(false, false);
        replica.kill();
        replica.extra = vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port.to_string(),
        ];
        replica.spawn();
        replica
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.current_dir(&self.dir)
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg(if self.aof { "yes" } else { "no" })
            .arg("--appendfsync")
            .arg("always")
            .args(if self.cluster {
                &["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"][..]
            } else {
                &[][..]
            })
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .expect("redis-server runs (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs a command with redis-cli; returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and
    /// dir: with AOF it comes back with its data, without, empty.
    pub fn restart(&mut self) {
        self.kill();
        // The port is free again once the process is reaped.
        self.spawn();
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters (no replicas), each its own process.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them with
    /// `redis-cli --cluster create`; returns once every node says ok.
    pub fn start() -> RedisCluster {
        let nodes: Vec<Redis> = (0..3).map(|_| Redis::start_node(false, true)).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            while !node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the cluster did not become ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    /// The seeds: every node's URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }
}

/// A Redis Sentinel monitoring one master as `mymaster` (quorum 1, a
/// master is down after 1 s), in its own temp dir.
pub struct Sentinel {
    pub port: u16,
    dir: std::path::PathBuf,
    child: Child,
}

impl Sentinel {
    pub fn start(master: &Redis) -> Sentinel {
        let dir = tempfile::Builder::new()
            .prefix("tidings-sentinel-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let port = free_port();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 1\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n",
                dir.display(),
                master.port
            ),
        )
        .expect("sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sentinel did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Sentinel { port, dir, child }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
