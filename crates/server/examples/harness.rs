//! A small load harness until `tidings bench` exists (see docs/benchmarks.md).
//!
//! `harness idle ADDR PID N` — opens N connected, subscribed WebSocket
//! clients and reports the server's RSS per connection.
//! `harness fanout ADDR PID N RATE SECS` — N subscribers of one channel, one
//! publisher at RATE publications/s for SECS; reports delivered/s, loss,
//! publish→delivery latency percentiles and server CPU per delivered message.
//! `harness publish ADDR PID N SECS` — N publishers awaiting each ack:
//! publish throughput and acknowledgement latency.
//! `harness sse-idle|poll-idle ADDR PID N` — N open SSE streams or held
//! long-polls: RSS each and idle CPU.
//! `harness sse-fanout ADDR PID N RATE SECS` — N SSE streams of one channel.
//! `harness presence-churn ADDR PID MEMBERS CHURN SECS PUBS` — a presence room
//! under connect/disconnect churn: server CPU and publication latency.
//! `harness ceiling - 0 N ROUNDS` — no server: the cost of one lone small
//! write per socket, the kernel-bound floor of fanout to idle subscribers.
//! Targets loopback only; every loop is bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_websockets::{ClientBuilder, Message};

fn proc_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// utime + stime of a process, in seconds.
fn proc_cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The position vector of channel `p` now (a long-poll without `since`).
async fn first_position(addr: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /v1/poll?channel=p HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    let start = text.find("\"position\":\"").expect("a position") + 12;
    text[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The percentile function (in ms) of sorted latencies in µs.
fn percentiles(l: &[u64]) -> impl Fn(f64) -> f64 + '_ {
    |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    }
}

/// The unsigned integer right after `key` in `line`.
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

type Ws =
    tokio_websockets::WebSocketStream<tokio_websockets::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(addr: &str, channel: &str) -> Ws {
    let uri = format!("ws://{addr}/v1/ws").parse().unwrap();
    let (mut ws, _) = ClientBuilder::from_uri(uri)
        .connect()
        .await
        .expect("connect");
    let tokio_websockets::MaybeTlsStream::Plain(tcp) = ws.get_ref();
    tcp.set_nodelay(true).unwrap();
    let cmds = format!(
        "{{\"id\":1,\"op\":\"connect\"}}\n{{\"id\":2,\"op\":\"subscribe\",\"channel\":\"{channel}\"}}"
    );
    ws.send(Message::text(cmds)).await.unwrap();
    let mut replies = 0;
    while replies < 2 {
        let m = ws.next().await.unwrap().unwrap();
        replies += m.as_text().unwrap_or("").matches("\"id\":").count();
    }
    ws
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    let addr = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:8000".into());
    let pid: u32 = args
        .get(3)
        .and_then(|p| p.parse().ok())
        .expect("server PID");
    let n: usize = args.get(4).and_then(|p| p.parse().ok()).unwrap_or(1000);
    match mode {
        "idle" => {
            let before = proc_rss_kib(pid);
            let started = Instant::now();
            let mut conns = Vec::with_capacity(n);
            for i in 0..n {
                conns.push(open(&addr, &format!("room{}", i % 100)).await);
            }
            let setup = started.elapsed();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = proc_rss_kib(pid);
            println!(
                "idle: {n} connections (subscribed to 1 of 100 channels) in {:.2}s ({:.0}/s); server RSS {before} KiB -> {after} KiB; {:.2} KiB per connection",
                setup.as_secs_f64(),
                n as f64 / setup.as_secs_f64(),
                (after.saturating_sub(before)) as f64 / n as f64
            );
            drop(conns);
        }
        "fanout" => {
            let rate: u64 = args.get(5).and_then(|p| p.parse().ok()).unwrap_or(10);
            let secs: u64 = args.get(6).and_then(|p| p.parse().ok()).unwrap_or(10);
            let total = rate * secs;
            let delivered = Arc::new(AtomicU64::new(0));
            let latencies = Arc::new(parking_lot::Mutex::new(Vec::<u64>::new()));
            let mut tasks = Vec::new();
            for _ in 0..n {
                let mut ws = open(&addr, "fan").await;
                let delivered = delivered.clone();
                let latencies = latencies.clone();
                tasks.push(tokio::spawn(async move {
                    let mut next = 1u64;
                    let mut lost = 0u64;
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs + 10);
                    while next <= total {
                        let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await
                        else {
                            break;
                        };
                        let Some(text) = m.as_text() else { continue };
                        // A cheap scan instead of a JSON parse: the harness must not be the bottleneck.
                        for line in text.split('\n') {
                            if line.starts_with("{\"push\":\"ping\"") {
                                let _ = ws.send(Message::text("{\"op\":\"pong\"}")).await;
                            }
                            if !line.starts_with("{\"push\":\"pub\"") {
                                continue;
                            }
                            let Some(o) = number_after(line, "\"offset\":") else {
                                continue;
                            };
                            lost += o.saturating_sub(next);
                            next = o + 1;
                            delivered.fetch_add(1, Ordering::Relaxed);
                            if let Some(sent) = number_after(line, "\"t\":") {
                                latencies.lock().push(now_us().saturating_sub(sent));
                            }
                        }
                    }
                    lost + total.saturating_sub(next - 1)
                }));
            }
            // Clients may publish only into channels they subscribe (the default
            // namespace's rule): the publisher subscribes too and drains its socket.
            let (mut publisher, mut echo) = open(&addr, "fan").await.split();
            let drain = tokio::spawn(async move { while let Some(Ok(_)) = echo.next().await {} });
            let cpu0 = proc_cpu_s(pid);
            let start = Instant::now();
            let interval = Duration::from_secs_f64(1.0 / rate as f64);
            let mut ticker = tokio::time::interval(interval);
            for i in 0..total {
                ticker.tick().await;
                let cmd = format!(
                    "{{\"id\":{},\"op\":\"publish\",\"channel\":\"fan\",\"data\":{{\"t\":{},\"pad\":\"{}\"}}}}",
                    i + 10,
                    now_us(),
                    "x".repeat(64)
                );
                publisher.send(Message::text(cmd)).await.unwrap();
            }
            let mut lost = 0;
            drain.abort();
            for t in tasks {
                lost += t.await.unwrap_or(total);
            }
            let elapsed = start.elapsed().as_secs_f64();
            let cpu = proc_cpu_s(pid) - cpu0;
            let d = delivered.load(Ordering::Relaxed);
            let mut l = latencies.lock().clone();
            l.sort_unstable();
            let pct = percentiles(&l);
            println!(
                "fanout: {n} subscribers, {rate} pub/s for {secs}s: delivered {d} ({:.0}/s), lost {lost}; latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}; server CPU {:.2}s = {:.2} us per delivered message; RSS {} KiB",
                d as f64 / elapsed,
                pct(0.5),
                pct(0.9),
                pct(0.99),
                pct(0.999),
                pct(1.0),
                cpu,
                cpu * 1e6 / d.max(1) as f64,
                proc_rss_kib(pid)
            );
        }
        "publish" => {
            // N publishers over WebSocket, each awaiting every acknowledgement,
            // into one channel with ~100-byte payloads, for SECS seconds.
            let secs: u64 = args.get(5).and_then(|p| p.parse().ok()).unwrap_or(10);
            let deadline = Instant::now() + Duration::from_secs(secs);
            let mut tasks = Vec::new();
            for p in 0..n {
                let addr = addr.clone();
                tasks.push(tokio::spawn(async move {
                    let mut ws = open(&addr, "bench").await;
                    let mut lat = Vec::new();
                    let mut id = 10u64;
                    while Instant::now() < deadline {
                        id += 1;
                        let cmd = format!(
                            "{{\"id\":{id},\"op\":\"publish\",\"channel\":\"bench\",\"data\":{{\"p\":{p},\"pad\":\"{}\"}}}}",
                            "x".repeat(80)
                        );
                        let sent = Instant::now();
                        ws.send(Message::text(cmd)).await.unwrap();
                        let want = format!("\"id\":{id},");
                        'reply: loop {
                            let Some(Ok(m)) = ws.next().await else { return lat };
                            let Some(text) = m.as_text() else { continue };
                            for line in text.split('\n') {
                                if line.starts_with("{\"push\":\"ping\"") {
                                    let _ = ws.send(Message::text("{\"op\":\"pong\"}")).await;
                                }
                                if line.contains(&want) {
                                    break 'reply;
                                }
                            }
                        }
                        lat.push(sent.elapsed().as_micros() as u64);
                    }
                    lat
                }));
            }
            let cpu0 = proc_cpu_s(pid);
            let start = Instant::now();
            let mut l = Vec::new();
            for t in tasks {
                l.extend(t.await.unwrap_or_default());
            }
            let elapsed = start.elapsed().as_secs_f64();
            let cpu = proc_cpu_s(pid) - cpu0;
            l.sort_unstable();
            let pct = percentiles(&l);
            println!(
                "publish: {n} publishers for {secs}s: {} acknowledged ({:.0}/s); ack latency ms p50 {:.2} p99 {:.2} max {:.2}; server CPU {:.2}s",
                l.len(),
                l.len() as f64 / elapsed,
                pct(0.5),
                pct(0.99),
                pct(1.0),
                cpu
            );
        }
        "sse-idle" | "poll-idle" => {
            // N open SSE streams, or N held long-polls, over raw HTTP/1.1.
            let sse = mode == "sse-idle";
            let position = if sse {
                String::new()
            } else {
                first_position(&addr).await
            };
            let before = proc_rss_kib(pid);
            let started = Instant::now();
            let mut conns = Vec::with_capacity(n);
            for i in 0..n {
                let path = if sse {
                    format!("/v1/sse?channel=room{}", i % 100)
                } else {
                    format!("/v1/poll?channel=p&since={position}&timeout=60")
                };
                let mut tcp = tokio::net::TcpStream::connect(&addr)
                    .await
                    .expect("connect");
                tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
                if sse {
                    // Wait for the headers and the retry hint.
                    let mut buf = [0u8; 1024];
                    let _ = tcp.read(&mut buf).await;
                }
                conns.push(tcp);
            }
            let setup = started.elapsed();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = proc_rss_kib(pid);
            let cpu0 = proc_cpu_s(pid);
            tokio::time::sleep(Duration::from_secs(10)).await;
            let idle_cpu = proc_cpu_s(pid) - cpu0;
            println!(
                "{mode}: {n} in {:.2}s; server RSS {before} KiB -> {after} KiB; {:.2} KiB each; idle CPU over 10 s: {:.2}s ({:.1}%)",
                setup.as_secs_f64(),
                after.saturating_sub(before) as f64 / n as f64,
                idle_cpu,
                idle_cpu * 10.0
            );
            drop(conns);
        }
        "sse-fanout" => {
            let rate: u64 = args.get(5).and_then(|p| p.parse().ok()).unwrap_or(10);
            let secs: u64 = args.get(6).and_then(|p| p.parse().ok()).unwrap_or(10);
            let total = rate * secs;
            let delivered = Arc::new(AtomicU64::new(0));
            let latencies = Arc::new(parking_lot::Mutex::new(Vec::<u64>::new()));
            let mut tasks = Vec::new();
            for _ in 0..n {
                let mut tcp = tokio::net::TcpStream::connect(&addr)
                    .await
                    .expect("connect");
                tcp.write_all(b"GET /v1/sse?channel=fan HTTP/1.1\r\nHost: bench\r\n\r\n")
                    .await
                    .unwrap();
                let delivered = delivered.clone();
                let latencies = latencies.clone();
                tasks.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut carry = String::new();
                    let mut next = 1u64;
                    let mut lost = 0u64;
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs + 10);
                    while next <= total {
                        let Ok(Ok(len)) =
                            tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await
                        else {
                            break;
                        };
                        if len == 0 {
                            break;
                        }
                        carry.push_str(&String::from_utf8_lossy(&buf[..len]));
                        let complete = carry.rfind('\n').map_or(0, |i| i + 1);
                        for line in carry[..complete].lines() {
                            let Some(data) = line.strip_prefix("data: {\"push\":\"pub\"") else {
                                continue;
                            };
                            let Some(o) = number_after(data, "\"offset\":") else {
                                continue;
                            };
                            lost += o.saturating_sub(next);
                            next = o + 1;
                            delivered.fetch_add(1, Ordering::Relaxed);
                            if let Some(sent) = number_after(data, "\"t\":") {
                                latencies.lock().push(now_us().saturating_sub(sent));
                            }
                        }
                        carry.drain(..complete);
                    }
                    lost + total.saturating_sub(next - 1)
                }));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (mut publisher, mut echo) = open(&addr, "fan").await.split();
            let drain = tokio::spawn(async move { while let Some(Ok(_)) = echo.next().await {} });
            let cpu0 = proc_cpu_s(pid);
            let start = Instant::now();
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            for i in 0..total {
                ticker.tick().await;
                let cmd = format!(
                    "{{\"id\":{},\"op\":\"publish\",\"channel\":\"fan\",\"data\":{{\"t\":{},\"pad\":\"{}\"}}}}",
                    i + 10,
                    now_us(),
                    "x".repeat(64)
                );
                publisher.send(Message::text(cmd)).await.unwrap();
            }
            let mut lost = 0;
            for t in tasks {
                lost += t.await.unwrap_or(total);
            }
            drain.abort();
            let elapsed = start.elapsed().as_secs_f64();
            let cpu = proc_cpu_s(pid) - cpu0;
            let d = delivered.load(Ordering::Relaxed);
            let mut l = latencies.lock().clone();
            l.sort_unstable();
            let pct = percentiles(&l);
            println!(
                "sse-fanout: {n} streams, {rate} pub/s for {secs}s: delivered {d} ({:.0}/s), lost {lost}; latency ms p50 {:.2} p99 {:.2} max {:.2}; server CPU {:.2}s = {:.2} us per delivered message",
                d as f64 / elapsed,
                pct(0.5),
                pct(0.99),
                pct(1.0),
                cpu,
                cpu * 1e6 / d.max(1) as f64
            );
        }
        "presence-churn" => {
            // MEMBERS idle subscribers of room:big (presence on), CHURN
            // connect+subscribe and disconnects per second, a publisher at
            // 10/s; 100 members read and time the publications.
            let churn: u64 = args.get(5).and_then(|p| p.parse().ok()).unwrap_or(1000);
            let secs: u64 = args.get(6).and_then(|p| p.parse().ok()).unwrap_or(10);
            let mut members = Vec::with_capacity(n);
            for _ in 0..n {
                members.push(open(&addr, "room:big").await);
            }
            let latencies = Arc::new(parking_lot::Mutex::new(Vec::<u64>::new()));
            let mut readers = Vec::new();
            for mut ws in members.drain(..100.min(n)) {
                let latencies = latencies.clone();
                readers.push(tokio::spawn(async move {
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs + 5);
                    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
                        let Some(text) = m.as_text() else { continue };
                        for line in text.split('\n') {
                            if line.starts_with("{\"push\":\"pub\"")
                                && let Some(sent) = number_after(line, "\"t\":")
                            {
                                latencies.lock().push(now_us().saturating_sub(sent));
                            }
                        }
                    }
                }));
            }
            let churner = {
                let addr = addr.clone();
                tokio::spawn(async move {
                    let mut open_now = std::collections::VecDeque::new();
                    let mut tick =
                        tokio::time::interval(Duration::from_secs_f64(1.0 / churn as f64));
                    let mut done = 0u64;
                    let end = Instant::now() + Duration::from_secs(secs);
                    while Instant::now() < end {
                        tick.tick().await;
                        open_now.push_back(open(&addr, "room:big").await);
                        if open_now.len() > 50 {
                            open_now.pop_front();
                        }
                        done += 1;
                    }
                    done
                })
            };
            let (mut publisher, mut echo) = open(&addr, "room:big").await.split();
            let drain = tokio::spawn(async move { while let Some(Ok(_)) = echo.next().await {} });
            let cpu0 = proc_cpu_s(pid);
            let start = Instant::now();
            let per_s: u64 = args.get(7).and_then(|p| p.parse().ok()).unwrap_or(10);
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_s as f64));
            for i in 0..secs * per_s {
                tick.tick().await;
                let cmd = format!(
                    "{{\"id\":{},\"op\":\"publish\",\"channel\":\"room:big\",\"data\":{{\"t\":{}}}}}",
                    i + 10,
                    now_us()
                );
                publisher.send(Message::text(cmd)).await.unwrap();
            }
            let churned = churner.await.unwrap_or(0);
            let cpu = proc_cpu_s(pid) - cpu0;
            let elapsed = start.elapsed().as_secs_f64();
            for r in readers {
                let _ = r.await;
            }
            drain.abort();
            let mut l = latencies.lock().clone();
            l.sort_unstable();
            let pct = percentiles(&l);
            println!(
                "presence-churn: {n} members, {churned} connect+disconnect in {elapsed:.1}s ({:.0}/s); server CPU {cpu:.2}s ({:.0}% of a core); room publications at {per_s}/s seen by 100 members: {} samples, p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
                churned as f64 / elapsed,
                cpu * 100.0 / elapsed,
                l.len(),
                pct(0.5),
                pct(0.99),
                pct(1.0)
            );
            drop(members);
        }
        "ceiling" => {
            // No server at all: N loopback socket pairs in this process; write one
            // pre-encoded 120-byte WebSocket text frame to each socket, ROUNDS times.
            // What one lone small write per subscriber costs on this machine.
            let rounds: usize = args.get(5).and_then(|p| p.parse().ok()).unwrap_or(10);
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let local = listener.local_addr().unwrap();
            let mut clients = Vec::with_capacity(n);
            let mut servers = Vec::with_capacity(n);
            for _ in 0..n {
                clients.push(std::net::TcpStream::connect(local).unwrap());
                let (s, _) = listener.accept().unwrap();
                s.set_nodelay(true).unwrap();
                servers.push(s);
            }
            let mut frame = vec![0x81u8, 118];
            frame.extend(std::iter::repeat_n(b'x', 118));
            let cpu0 = proc_cpu_s(std::process::id());
            let start = Instant::now();
            for _ in 0..rounds {
                for s in &mut servers {
                    std::io::Write::write_all(s, &frame).unwrap();
                }
            }
            let wall = start.elapsed().as_secs_f64();
            let cpu = proc_cpu_s(std::process::id()) - cpu0;
            let writes = (n * rounds) as f64;
            println!(
                "ceiling: {n} sockets x {rounds} rounds: {:.2} us wall, {:.2} us CPU per single write ({:.0} writes/s)",
                wall * 1e6 / writes,
                cpu * 1e6 / writes,
                writes / wall
            );
            drop(clients);
        }
        _ => eprintln!(
            "usage: harness idle ADDR PID N | harness fanout ADDR PID N RATE SECS | harness ceiling - 0 N ROUNDS"
        ),
    }
}
