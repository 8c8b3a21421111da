//! Scenarios: what a run opens, subscribes and publishes, read from TOML
//! files under `bench/`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::BenchError;

/// One benchmark run. Every key has a default; a file sets what it changes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// Short name, printed with the results.
    pub name: String,
    /// The server under test.
    pub target: Target,
    /// Where it listens; loopback only.
    pub addr: SocketAddr,
    /// More nodes of the same cluster: connections and publishes are
    /// spread round-robin over `addr` and these.
    pub also: Vec<SocketAddr>,
    /// How clients receive (SSE and long-poll: Tidings only).
    pub transport: Transport,
    /// The WebSocket encoding (Tidings only): `json` or `msgpack`
    /// (`tidings.v1.msgpack`).
    pub encoding: Encoding,
    /// Clients to open.
    pub connections: usize,
    /// Connection attempts in flight while opening; 0 opens all at once.
    pub connect_concurrency: usize,
    /// Which channels each client subscribes.
    pub subscribe: Subscribe,
    /// How long to watch the server idle after connecting (memory, CPU).
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// Publishing at increasing rates; absent: no publishing.
    pub publish: Option<Publish>,
    /// A connect storm after the idle phase; absent: none.
    pub storm: Option<Storm>,
    /// Credentials of the target.
    pub auth: Auth,
    /// Hard bound on the whole run.
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            name: "unnamed".into(),
            target: Target::Tidings,
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            also: Vec::new(),
            transport: Transport::Ws,
            encoding: Encoding::Json,
            connections: 1000,
            connect_concurrency: 256,
            subscribe: Subscribe::default(),
            idle: Duration::from_secs(3),
            publish: None,
            storm: None,
            auth: Auth::default(),
            max_duration: Duration::from_secs(600),
        }
    }
}

/// The server under test, by the protocol the bench speaks to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Tidings (docs/protocol.md).
    Tidings,
    /// A Pusher protocol v7 server (sockudo, soketi).
    Pusher,
    /// Socket.IO 4 (Engine.IO v4 over WebSocket) with bench/peers/socketio/server.mjs.
    Socketio,
}

/// The WebSocket encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// `tidings.v1.json`.
    Json,
    /// `tidings.v1.msgpack`: subscribes in MessagePack and reads binary frames.
    Msgpack,
}

/// How clients receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WebSocket.
    Ws,
    /// Server-Sent Events (`/v1/sse`).
    Sse,
    /// HTTP long-polling (`/v1/poll`).
    Poll,
}

/// Which channels each client subscribes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Subscribe {
    /// `one`: every client in one channel; `rooms`: consecutive clients in
    /// rooms of `room_size`; `spread`: each client in `k` of `m` channels.
    pub shape: Shape,
    /// Members per room (`rooms`).
    pub room_size: usize,
    /// Channels per client (`spread`).
    pub k: usize,
    /// Channels in all (`spread`).
    pub m: usize,
    /// The fraction of clients that read slowly (0: none), spread evenly;
    /// they are counted apart, not as lost or in latency.
    pub slow: f64,
    /// How fast a slow client reads, in bytes per second.
    pub slow_read: u64,
}

impl Default for Subscribe {
    fn default() -> Self {
        Self {
            shape: Shape::One,
            room_size: 10,
            k: 3,
            m: 100,
            slow: 0.0,
            slow_read: 1024,
        }
    }
}

/// The subscription shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// One channel for everyone.
    One,
    /// Rooms of `room_size` consecutive clients.
    Rooms,
    /// `k` of `m` channels per client.
    Spread,
}

/// Publishing: steps of increasing total rates.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Publish {
    /// Publications per second across all channels, one step each.
    pub rates: Vec<u32>,
    /// How long each step publishes.
    #[serde(with = "humantime_serde")]
    pub step: Duration,
    /// Size of each publication's data, in bytes.
    pub payload: usize,
    /// Through the server's HTTP API, or from subscribed clients (Tidings).
    pub via: Via,
    /// Concurrent API publishers, each awaiting its acknowledgement; with
    /// more than one, a channel's publications may be accepted out of order.
    pub workers: usize,
    /// Stop stepping up once p99 passes this (milliseconds)…
    pub stop_p99_ms: f64,
    /// …or anything is lost.
    pub stop_on_loss: bool,
    /// After a step, how long to wait for the last deliveries.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
}

impl Default for Publish {
    fn default() -> Self {
        Self {
            rates: vec![10, 50, 100],
            step: Duration::from_secs(10),
            payload: 100,
            via: Via::Api,
            workers: 4,
            stop_p99_ms: 50.0,
            stop_on_loss: true,
            drain: Duration::from_secs(5),
        }
    }
}

/// Who publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// The server's HTTP API.
    Api,
    /// A subscribed client of each channel (chat-like; Tidings WebSocket only).
    Client,
}

/// A connect storm: every client closes, then all reconnect at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storm {
    /// Publications made into each channel while the clients are away, to
    /// be recovered on reconnect (Tidings WebSocket only); 0: none.
    pub recover: u64,
    /// Every client comes back to the next node of `addr`/`also` (a node
    /// lost: its clients resume on the others).
    pub move_node: bool,
    /// How long the storm may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for Storm {
    fn default() -> Self {
        Self {
            recover: 0,
            move_node: false,
            timeout: Duration::from_secs(60),
        }
    }
}

/// Credentials: a Tidings API key, a Pusher app.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Tidings API key (`Authorization: Bearer`); default `$TIDINGS_API_KEY`.
    pub api_key: Option<String>,
    /// Tidings connection token, if the server needs one.
    pub token: Option<String>,
    /// Pusher app id.
    pub app_id: String,
    /// Pusher app key.
    pub app_key: String,
    /// Pusher app secret.
    pub app_secret: String,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            api_key: std::env::var("TIDINGS_API_KEY").ok(),
            token: None,
            app_id: "bench-app".into(),
            app_key: "bench-key".into(),
            app_secret: "bench-secret".into(),
        }
    }
}

impl Scenario {
    /// Reads a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, BenchError> {
        let text = std::fs::read_to_string(path).map_err(|source| BenchError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            BenchError::Scenario(msg) => BenchError::Scenario(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses and checks a scenario.
    pub fn parse(text: &str) -> Result<Scenario, BenchError> {
        let s: Scenario = toml::from_str(text).map_err(|e| BenchError::Scenario(e.to_string()))?;
        s.check()?;
        Ok(s)
    }

    /// Every node's address: `addr`, then `also`.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        std::iter::once(self.addr)
            .chain(self.also.iter().copied())
            .collect()
    }

    /// The node client `i` connects to.
    pub fn addr_of(&self, i: usize) -> SocketAddr {
        match i % (self.also.len() + 1) {
            0 => self.addr,
            n => self.also[n - 1],
        }
    }

    /// Refuses what the bench cannot or must not do.
    pub fn check(&self) -> Result<(), BenchError> {
        let bad = |m: &str| Err(BenchError::Scenario(m.to_string()));
        if !self
            .addrs()
            .iter()
            .all(|a| a.is_ipv4() && a.ip().is_loopback())
        {
            return bad("addr must be a loopback address: the bench targets 127.0.0.0/8 only");
        }
        if self.connections == 0 {
            return bad("connections must be at least 1");
        }
        if self.target != Target::Tidings && self.transport != Transport::Ws {
            return bad("SSE and long-poll are Tidings transports; peers are measured over ws");
        }
        if self.encoding == Encoding::Msgpack
            && (self.target != Target::Tidings || self.transport != Transport::Ws)
        {
            return bad("encoding = \"msgpack\" needs target = \"tidings\" over ws");
        }
        if let Some(p) = &self.publish {
            if p.via == Via::Client
                && (self.target != Target::Tidings || self.transport != Transport::Ws)
            {
                return bad("via = \"client\" needs target = \"tidings\" over ws");
            }
            if p.rates.contains(&0) || p.workers == 0 || p.payload < 48 {
                return bad("publish: rates and workers above 0, payload at least 48 bytes");
            }
        }
        if let Some(s) = &self.storm
            && s.recover > 0
        {
            if self.target != Target::Tidings || self.transport != Transport::Ws {
                return bad(
                    "storm.recover needs target = \"tidings\" over ws (peers do not recover)",
                );
            }
            if self.publish.is_some() {
                // The clients resume from where they subscribed, before the steps.
                return bad(
                    "storm.recover cannot follow publish steps: run it in its own scenario",
                );
            }
        }
        if !(0.0..1.0).contains(&self.subscribe.slow) || self.subscribe.slow_read == 0 {
            return bad("subscribe.slow is a fraction below 1, and slow_read at least 1 byte/s");
        }
        match self.subscribe.shape {
            Shape::Rooms if self.subscribe.room_size == 0 => bad("room_size must be at least 1"),
            Shape::Spread if self.subscribe.k == 0 || self.subscribe.k > self.subscribe.m => {
                bad("spread needs 1 <= k <= m")
            }
            _ => Ok(()),
        }
    }

    /// Whether client `i` is one of the slow readers.
    pub fn is_slow(&self, i: usize) -> bool {
        let f = self.subscribe.slow;
        f > 0.0 && ((i + 1) as f64 * f).floor() > (i as f64 * f).floor()
    }

    /// The channels (by index) that client `i` subscribes.
    pub fn channels_of(&self, i: usize) -> Vec<u32> {
        let s = &self.subscribe;
        match s.shape {
            Shape::One => vec![0],
            Shape::Rooms => vec![(i / s.room_size) as u32],
            Shape::Spread => (0..s.k).map(|j| ((i * s.k + j) % s.m) as u32).collect(),
        }
    }

    /// How many channels the clients use in all.
    pub fn channel_count(&self) -> usize {
        let s = &self.subscribe;
        match s.shape {
            Shape::One => 1,
            Shape::Rooms => self.connections.div_ceil(s.room_size),
            Shape::Spread => s.m.min(self.connections * s.k),
        }
    }
}

/// The name of channel `c` on the wire.
pub fn channel_name(c: u32) -> String {
    format!("b{c}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_under_bench_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 4, "expected the documented scenarios, found {n}");
    }

    #[test]
    fn refuses_non_loopback_and_unknown_keys() {
        assert!(Scenario::parse("addr = \"10.0.0.1:8000\"").is_err());
        assert!(Scenario::parse("conections = 5").is_err());
        assert!(Scenario::parse("target = \"pusher\"\ntransport = \"sse\"").is_err());
        assert!(Scenario::parse("addr = \"[::1]:8000\"").is_err());
        assert!(Scenario::parse("[publish]\n[storm]\nrecover = 5").is_err());
    }

    #[test]
    fn shapes_assign_channels() {
        let mut s = Scenario {
            connections: 25,
            ..Scenario::default()
        };
        s.subscribe.shape = Shape::Rooms;
        assert_eq!(s.channels_of(19), vec![1]);
        assert_eq!(s.channel_count(), 3);
        s.subscribe.shape = Shape::Spread;
        assert_eq!(s.channels_of(1), vec![3, 4, 5]);
        assert_eq!(s.channel_count(), 75);
    }
}
