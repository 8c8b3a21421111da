//! A real `redis-server` per test: a free loopback port, its own temp dir,
//! killed when dropped. `scripts/test.sh` installs redis-server.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server.
pub struct Redis {
    pub port: u16,
    dir: std::path::PathBuf,
    aof: bool,
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
        let dir = tempfile::Builder::new()
            .prefix("tidings-redis-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let mut redis = Redis {
            port: free_port(),
            dir,
            aof,
            child: None,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
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
