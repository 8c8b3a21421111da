//! Accepting sockets and serving HTTP/1 on them, with the limits that keep
//! idle or half-sent requests, or one address, from starving the node.
//!
//! Every TCP connection is counted from accept to close, whether it becomes
//! a WebSocket, an SSE stream, a long-poll or a plain request: the count
//! travels with the socket (see [`Counted`]), through a WebSocket upgrade.
//! Past `client.max_connections`, a small reserve of sockets still serves
//! `/health`, `/metrics` and the server API, so operators can see and act
//! while clients hold the rest.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::config::ClientConfig;
use crate::metrics::Metrics;

/// How long a refused socket may take to read our answer before it is dropped.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// How long a socket from the reserve may take to send its one request head.
const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Open sockets, in total and per address.
#[derive(Default)]
struct Counts {
    open: usize,
    reserve: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Decides at accept whether a socket is served, served from the reserve,
/// or refused, and counts it while it lives.
pub struct Admission {
    counts: Mutex<Counts>,
    max_per_ip: usize,
    max_open: usize,
    max_reserve: usize,
    /// Refused sockets that may wait for their answer at once (a quarter of
    /// `reserved_fds`, so that they never take the files' share).
    lingering: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// How a new socket is let in.
enum Verdict {
    /// Served normally.
    Serve(Slot),
    /// Past the node's cap: only operator routes are served.
    Reserve(Slot),
    /// Refused, by this limit (`ip` or `node`).
    Refuse(&'static str),
}

/// A counted socket; uncounted on drop.
pub struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
    reserve: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.admission.counts.lock();
        c.open -= 1;
        if self.reserve {
            c.reserve -= 1;
        }
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
        self.admission.metrics.sockets.set(c.open as i64);
    }
}

impl Admission {
    /// Limits from `client`, the cap bounded by the process's open-file limit.
    pub fn new(client: &ClientConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        let by_fds = fd_limit().saturating_sub(client.reserved_fds);
        let max_open = match client.max_connections {
            0 => by_fds,
            n => n.min(by_fds),
        };
        if client.max_connections > by_fds {
            tracing::warn!(
                max_connections = client.max_connections,
                usable = by_fds,
                "the open-file limit leaves room for fewer connections than max_connections; raise `ulimit -n`"
            );
        }
        Arc::new(Self {
            counts: Mutex::default(),
            max_per_ip: client.max_connections_per_ip,
            max_open,
            max_reserve: client.reserved_fds / 2,
            lingering: Arc::new(Semaphore::new(client.reserved_fds / 4)),
            metrics,
        })
    }

    /// The most sockets served normally at once.
    pub fn max_open(&self) -> usize {
        self.max_open
    }

    /// Open sockets now.
    pub fn open(&self) -> usize {
        self.counts.lock().open
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Verdict {
        let ip = counted_as(ip);
        let mut c = self.counts.lock();
        let from_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
        if self.max_per_ip > 0 && from_ip >= self.max_per_ip {
            return Verdict::Refuse("ip");
        }
        let reserve = c.open - c.reserve >= self.max_open;
        if reserve && c.reserve >= self.max_reserve {
            return Verdict::Refuse("node");
        }
        c.open += 1;
        c.reserve += usize::from(reserve);
        *c.per_ip.entry(ip).or_default() += 1;
        self.metrics.sockets.set(c.open as i64);
        drop(c);
        let slot = Slot {
            admission: self.clone(),
            ip,
            reserve,
        };
        if reserve {
            Verdict::Reserve(slot)
        } else {
            Verdict::Serve(slot)
        }
    }
}

/// The address a socket counts against: an IPv6 client holds a whole /64
/// (so its /64 is one address here), and IPv4 may come IPv4-mapped.
fn counted_as(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
    }
}

/// The process's open-file limit (soft), or 1024 when it cannot be read.
fn fd_limit() -> usize {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| usize::try_from(soft).unwrap_or(usize::MAX))
        .unwrap_or(1024)
}

/// A socket that carries its [`Slot`], so the count follows it through a
/// WebSocket upgrade until the last owner drops it.
pub struct Counted {
    tcp: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Routes a socket from the reserve may use: health, metrics, the server API.
fn operator_route(path: &str) -> bool {
    path == "/health" || path == "/metrics" || path.starts_with("/v1/api/")
}

/// Timeouts of the HTTP layer.
#[derive(Clone, Copy)]
pub struct Timeouts {
    /// A new socket's first request head must arrive within this.
    pub header: Duration,
    /// An idle keep-alive socket's next request head must arrive within this.
    pub keepalive: Duration,
}

/// Serves `app` on `listener` until `stop` turns true: each socket is
/// admitted, tuned by `tune`, and served by hyper with the timeouts.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    admission: Arc<Admission>,
    timeouts: Timeouts,
    tune: impl Fn(&TcpStream) + Send,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors (or a socket that died in the
                    // backlog): wait a little rather than spin.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => return,
        };
        let (slot, reserve) = match admission.admit(peer.ip()) {
            Verdict::Serve(slot) => (slot, false),
            Verdict::Reserve(slot) => (slot, true),
            Verdict::Refuse(limit) => {
                admission.metrics.limit_rejected(limit);
                // An address over its limit is told why (boundedly); past
                // the reserve nothing is left to answer with: closed now.
                if limit == "ip" {
                    refuse(tcp, &admission.lingering);
                }
                continue;
            }
        };
        tune(&tcp);
        let io = Counted { tcp, _slot: slot };
        tokio::spawn(serve_one(
            io,
            peer,
            app.clone(),
            reserve,
            timeouts,
            admission.metrics.clone(),
            stop.clone(),
        ));
    }
}

/// Serves one admitted socket until it closes, the first request head is
/// late, or the server stops (then it finishes the request in flight).
async fn serve_one(
    io: Counted,
    peer: SocketAddr,
    app: Router,
    reserve: bool,
    timeouts: Timeouts,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let started = Arc::new(AtomicBool::new(false));
    let svc = {
        let started = started.clone();
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            started.store(true, Ordering::Relaxed);
            req.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            async move {
                if reserve && !operator_route(req.uri().path()) {
                    return Ok(at_capacity());
                }
                app.oneshot(req).await
            }
        })
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper's header timer also runs while a kept-alive socket waits for
    // its next request: that is the idle timeout. A socket from the
    // reserve serves one quick request, so that it cannot be held.
    http.timer(TokioTimer::new())
        .header_read_timeout(timeouts.keepalive)
        .keep_alive(!reserve);
    let first_head_within = if reserve {
        timeouts.header.min(RESERVE_HEADER_TIMEOUT)
    } else {
        timeouts.header
    };
    let conn = http.serve_connection(TokioIo::new(io), svc).with_upgrades();
    tokio::pin!(conn);
    let first_head = async {
        tokio::time::sleep(first_head_within).await;
        if started.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(first_head);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = &mut first_head => {
                metrics.request_timeouts.inc();
                return;
            }
            () = stopped(&mut stop), if !stopping => {
                // The request in flight is finished, then the socket closes.
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// What a socket from the reserve gets on a client route.
fn at_capacity() -> Response<axum::body::Body> {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "5")],
        "the server is at its connection limit; retry shortly",
    )
        .into_response()
}

/// Answers a refused socket with a 503 after reading (and ignoring) its
/// request head — HTTP clients reject an answer that comes before their
/// request, and closing with the request unread would reset the connection
/// — if few refused sockets are lingering, and for at most a second.
fn refuse(tcp: TcpStream, lingering: &Arc<Semaphore>) {
    let why = "too many connections from this address";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: 5\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{why}",
        why.len()
    );
    let Ok(permit) = lingering.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async move {
            let mut tcp = tcp;
            let mut head = Vec::new();
            let mut chunk = [0u8; 2048];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match tcp.read(&mut chunk).await? {
                    0 => return Ok(()),
                    n => head.extend_from_slice(&chunk[..n]),
                }
            }
            tcp.write_all(answer.as_bytes()).await?;
            tcp.shutdown().await?;
            // Read until the peer closes, so nothing it sends is left unread.
            while tcp.read(&mut chunk).await? > 0 {}
            Ok::<_, io::Error>(())
        })
        .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(counted_as(a), counted_as(b));
        assert_ne!(counted_as(a), counted_as(c));
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(counted_as(mapped), "127.0.0.2".parse::<IpAddr>().unwrap());
        let v4: IpAddr = "127.0.0.3".parse().unwrap();
        assert_eq!(counted_as(v4), v4);
    }
}
