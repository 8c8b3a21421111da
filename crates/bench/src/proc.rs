//! The server's cost, read from /proc by pid, and this process's own limits.

use std::net::SocketAddr;

/// RSS and CPU time of a process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// utime + stime, seconds.
    pub cpu_s: f64,
}

/// Reads `/proc/<pid>`; zeros when the process is gone.
pub fn sample(pid: u32) -> Sample {
    let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0);
    Sample {
        rss_kib,
        cpu_s: cpu_of(&format!("/proc/{pid}/stat")),
    }
}

/// CPU time of the calling thread alone, seconds.
pub fn thread_cpu_s() -> f64 {
    cpu_of("/proc/thread-self/stat")
}

/// utime + stime from a `stat` file, seconds.
fn cpu_of(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name, which may itself hold spaces.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux the bench runs on; sysconf would need libc.
    100.0
}

/// The pid of the process listening on `addr`'s port (IPv4 loopback or
/// any), found through /proc/net/tcp and each process's fds.
pub fn find_listener(addr: SocketAddr) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = format!("{:04X}", addr.port());
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let local = f.get(1)?;
        // State 0A is LISTEN.
        if local.ends_with(&format!(":{port}")) && f.get(3) == Some(&"0A") {
            f.get(9).map(|i| i.to_string())
        } else {
            None
        }
    })?;
    let target = format!("socket:[{inode}]");
    for proc_dir in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = proc_dir.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_dir.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target) {
                return Some(pid);
            }
        }
    }
    None
}

/// Raises this process's open-file limit to its hard limit; returns how many
/// sockets it may hold (the limit, less room for everything else).
pub fn raise_fd_limit() -> (u64, u64) {
    let hard = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(1024);
    let soft = rlimit::increase_nofile_limit(hard).unwrap_or(1024);
    (soft, soft.saturating_sub(64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_itself_and_finds_its_listener() {
        let me = std::process::id();
        let s = sample(me);
        assert!(s.rss_kib > 0);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(find_listener(listener.local_addr().unwrap()), Some(me));
        let (limit, usable) = raise_fd_limit();
        assert!(limit >= usable && usable > 0);
    }
}
