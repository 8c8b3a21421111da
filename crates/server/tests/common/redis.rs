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
    /// Speak TLS only (certificates in `dir`).
    tls: bool,
    /// More arguments (`--replicaof`, `--requirepass`).
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

/// A free port for a cluster node, whose bus listens 10,000 ports higher.
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55_535 {
            return port;
        }
    }
}

/// Runs openssl in `dir`.
fn openssl(dir: &std::path::Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split(' '))
        .current_dir(dir)
        .output()
        .expect("openssl runs (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Redis {
    /// Starts a server without persistence (a restart loses everything).
    pub fn start() -> Redis {
        Self::start_with(false)
    }

    /// Starts a server; with `aof`, every write is fsynced to an append-only
    /// file (`appendfsync always`) and survives a restart.
    pub fn start_with(aof: bool) -> Redis {
        Self::new(aof).started()
    }

    /// Starts a server with more arguments (`--requirepass`, ...).
    pub fn start_with_args(args: &[&str]) -> Redis {
        let mut redis = Self::new(false);
        redis.extra = args.iter().map(|a| a.to_string()).collect();
        redis.started()
    }

    /// Starts a replica of `master`, with more arguments.
    pub fn start_replica_of(master: &Redis, args: &[&str]) -> Redis {
        let port = master.port.to_string();
        let mut all = vec!["--replicaof", "127.0.0.1", &port];
        all.extend_from_slice(args);
        Self::start_with_args(&all)
    }

    /// Starts a server that speaks TLS only, with a certificate for
    /// 127.0.0.1 signed by a CA made for it (openssl); see [`Redis::ca`].
    pub fn start_tls() -> Redis {
        let mut redis = Self::new(false);
        let dir = redis.dir.clone();
        openssl(
            &dir,
            "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 -subj /CN=tidings-test-ca",
        );
        openssl(
            &dir,
            "req -newkey rsa:2048 -nodes -keyout redis.key -out redis.csr -subj /CN=127.0.0.1",
        );
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        openssl(
            &dir,
            "x509 -req -in redis.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out redis.crt -days 1 -extfile ext.cnf",
        );
        redis.tls = true;
        redis.started()
    }

    /// The CA of a [`Redis::start_tls`] server.
    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.join("ca.crt")
    }

    /// The `rediss://` URL of a [`Redis::start_tls`] server.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// A server not started yet, in a fresh temp dir.
    fn new(aof: bool) -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("tidings-redis-")
            .tempdir()
            .expect("temp dir")
            .keep();
        Redis {
            port: free_port(),
            dir,
            aof,
            cluster: false,
            tls: false,
            extra: Vec::new(),
            child: None,
        }
    }

    /// Starts it; a port another test took meanwhile (the free port was
    /// only free when asked) is traded for another.
    fn started(mut self) -> Redis {
        for _ in 0..5 {
            if self.spawn() {
                return self;
            }
            self.port = if self.cluster {
                cluster_port()
            } else {
                free_port()
            };
        }
        panic!("redis-server did not start (5 ports tried)");
    }

    /// Spawns the server on `port`; false when it exited without listening.
    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.current_dir(&self.dir)
            .args(["--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", if self.aof { "yes" } else { "no" }])
            .args(["--appendfsync", "always"]);
        if self.tls {
            cmd.args(["--port", "0", "--tls-port", &port])
                .args([
                    "--tls-cert-file",
                    "redis.crt",
                    "--tls-key-file",
                    "redis.key",
                ])
                .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"]);
        } else {
            cmd.args(["--port", &port]);
        }
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]);
        }
        let mut child = cmd
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return false;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        true
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs a command with redis-cli; returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let password = self
            .extra
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| self.extra.get(i + 1));
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(
                password
                    .map(|p| vec!["--no-auth-warning", "-a", p.as_str()])
                    .unwrap_or_default(),
            )
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
        assert!(self.spawn(), "redis-server restarted on its port");
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
    /// `redis-cli --cluster create`; returns once every node says ok. A
    /// create that fails (a port taken between asking and binding, its
    /// bus port 10,000 higher among them) is tried again on fresh nodes.
    pub fn start() -> RedisCluster {
        let mut last = String::new();
        for _ in 0..3 {
            let nodes: Vec<Redis> = (0..3)
                .map(|_| {
                    let mut node = Redis::new(false);
                    node.cluster = true;
                    node.port = cluster_port();
                    node.started()
                })
                .collect();
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
            if !out.status.success() {
                last = String::from_utf8_lossy(&out.stdout).into_owned();
                continue;
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            for node in &nodes {
                while !node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                    assert!(Instant::now() < deadline, "the cluster did not become ok");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            return RedisCluster { nodes };
        }
        panic!("cluster create failed three times; last: {last}")
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
    /// Monitors `master` (and its replicas) with `password`, if any.
    pub fn start(master: &Redis, password: Option<&str>) -> Sentinel {
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
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 1\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n{}",
                dir.display(),
                master.port,
                password.map_or(String::new(), |p| format!("sentinel auth-pass mymaster {p}\n"))
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

    /// Runs a command on the Sentinel with redis-cli.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
