//! The bench against a real Tidings server on 127.0.0.1:0: every transport,
//! both ways of publishing and a storm with recovery count exactly what was
//! published. Small and short: these check the bench's bookkeeping, not speed.

use std::time::Duration;

#[allow(dead_code)]
#[path = "../../server/tests/common/redis.rs"]
mod redis;

use tidings_bench::scenario::{Publish, Shape, Storm, Transport, Via};
use tidings_bench::{Options, Report, Scenario};
use tidings_server::Server;
use tidings_server::config::{AuthConfig, ClientConfig, Config, NamespaceOptions};

const API_KEY: &str = "bench-test-key";

async fn server() -> (Server, tempfile::TempDir) {
    server_with(|_| {}).await
}

async fn server_with(change: impl FnOnce(&mut Config)) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        auth: AuthConfig {
            token_secret: Some("bench-test-secret".into()),
            api_keys: vec![API_KEY.into()],
            ..Default::default()
        },
        channels: NamespaceOptions {
            anonymous: true,
            history_size: 1000,
            history_ttl: Duration::from_secs(600),
            ..Default::default()
        },
        client: ClientConfig {
            max_polls_per_user: 1000,
            ..Default::default()
        },
        ..Default::default()
    };
    change(&mut config);
    (Server::start(config).await.unwrap(), dir)
}

fn scenario(server: &Server, transport: Transport, connections: usize) -> Scenario {
    let mut s = Scenario {
        name: "test".into(),
        addr: server.local_addr(),
        transport,
        connections,
        idle: Duration::from_millis(200),
        max_duration: Duration::from_secs(60),
        publish: Some(Publish {
            rates: vec![40, 80],
            step: Duration::from_secs(1),
            payload: 64,
            drain: Duration::from_secs(10),
            workers: 2,
            // Loss is what these tests look for; latency is not judged.
            stop_p99_ms: f64::INFINITY,
            stop_on_loss: false,
            ..Publish::default()
        }),
        ..Scenario::default()
    };
    s.auth.api_key = Some(API_KEY.into());
    s
}

async fn run(s: Scenario) -> Report {
    let pid = Some(std::process::id());
    tidings_bench::run(
        s,
        Options {
            pid,
            progress: false,
        },
    )
    .await
    .unwrap()
}

fn assert_exact(r: &Report, clients: usize) {
    assert_eq!(r.connect.opened, clients, "{r}");
    assert_eq!(r.steps.len(), 2, "{r}");
    for s in &r.steps {
        assert!(s.published > 0 && s.expected > 0, "{r}");
        assert_eq!(s.delivered, s.expected, "{r}");
        assert_eq!((s.lost, s.duplicates, s.publish_errors), (0, 0, 0), "{r}");
        assert_eq!(s.latency.count, s.delivered, "{r}");
    }
    assert_eq!(r.closed_by_server, 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_rooms_through_the_api() {
    let (server, _dir) = server().await;
    let mut s = scenario(&server, Transport::Ws, 60);
    s.subscribe.shape = Shape::Rooms;
    s.subscribe.room_size = 7;
    let r = run(s).await;
    assert_exact(&r, 60);
    // 40/s for 1 s over 9 rooms (the last has 4 members).
    assert_eq!(r.steps[0].published, 40);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_spread_published_by_clients() {
    let (server, _dir) = server().await;
    let mut s = scenario(&server, Transport::Ws, 40);
    s.subscribe.shape = Shape::Spread;
    s.subscribe.k = 3;
    s.subscribe.m = 10;
    if let Some(p) = s.publish.as_mut() {
        p.via = Via::Client;
    }
    let r = run(s).await;
    assert_exact(&r, 40);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_long_poll_count_the_same() {
    let (server, _dir) = server().await;
    for transport in [Transport::Sse, Transport::Poll] {
        let r = run(scenario(&server, transport, 30)).await;
        assert_exact(&r, 30);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_recovers_what_everyone_missed() {
    let (server, _dir) = server().await;
    let mut s = scenario(&server, Transport::Ws, 50);
    s.publish = None;
    s.subscribe.shape = Shape::Spread;
    s.subscribe.k = 2;
    s.subscribe.m = 5;
    s.storm = Some(Storm {
        recover: 20,
        timeout: Duration::from_secs(30),
        ..Default::default()
    });
    let r = run(s).await;
    let storm = r.storm.as_ref().expect("a storm ran");
    assert_eq!(storm.connect.opened, 50, "{r}");
    assert_eq!(storm.recover_expected, 50 * 2 * 20);
    assert_eq!(storm.recovered, storm.recover_expected, "{r}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_client_publishes_are_errors_not_losses() {
    // 64-byte publications into a namespace that takes at most 40.
    let (server, _dir) = server_with(|c| c.channels.max_message_size = 40).await;
    let mut s = scenario(&server, Transport::Ws, 10);
    if let Some(p) = s.publish.as_mut() {
        p.via = Via::Client;
    }
    let r = run(s).await;
    let step = &r.steps[0];
    assert_eq!(step.published, 0, "{r}");
    assert_eq!(step.publish_errors, 40, "{r}");
    assert_eq!((step.expected, step.lost), (0, 0), "{r}");
    assert!(
        step.first_error
            .as_deref()
            .is_some_and(|e| e.contains("104")),
        "{r}"
    );
    assert!(
        r.limit
            .as_deref()
            .is_some_and(|l| l.contains("publishes failed")),
        "{r}"
    );
    server.shutdown().await;
}

/// Two nodes on one Redis: connections and publishes spread over both, and
/// a storm that moves every client to the other node recovers everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spreads_over_nodes_and_moves_clients_in_a_storm() {
    let redis = redis::Redis::start();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(
            server_with(|c| {
                c.engine.r#type = tidings_server::config::EngineType::Redis;
                c.engine.redis.urls = vec![redis.url()];
            })
            .await,
        );
    }
    let spread = |mut s: Scenario| {
        s.also = vec![nodes[1].0.local_addr()];
        s.subscribe.shape = Shape::Spread;
        s.subscribe.k = 1;
        s.subscribe.m = 4;
        s
    };
    let r = run(spread(scenario(&nodes[0].0, Transport::Ws, 40))).await;
    assert!(!r.steps.is_empty(), "{r}");
    for step in &r.steps {
        assert_eq!((step.lost, step.duplicates), (0, 0), "{r}");
    }
    let mut s = spread(scenario(&nodes[0].0, Transport::Ws, 40));
    s.publish = None;
    s.storm = Some(Storm {
        recover: 10,
        move_node: true,
        timeout: Duration::from_secs(30),
    });
    let r = run(s).await;
    let storm = r.storm.as_ref().expect("a storm ran");
    assert_eq!(storm.connect.opened, 40, "{r}");
    assert_eq!(storm.recovered, 40 * 10, "{r}");
}
