//! One bench client: opens its connection, subscribes, then counts what it
//! receives until the run stops it. WebSocket for every target; SSE and
//! long-poll for Tidings.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::BenchError;
use crate::scenario::{Scenario, Transport, channel_name};
use crate::stats::{Stats, Tracker};
use crate::target::{self, Position};
use crate::ws::{self, Ws};

/// What every client of a run shares.
pub struct Ctx {
    /// The scenario.
    pub scenario: Scenario,
    /// Counters.
    pub stats: Stats,
    /// Source addresses to spread connections over (empty: the kernel picks).
    pub sources: Vec<IpAddr>,
    /// Clients per source address.
    pub per_source: usize,
}

/// A client to open.
pub struct Spec {
    /// Its number in the run.
    pub index: usize,
    /// The node it connects to.
    pub addr: std::net::SocketAddr,
    /// Channels it subscribes.
    pub channels: Vec<u32>,
    /// Where it resumes each channel (Tidings).
    pub since: Vec<Option<Position>>,
    /// Whether it publishes for the run (`via = "client"`).
    pub publishes: bool,
    /// Whether it reads slowly (`subscribe.slow`).
    pub slow: bool,
}

/// A client that is open and subscribed.
pub struct Opened {
    /// Where each channel stands after subscribing (Tidings WebSocket).
    pub positions: Vec<Option<Position>>,
    /// Publications it received while subscribing (recovered ones).
    pub received: u64,
    /// Commands to send (client publishing).
    pub commands: Option<mpsc::UnboundedSender<String>>,
    /// Its reading task; ends when the run stops or the server closes.
    pub task: tokio::task::JoinHandle<()>,
}

/// Opens and subscribes one client, then leaves it reading until `stop`.
pub async fn open(
    ctx: Arc<Ctx>,
    spec: Spec,
    stop: watch::Receiver<bool>,
) -> Result<Opened, BenchError> {
    let s = &ctx.scenario;
    let source = (!ctx.sources.is_empty())
        .then(|| ctx.sources[(spec.index / ctx.per_source).min(ctx.sources.len() - 1)]);
    let addr = spec.addr;
    // A slow reader's small receive buffer keeps its backlog in the server.
    let tcp = ws::tcp_with(addr, source, spec.slow.then_some(4096)).await?;
    let mut tracker = Tracker::new(&spec.channels);
    match s.transport {
        Transport::Ws => {
            let msgpack = s.encoding == crate::scenario::Encoding::Msgpack;
            let protocol = msgpack.then_some(tidings_protocol::SUBPROTOCOL_MSGPACK);
            let path = target::ws_path(s.target, &s.auth);
            let mut conn = Ws::connect(tcp, &addr.to_string(), &path, protocol).await?;
            let positions = target::subscribe(
                &mut conn,
                s.target,
                msgpack,
                &s.auth,
                &spec.channels,
                &spec.since,
                &mut tracker,
                &ctx.stats,
            )
            .await?;
            let received = tracker.received;
            let (commands, rx) = if spec.publishes {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            ctx.stats.open.fetch_add(1, Ordering::Relaxed);
            let task = if spec.slow {
                tokio::spawn(read_slowly(ctx.clone(), conn, stop))
            } else {
                tokio::spawn(read_ws(ctx.clone(), conn, tracker, rx, stop))
            };
            Ok(Opened {
                positions,
                received,
                commands,
                task,
            })
        }
        Transport::Sse => {
            let mut tcp = tcp;
            let req = format!(
                // Close: a stream the server ends must end the connection too.
                "GET /v1/sse?{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{}\r\n",
                query(&spec.channels),
                s.addr,
                bearer(s)
            );
            tcp.write_all(req.as_bytes())
                .await
                .map_err(BenchError::Io)?;
            let (head, rest) = ws::read_head(&mut tcp).await?;
            ws::expect_status(&head, "200")?;
            ctx.stats.open.fetch_add(1, Ordering::Relaxed);
            let task = tokio::spawn(read_sse(ctx.clone(), tcp, rest, tracker, stop));
            Ok(Opened {
                positions: vec![None; spec.channels.len()],
                received: 0,
                commands: None,
                task,
            })
        }
        Transport::Poll => {
            let mut tcp = tcp;
            // The first poll, without a position, answers at once with it.
            let (position, _) = poll_once(&mut tcp, s, &spec.channels, None).await?;
            ctx.stats.open.fetch_add(1, Ordering::Relaxed);
            let task = tokio::spawn(read_poll(
                ctx.clone(),
                addr,
                tcp,
                spec.channels,
                position,
                tracker,
                stop,
            ));
            Ok(Opened {
                positions: vec![None; 1],
                received: 0,
                commands: None,
                task,
            })
        }
    }
}

fn query(channels: &[u32]) -> String {
    channels
        .iter()
        .map(|&c| format!("channel={}", channel_name(c)))
        .collect::<Vec<_>>()
        .join("&")
}

fn bearer(s: &Scenario) -> String {
    s.auth
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default()
}

async fn read_ws(
    ctx: Arc<Ctx>,
    mut conn: Ws,
    mut tracker: Tracker,
    mut commands: Option<mpsc::UnboundedReceiver<String>>,
    mut stop: watch::Receiver<bool>,
) {
    let target = ctx.scenario.target;
    // Only a publishing client gets replies worth counting.
    let publishes = commands.is_some();
    let mut replies: Vec<&'static [u8]> = Vec::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(cmd) = async { commands.as_mut()?.recv().await }, if commands.is_some() => {
                if conn.send(cmd.as_bytes()).await.is_err() {
                    ctx.stats.closed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            read = conn.read(|msg| {
                tracker.feed(msg, &ctx.stats);
                if publishes {
                    ctx.stats.count_replies(msg);
                }
                if let Some(r) = target::heartbeat(target, msg) {
                    replies.push(r);
                }
            }) => {
                let mut ok = matches!(read, Ok(true));
                for r in replies.drain(..) {
                    ok &= conn.send(r).await.is_ok();
                }
                ok &= conn.flush().await.is_ok();
                if !ok {
                    ctx.stats.closed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
    ctx.stats.open.fetch_sub(1, Ordering::Relaxed);
}

/// A client on a poor link: reads at `subscribe.slow_read` bytes per
/// second (on average), counting bytes only.
async fn read_slowly(ctx: Arc<Ctx>, mut conn: Ws, mut stop: watch::Receiver<bool>) {
    let rate = ctx.scenario.subscribe.slow_read as f64;
    loop {
        let mut bytes = 0u64;
        let read = tokio::select! {
            _ = stop.changed() => break,
            read = conn.read(|msg| bytes += msg.len() as u64) => read,
        };
        ctx.stats.slow_bytes.fetch_add(bytes, Ordering::Relaxed);
        if !matches!(read, Ok(true)) || conn.flush().await.is_err() {
            ctx.stats.slow_closed.fetch_add(1, Ordering::Relaxed);
            break;
        }
        let pause = Duration::from_secs_f64(bytes as f64 / rate);
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    ctx.stats.open.fetch_sub(1, Ordering::Relaxed);
}

async fn read_sse(
    ctx: Arc<Ctx>,
    mut tcp: TcpStream,
    mut buf: Vec<u8>,
    mut tracker: Tracker,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // Whole lines only: a marker is never split across two reads' worth.
        if let Some(end) = memchr::memrchr(b'\n', &buf) {
            tracker.feed(&buf[..=end], &ctx.stats);
            buf.drain(..=end);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        tokio::select! {
            _ = stop.changed() => break,
            read = tcp.read_buf(&mut buf) => {
                if !matches!(read, Ok(n) if n > 0) {
                    ctx.stats.closed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
    ctx.stats.open.fetch_sub(1, Ordering::Relaxed);
}

/// One long-poll on a kept-alive connection: (next position, body).
async fn poll_once(
    tcp: &mut TcpStream,
    s: &Scenario,
    channels: &[u32],
    since: Option<&str>,
) -> Result<(String, Vec<u8>), BenchError> {
    let since = since
        .map(|p| format!("&since={p}&timeout=30"))
        .unwrap_or_default();
    let req = format!(
        "GET /v1/poll?{}{since} HTTP/1.1\r\nHost: {}\r\n{}\r\n",
        query(channels),
        s.addr,
        bearer(s)
    );
    tcp.write_all(req.as_bytes())
        .await
        .map_err(BenchError::Io)?;
    let (head, mut body) = ws::read_head(tcp).await?;
    ws::expect_status(&head, "200")?;
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .ok_or_else(|| BenchError::Protocol("poll answer without content-length".into()))?;
    while body.len() < len {
        let mut chunk = vec![0u8; len - body.len()];
        let n = tcp.read(&mut chunk).await.map_err(BenchError::Io)?;
        if n == 0 {
            return Err(BenchError::Protocol("closed mid-answer".into()));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let v: serde_json::Value = serde_json::from_slice(&body[..len])
        .map_err(|e| BenchError::Protocol(format!("poll answer: {e}")))?;
    let position = v["position"]
        .as_str()
        .ok_or_else(|| BenchError::Protocol("poll answer without position".into()))?
        .to_string();
    body.truncate(len);
    Ok((position, body))
}

async fn read_poll(
    ctx: Arc<Ctx>,
    addr: std::net::SocketAddr,
    mut tcp: TcpStream,
    channels: Vec<u32>,
    mut position: String,
    mut tracker: Tracker,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            answer = poll_once(&mut tcp, &ctx.scenario, &channels, Some(&position)) => match answer {
                Ok((next, body)) => {
                    tracker.feed(&body, &ctx.stats);
                    position = next;
                }
                Err(_) => {
                    ctx.stats.closed.fetch_add(1, Ordering::Relaxed);
                    // Reconnect after a pause rather than spin; keep the position.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    match tokio::time::timeout(Duration::from_secs(5), ws::tcp(addr, None)).await {
                        Ok(Ok(t)) => tcp = t,
                        _ => break,
                    }
                }
            }
        }
    }
    ctx.stats.open.fetch_sub(1, Ordering::Relaxed);
}
