//! What differs between the servers: the WebSocket path, the handshake and
//! subscription, heartbeats, and how the backend publishes.

use std::time::Duration;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use serde_json::json;
use sha2::Sha256;

use crate::BenchError;
use crate::scenario::{Auth, Target, channel_name};
use crate::stats::Stats;
use crate::stats::Tracker;
use crate::ws::Ws;

/// Where a Tidings client resumes a channel: (offset, epoch).
pub type Position = (u64, String);

/// How long any one handshake step may take.
const STEP: Duration = Duration::from_secs(30);

/// The WebSocket path of `target`.
pub fn ws_path(target: Target, auth: &Auth) -> String {
    match target {
        Target::Tidings => "/v1/ws".into(),
        Target::Pusher => format!(
            "/app/{}?protocol=7&client=tidings-bench&version=1.0",
            auth.app_key
        ),
        Target::Socketio => "/socket.io/?EIO=4&transport=websocket".into(),
    }
}

/// Reads messages until `done` says so, feeding publications to `tracker`
/// (a recovery reply carries them) and answering heartbeats.
async fn until(
    ws: &mut Ws,
    target: Target,
    tracker: &mut Tracker,
    stats: &Stats,
    mut done: impl FnMut(&[u8]) -> bool,
) -> Result<(), BenchError> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let mut finished = false;
        let mut replies = Vec::new();
        let read = tokio::time::timeout_at(
            deadline,
            ws.read(|msg| {
                tracker.feed(msg, stats);
                if let Some(r) = heartbeat(target, msg) {
                    replies.push(r);
                }
                finished |= done(msg);
            }),
        )
        .await
        .map_err(|_| BenchError::Protocol("handshake timed out".into()))??;
        for r in replies {
            ws.send(r).await?;
        }
        ws.flush().await?;
        if finished {
            return Ok(());
        }
        if !read {
            return Err(BenchError::Protocol("closed during the handshake".into()));
        }
    }
}

/// Connects and subscribes `channels` (with `since` positions for Tidings).
/// Returns each channel's position after subscribing (Tidings only).
#[allow(clippy::too_many_arguments)]
pub async fn subscribe(
    ws: &mut Ws,
    target: Target,
    msgpack: bool,
    auth: &Auth,
    channels: &[u32],
    since: &[Option<Position>],
    tracker: &mut Tracker,
    stats: &Stats,
) -> Result<Vec<Option<Position>>, BenchError> {
    match target {
        Target::Tidings => {
            let mut cmds = match &auth.token {
                Some(t) => json!({"id": 1, "op": "connect", "token": t}).to_string(),
                None => json!({"id": 1, "op": "connect"}).to_string(),
            };
            for (i, &c) in channels.iter().enumerate() {
                let mut sub = json!({"id": 2 + i, "op": "subscribe", "channel": channel_name(c)});
                if let Some(Some((offset, epoch))) = since.get(i) {
                    sub["since"] = json!({"offset": offset, "epoch": epoch});
                }
                cmds.push('\n');
                cmds.push_str(&sub.to_string());
            }
            if msgpack {
                let mut frame = Vec::new();
                for line in cmds.lines() {
                    let mp = tidings_protocol::msgpack::from_json(line.as_bytes())
                        .map_err(|e| BenchError::Protocol(e.to_string()))?;
                    frame.extend_from_slice(&mp);
                }
                ws.send_binary(&frame).await?;
            } else {
                ws.send(cmds.as_bytes()).await?;
            }
            let mut positions = vec![None; channels.len()];
            let mut replies = 0;
            let mut error = None;
            until(ws, target, tracker, stats, |msg| {
                let lines: Vec<Vec<u8>> = if msgpack {
                    tidings_protocol::msgpack::to_json_messages(msg).unwrap_or_default()
                } else {
                    msg.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
                };
                for line in lines {
                    let line = line.as_slice();
                    let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
                        continue;
                    };
                    let Some(id) = v.get("id").and_then(|i| i.as_u64()) else {
                        continue;
                    };
                    replies += 1;
                    if let Some(e) = v.get("error") {
                        error = Some(e.to_string());
                    }
                    let ok = &v["ok"];
                    if id >= 2
                        && let (Some(o), Some(e)) = (ok["offset"].as_u64(), ok["epoch"].as_str())
                        && let Some(p) = positions.get_mut(id as usize - 2)
                    {
                        *p = Some((o, e.to_string()));
                    }
                }
                replies > channels.len() || error.is_some()
            })
            .await?;
            match error {
                Some(e) => Err(BenchError::Refused(e)),
                None => Ok(positions),
            }
        }
        Target::Pusher => {
            until(ws, target, tracker, stats, |m| {
                contains(m, b"pusher:connection_established")
            })
            .await?;
            let mut cmds = Vec::new();
            for &c in channels {
                let sub =
                    json!({"event": "pusher:subscribe", "data": {"channel": channel_name(c)}});
                cmds.push(sub.to_string());
            }
            for c in &cmds {
                ws.send(c.as_bytes()).await?;
            }
            let mut ok = 0;
            until(ws, target, tracker, stats, |m| {
                ok += usize::from(contains(m, b"pusher_internal:subscription_succeeded"));
                ok >= channels.len() || contains(m, b"pusher:error")
            })
            .await?;
            if ok < channels.len() {
                return Err(BenchError::Refused("pusher:error on subscribe".into()));
            }
            Ok(vec![None; channels.len()])
        }
        Target::Socketio => {
            until(ws, target, tracker, stats, |m| m.starts_with(b"0{")).await?;
            ws.send(b"40").await?;
            until(ws, target, tracker, stats, |m| m.starts_with(b"40")).await?;
            let rooms: Vec<String> = channels.iter().map(|&c| channel_name(c)).collect();
            ws.send(format!("421{}", json!(["join", rooms])).as_bytes())
                .await?;
            until(ws, target, tracker, stats, |m| m.starts_with(b"431")).await?;
            Ok(vec![None; channels.len()])
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// The answer to an application-level heartbeat in `msg`, if it is one.
pub fn heartbeat(target: Target, msg: &[u8]) -> Option<&'static [u8]> {
    match target {
        // In MessagePack too (a map `push: ping`); the pong goes as JSON
        // text, which the server reads on either subprotocol.
        Target::Tidings => (contains(msg, b"{\"push\":\"ping\"")
            || contains(msg, b"\xa4push\xa4ping"))
        .then_some(b"{\"op\":\"pong\"}"),
        Target::Pusher => {
            contains(msg, b"\"pusher:ping\"").then_some(b"{\"event\":\"pusher:pong\",\"data\":{}}")
        }
        Target::Socketio => (msg == b"2").then_some(b"3"),
    }
}

/// Publishes through the target's HTTP API.
pub struct Publisher {
    http: reqwest::Client,
    target: Target,
    /// One per node; publishes go round-robin.
    bases: Vec<String>,
    next: std::sync::atomic::AtomicUsize,
    auth: Auth,
}

impl Publisher {
    /// A publisher for the servers at `addrs` (round-robin).
    pub fn new(target: Target, addrs: &[std::net::SocketAddr], auth: Auth) -> Publisher {
        // Loopback only: no proxy from the environment. A stalled server
        // must not hold a step forever.
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Publisher {
            http,
            target,
            bases: addrs.iter().map(|a| format!("http://{a}")).collect(),
            next: Default::default(),
            auth,
        }
    }

    /// Publishes `data` (a string) into channel `c`.
    pub async fn publish(&self, c: u32, data: &str) -> Result<(), BenchError> {
        let channel = channel_name(c);
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = &self.bases[i % self.bases.len()];
        let req = match self.target {
            Target::Tidings => {
                let req = self
                    .http
                    .post(format!("{base}/v1/api/publish"))
                    .json(&json!({"channel": channel, "data": data}));
                match &self.auth.api_key {
                    Some(k) => req.bearer_auth(k),
                    None => req,
                }
            }
            Target::Pusher => {
                let body = json!({"name": "m", "channel": channel, "data": data}).to_string();
                let path = format!("/apps/{}/events", self.auth.app_id);
                let query = pusher_query(
                    &self.auth,
                    &path,
                    &body,
                    crate::payload::now_us() / 1_000_000,
                );
                self.http
                    .post(format!("{base}{path}?{query}"))
                    .header("content-type", "application/json")
                    .body(body)
            }
            Target::Socketio => self
                .http
                .post(format!("{base}/publish"))
                .json(&json!({"room": channel, "event": "m", "data": data})),
        };
        let resp = req
            .send()
            .await
            .map_err(|e| BenchError::Publish(e.to_string()))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            Err(BenchError::Publish(format!("{status}: {body}")))
        }
    }
}

/// The signed query string of a Pusher HTTP API call.
fn pusher_query(auth: &Auth, path: &str, body: &str, timestamp: u64) -> String {
    let body_md5 = hex(&Md5::digest(body.as_bytes()));
    let params = format!(
        "auth_key={}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={body_md5}",
        auth.app_key
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(auth.app_secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(format!("POST\n{path}\n{params}").as_bytes());
    format!(
        "{params}&auth_signature={}",
        hex(&mac.finalize().into_bytes())
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pusher_signature_matches_the_published_example() {
        // The worked example of Pusher's HTTP API reference ("Generating
        // authentication signatures").
        let auth = Auth {
            app_key: "278d425bdf160c739803".into(),
            app_secret: "7ad3773142a6692b25b8".into(),
            ..Auth::default()
        };
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let q = pusher_query(&auth, "/apps/3/events", body, 1353088179);
        assert!(
            q.contains("body_md5=ec365a775a4cd0599faeb73354201b6f"),
            "{q}"
        );
        assert!(
            q.ends_with(
                "auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
            ),
            "{q}"
        );
    }
}
