//! Ingest, against real brokers and the real binary: records written while
//! Tidings runs reach the channel in order; records written while it is
//! down are published after it starts; `kill -9` in the middle of a batch,
//! then a restart, publishes every record exactly once; a malformed record
//! goes to the dead-letter place and the next one is still published.

mod common;
#[path = "../../server/tests/common/redis.rs"]
#[allow(dead_code)]
mod redis;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::sources::{Mosquitto, Nats, Postgres};
use common::start;
use serde_json::{Value, json};

const KEY: &str = "ingest-test-api-key";

/// A runtime for the tests' HTTP and broker clients.
fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A configuration file with `consumers` (TOML) and durable namespaces.
fn config(dir: &std::path::Path, consumers: &str) -> std::path::PathBuf {
    let path = dir.join("tidings.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nnode_name = \"ingest-test\"\n[auth]\ntoken_secret = \"ingest-test-secret\"\napi_keys = [\"{KEY}\"]\n\
             [namespaces.orders]\nhistory_size = 100000\nhistory_ttl = \"1h\"\n\
             [namespaces.iot]\nhistory_size = 100000\nhistory_ttl = \"1h\"\n{consumers}"
        ),
    )
    .unwrap();
    path
}

/// The `n` of every publication in `channel`, in offset order.
fn published(addr: &str, channel: &str) -> Vec<u64> {
    rt().block_on(async {
        let res = reqwest::Client::new()
            .post(format!("http://{addr}/v1/api/history"))
            .bearer_auth(KEY)
            .json(&json!({"channel": channel, "limit": 100000}))
            .send()
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        body["publications"]
            .as_array()
            .map(|p| p.iter().filter_map(|p| p["data"]["n"].as_u64()).collect())
            .unwrap_or_default()
    })
}

/// `0-49, 51-60` for a failure message.
fn ranges(ns: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut start = None;
    for (i, n) in ns.iter().enumerate() {
        let first = *start.get_or_insert(*n);
        if ns.get(i + 1) != Some(&(n + 1)) {
            out.push(if first == *n {
                n.to_string()
            } else {
                format!("{first}-{n}")
            });
            start = None;
        }
    }
    out.join(", ")
}

/// Waits until `channel` has at least `count` publications; returns them.
fn wait_published(addr: &str, channel: &str, count: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = published(addr, channel);
        if got.len() >= count {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{channel}: {} of {count} published: {}",
            got.len(),
            ranges(&got)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every consumer is connected and reading (an MQTT broker keeps
/// nothing for a session that has not subscribed yet).
fn wait_up(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = rt().block_on(async {
            let res = reqwest::get(format!("http://{addr}/metrics"))
                .await
                .unwrap();
            res.text().await.unwrap()
        });
        let up: Vec<bool> = metrics
            .lines()
            .filter(|l| l.starts_with("tidings_consumer_up{"))
            .map(|l| l.ends_with(" 1"))
            .collect();
        if !up.is_empty() && up.iter().all(|u| *u) {
            return;
        }
        assert!(Instant::now() < deadline, "the consumer did not connect");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the whole story for one source: `produce(range)` writes records
/// `{"n": i}` for the channel `orders:list` (or what the consumer maps to
/// `channel`).
fn exactly_once(consumers: &str, channel: &str, produce: &mut dyn FnMut(std::ops::Range<u64>)) {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), consumers);
    let data = dir.path().join("data");
    let (mut child, addr) = start(&config, &data);
    wait_up(&addr);

    // While it runs: in order.
    produce(0..50);
    assert_eq!(
        wait_published(&addr, channel, 50),
        (0..50).collect::<Vec<_>>()
    );

    // kill -9 in the middle of the next records.
    produce(50..400);
    let deadline = Instant::now() + Duration::from_secs(60);
    while published(&addr, channel).len() < 80 {
        assert!(Instant::now() < deadline, "the consumer stalled");
        std::thread::sleep(Duration::from_millis(5));
    }
    kill_9(&mut child);
    let at_kill = published_offline(&data);

    // While it is down.
    produce(400..500);
    let (mut child, addr) = start(&config, &data);
    let all = wait_published(&addr, channel, 500);
    // Nothing more comes: no record twice.
    std::thread::sleep(Duration::from_millis(1500));
    let all_later = published(&addr, channel);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(all, (0..500).collect::<Vec<_>>(), "at kill: {at_kill}");
    assert_eq!(all_later, all, "nothing published twice");
}

fn kill_9(child: &mut Child) {
    child.kill().expect("SIGKILL");
    let _ = child.wait();
}

/// For messages: what the data dir holds after the kill (its size).
fn published_offline(data: &std::path::Path) -> String {
    let size: u64 = std::fs::read_dir(data)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    format!("{size} bytes of history on disk")
}

/// Runs `redis-cli` with `commands` (one per line) on stdin.
fn redis_cli(port: u16, commands: &str) -> String {
    let mut child = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli (scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(commands.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn redis_consumer(port: u16) -> String {
    format!(
        "[[consumers]]\nname = \"orders\"\ntype = \"redis_stream\"\nurl = \"redis://127.0.0.1:{port}\"\nstream = \"tidings:in\"\ngroup = \"tidings\"\nbatch_size = 10\nclaim_after = \"1s\"\n"
    )
}

#[test]
fn redis_stream_exactly_once_across_kill_9() {
    let redis = redis::Redis::start();
    let port = redis.port;
    exactly_once(&redis_consumer(port), "orders:list", &mut |range| {
        let commands: String = range
            .map(|n| format!("XADD tidings:in * channel orders:list data '{{\"n\":{n}}}'\n"))
            .collect();
        redis_cli(port, &commands);
    });
}

#[test]
fn redis_stream_dead_letters_a_bad_record_and_goes_on() {
    let redis = redis::Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &redis_consumer(redis.port));
    let (mut child, addr) = start(&config, &dir.path().join("data"));
    redis_cli(
        redis.port,
        "XADD tidings:in * channel orders:list data not-json\nXADD tidings:in * data '{\"n\":1}'\nXADD tidings:in * channel orders:list data '{\"n\":2}'\n",
    );
    assert_eq!(wait_published(&addr, "orders:list", 1), vec![2]);
    let dead = redis_cli(redis.port, "XRANGE tidings:in:dead - +\n");
    assert!(dead.contains("is not JSON"), "{dead}");
    assert!(dead.contains("no `channel` field"), "{dead}");
    let metrics = rt().block_on(async {
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(
        metrics.contains("tidings_consumer_records_total{consumer=\"orders\",outcome=\"dead\"} 2"),
        "{metrics}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn postgres_consumer(pg: &Postgres, name: &str) -> String {
    format!(
        "[[consumers]]\nname = \"{name}\"\ntype = \"postgres_outbox\"\nurl = \"{}\"\nstream = \"outbox\"\ncreate = true\nbatch_size = 10\npoll_interval = \"200ms\"\n",
        pg.url()
    )
}

fn pg_insert(pg: &Postgres, range: std::ops::Range<u64>) {
    pg.psql(&format!(
        "INSERT INTO outbox (channel, data) SELECT 'orders:list', json_build_object('n', n) FROM generate_series({}, {}) AS n",
        range.start,
        range.end - 1
    ));
}

/// Waits until Tidings has created the outbox table (`create = true`).
fn wait_for_outbox_table(pg: &Postgres) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.psql("SELECT to_regclass('outbox') IS NOT NULL") != "t" {
        assert!(
            Instant::now() < deadline,
            "the outbox table was not created"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn postgres_outbox_exactly_once_across_kill_9() {
    let pg = Postgres::start();
    // The table exists before the first start, as the backend's migration
    // would make it; Tidings creates it (`create = true`) when it does not.
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _) = start(
        &config(dir.path(), &postgres_consumer(&pg, "orders")),
        &dir.path().join("data"),
    );
    wait_for_outbox_table(&pg);
    kill_9(&mut child);
    exactly_once(
        &postgres_consumer(&pg, "orders"),
        "orders:list",
        &mut |range| pg_insert(&pg, range),
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM outbox"),
        "0",
        "every row deleted"
    );
}

#[test]
fn postgres_outbox_two_nodes_publish_each_row_once() {
    let pg = Postgres::start();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    // Two nodes on one history: the Redis engine.
    let redis = redis::Redis::start();
    let engine = format!(
        "[engine]\ntype = \"redis\"\n[engine.redis]\nurls = [\"redis://127.0.0.1:{}\"]\n",
        redis.port
    );
    let consumers = format!(
        "{}partitions = 4\n",
        postgres_consumer(&pg, "orders")
            .replace("[[consumers]]", &format!("{engine}[[consumers]]"))
    );
    let mut nodes: Vec<(Child, String)> = dirs
        .iter()
        .map(|d| start(&config(d.path(), &consumers), &d.path().join("data")))
        .collect();
    wait_for_outbox_table(&pg);
    // Rows spread over the partitions; each partition in order.
    pg.psql(
        "INSERT INTO outbox (partition, channel, data) SELECT n % 4, 'orders:p' || (n % 4), json_build_object('n', n) FROM generate_series(0, 399) AS n",
    );
    for p in 0..4u64 {
        let want: Vec<u64> = (0..400).filter(|n| n % 4 == p).collect();
        let got = wait_published(&nodes[0].1, &format!("orders:p{p}"), want.len());
        assert_eq!(got, want, "partition {p}: each row once, in order");
    }
    std::thread::sleep(Duration::from_millis(1000));
    for p in 0..4u64 {
        assert_eq!(published(&nodes[1].1, &format!("orders:p{p}")).len(), 100);
    }
    assert_eq!(pg.psql("SELECT count(*) FROM outbox"), "0");
    for (child, _) in &mut nodes {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn postgres_outbox_dead_letters_a_bad_record_and_goes_on() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &postgres_consumer(&pg, "orders"));
    let (mut child, addr) = start(&config, &dir.path().join("data"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.psql("SELECT to_regclass('outbox_dead') IS NOT NULL") != "t" {
        assert!(Instant::now() < deadline, "the tables were not created");
        std::thread::sleep(Duration::from_millis(50));
    }
    pg.psql(
        "INSERT INTO outbox (channel, data) VALUES ('no:such:namespace', '{\"n\":1}'), ('orders:list', '{\"n\":2}')",
    );
    assert_eq!(wait_published(&addr, "orders:list", 1), vec![2]);
    let dead = pg.psql("SELECT channel, reason FROM outbox_dead");
    assert!(dead.starts_with("no:such:namespace|"), "{dead}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A JetStream context with the stream `ORDERS` on `orders.>`.
async fn orders_stream(nats: &Nats) -> async_nats::jetstream::Context {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    js
}

#[test]
fn nats_jetstream_exactly_once_across_kill_9() {
    let nats = Nats::start();
    let rt = rt();
    let js = rt.block_on(orders_stream(&nats));
    let consumers = format!(
        "[[consumers]]\nname = \"orders\"\ntype = \"nats_jetstream\"\nurl = \"{}\"\nstream = \"ORDERS\"\nsubject = \"orders.in.>\"\ndead_letter = \"orders.dead\"\nbatch_size = 10\nclaim_after = \"2s\"\nchannel_template = \"orders:{{3}}\"\n",
        nats.url()
    );
    exactly_once(&consumers, "orders:list", &mut |range| {
        rt.block_on(async {
            for n in range {
                js.publish("orders.in.list", json!({"n": n}).to_string().into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        })
    });
}

#[test]
fn mqtt_exactly_once_across_kill_9() {
    let broker = Mosquitto::start();
    let consumers = format!(
        "[[consumers]]\nname = \"sensors\"\ntype = \"mqtt\"\nurl = \"{}\"\ntopics = [\"sensors/+/temp\"]\ngroup = \"tidings-test\"\nchannel_template = \"iot:sensor.{{1}}\"\n[consumers.fields]\nidempotency_key = \"id\"\n",
        broker.url()
    );
    let mut options = rumqttc::MqttOptions::new("device-42", "127.0.0.1", broker.port);
    options.set_keep_alive(Duration::from_secs(30));
    let (device, mut connection) = rumqttc::Client::new(options, 1000);
    std::thread::spawn(move || for _ in connection.iter() {});
    exactly_once(&consumers, "iot:sensor.42", &mut |range| {
        for n in range {
            let payload = json!({"id": format!("reading-{n}"), "n": n}).to_string();
            device
                .publish("sensors/42/temp", rumqttc::QoS::AtLeastOnce, false, payload)
                .unwrap();
        }
        // The device's client sends in the background: wait until it has.
        std::thread::sleep(Duration::from_millis(300));
    });
}

#[test]
fn nats_and_mqtt_dead_letter_a_bad_record_and_go_on() {
    let nats = Nats::start();
    let broker = Mosquitto::start();
    let rt = rt();
    // The dead-letter subject is in the stream too, outside the consumer's filter.
    let js = rt.block_on(orders_stream(&nats));
    let consumers = format!(
        "[[consumers]]\nname = \"orders\"\ntype = \"nats_jetstream\"\nurl = \"{}\"\nstream = \"ORDERS\"\nsubject = \"orders.in.>\"\ndead_letter = \"orders.dead\"\nchannel_template = \"orders:{{3}}\"\n\
         [[consumers]]\nname = \"sensors\"\ntype = \"mqtt\"\nurl = \"{}\"\ntopics = [\"sensors/+/temp\"]\ngroup = \"tidings-dead-test\"\nchannel_template = \"iot:sensor.{{1}}\"\n",
        nats.url(),
        broker.url()
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start(&config(dir.path(), &consumers), &dir.path().join("data"));
    wait_up(&addr);
    // MQTT: a watcher of the dead-letter topic, and a device.
    let mut options = rumqttc::MqttOptions::new("dead-watcher", "127.0.0.1", broker.port);
    options.set_keep_alive(Duration::from_secs(30));
    let (watcher, mut watching) = rumqttc::Client::new(options, 100);
    watcher
        .subscribe("tidings/dead/sensors", rumqttc::QoS::AtLeastOnce)
        .unwrap();
    let (letters_tx, letters) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for event in watching.iter() {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) = event {
                let _ = letters_tx.send(String::from_utf8_lossy(&p.payload).into_owned());
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let (device, mut connection) = rumqttc::Client::new(
        rumqttc::MqttOptions::new("device-7", "127.0.0.1", broker.port),
        100,
    );
    std::thread::spawn(move || for _ in connection.iter() {});
    for payload in ["not json", "{\"n\":2}"] {
        device
            .publish("sensors/7/temp", rumqttc::QoS::AtLeastOnce, false, payload)
            .unwrap();
    }
    rt.block_on(async {
        for payload in ["not json", "{\"n\":2}"] {
            js.publish("orders.in.list", payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    assert_eq!(wait_published(&addr, "iot:sensor.7", 1), vec![2]);
    assert_eq!(wait_published(&addr, "orders:list", 1), vec![2]);
    let letter: Value = serde_json::from_str(
        &letters
            .recv_timeout(Duration::from_secs(10))
            .expect("a dead letter on MQTT"),
    )
    .unwrap();
    assert_eq!(letter["topic"], "sensors/7/temp");
    assert_eq!(letter["payload"], "not json");
    assert!(letter["reason"].as_str().unwrap().contains("is not JSON"));
    let dead = rt.block_on(async {
        let stream = js.get_stream("ORDERS").await.unwrap();
        stream
            .get_last_raw_message_by_subject("orders.dead")
            .await
            .unwrap()
    });
    assert_eq!(&dead.payload[..], b"not json");
    let _ = child.kill();
    let _ = child.wait();
}
