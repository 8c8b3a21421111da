//! kill -9: acknowledged publications survive SIGKILL at random moments, in
//! both `fsync = "always"` and `fsync = "interval"`; offsets are never
//! skipped or repeated and the epoch stays the same. Also: a damaged store
//! stops start-up with a message naming the file and the way out.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{BIN, start};

use serde_json::{Value, json};

const KEY: &str = "durability-key";
const PUBLISHERS: u64 = 8;
const ROUNDS: usize = 5;

fn config_file(dir: &std::path::Path, fsync: &str) -> std::path::PathBuf {
    let path = dir.join("tidings.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nfsync = \"{fsync}\"\n[auth]\ntoken_secret = \"durability-secret\"\napi_keys = [\"{KEY}\"]\n[channels]\nhistory_size = 100000\nhistory_ttl = \"1h\"\n"
        ),
    )
    .unwrap();
    path
}

async fn api(
    client: &reqwest::Client,
    addr: &str,
    method: &str,
    body: Value,
) -> Result<Value, String> {
    let res = client
        .post(format!("http://{addr}/v1/api/{method}"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !res.status().is_success() {
        return Err(format!("status {}", res.status()));
    }
    res.json().await.map_err(|e| e.to_string())
}

/// Everything in the channel's history, paged with `since`.
async fn full_history(addr: &str) -> (String, u64, Vec<Value>) {
    let client = reqwest::Client::new();
    let first = api(
        &client,
        addr,
        "history",
        json!({"channel": "k", "limit": 1}),
    )
    .await
    .unwrap();
    let epoch = first["epoch"].as_str().unwrap().to_string();
    let top = first["offset"].as_u64().unwrap();
    let mut all = Vec::new();
    let mut after = 0;
    while after < top {
        let page = api(
            &client,
            addr,
            "history",
            json!({"channel": "k", "since": {"offset": after, "epoch": epoch}, "limit": 1000}),
        )
        .await
        .unwrap();
        let pubs = page["publications"].as_array().unwrap().clone();
        assert!(!pubs.is_empty(), "history ends before its top");
        after = pubs.last().unwrap()["offset"].as_u64().unwrap();
        all.extend(pubs);
    }
    (epoch, top, all)
}

fn kill_rounds(fsync: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), fsync);
    let data = dir.path().join("data");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Acknowledged publications: offset -> (epoch, data).
    let mut acked: BTreeMap<u64, (String, Value)> = BTreeMap::new();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    for round in 0..ROUNDS {
        let (mut child, addr) = start(&config, &data);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let kill_after = Duration::from_millis(150 + (seed >> 33) % 400);
        let results = rt.block_on(async {
            let mut tasks = Vec::new();
            for p in 0..PUBLISHERS {
                let addr = addr.clone();
                tasks.push(tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let mut acks = Vec::new();
                    // Bounded: at most 100,000 publishes per publisher per round.
                    for n in 0..100_000u64 {
                        let data = json!({"r": round, "p": p, "n": n});
                        match api(
                            &client,
                            &addr,
                            "publish",
                            json!({"channel": "k", "data": data}),
                        )
                        .await
                        {
                            Ok(ok) => acks.push((
                                ok["offset"].as_u64().unwrap(),
                                ok["epoch"].as_str().unwrap().to_string(),
                                data,
                            )),
                            Err(_) => break,
                        }
                    }
                    acks
                }));
            }
            tokio::time::sleep(kill_after).await;
            child.kill().expect("SIGKILL");
            let _ = child.wait();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all
        });
        assert!(
            !results.is_empty(),
            "round {round}: some publishes were acknowledged"
        );
        for (offset, epoch, data) in results {
            assert!(
                acked.insert(offset, (epoch, data)).is_none(),
                "offset {offset} acknowledged twice"
            );
        }
    }
    let (child, addr) = start(&config, &data);
    let mut child = KillOnDrop(child);
    let (epoch, top, history) = rt.block_on(full_history(&addr));
    let offsets: Vec<u64> = history
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        offsets,
        (1..=top).collect::<Vec<_>>(),
        "no offset skipped or repeated"
    );
    let by_offset: BTreeMap<u64, &Value> = history
        .iter()
        .map(|p| (p["offset"].as_u64().unwrap(), &p["data"]))
        .collect();
    for (offset, (e, data)) in &acked {
        assert_eq!(e, &epoch, "the epoch never changed");
        assert_eq!(
            by_offset.get(offset),
            Some(&data),
            "acknowledged offset {offset} kept its data"
        );
    }
    let mut seen = std::collections::HashSet::new();
    for p in &history {
        assert!(
            seen.insert(p["data"].to_string()),
            "one publication stored twice: {}",
            p["data"]
        );
    }
    eprintln!(
        "fsync={fsync}: {} acknowledged over {ROUNDS} kills; history top {top}",
        acked.len()
    );
    let _ = child.0.kill();
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigkill_loses_nothing_acknowledged_fsync_always() {
    kill_rounds("always");
}

#[test]
fn sigkill_loses_nothing_acknowledged_fsync_interval() {
    kill_rounds("interval");
}

#[test]
fn damaged_store_stops_startup_with_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("history.sqlite"),
        b"garbage, not a database at all........",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .env_remove("TIDINGS_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("history.sqlite") && err.contains("--reset-history"),
        "{err}"
    );
    assert!(
        std::fs::read(data.join("history.sqlite"))
            .unwrap()
            .starts_with(b"garbage"),
        "not wiped"
    );

    // --reset-history starts fresh on purpose.
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--reset-history",
        ])
        .env_remove("TIDINGS_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let listening = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("listening on"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "started after --reset-history");
}

#[test]
fn no_presence_ghosts_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tidings.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n[auth]\ntoken_secret = \"durability-secret\"\napi_keys = [\"{KEY}\"]\n[namespaces.room]\npresence = true\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let (mut child, addr) = start(&config, &data);
    let token = Command::new(BIN)
        .args(["token", "--secret", "durability-secret", "--user", "ghost"])
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    let mut sub = KillOnDrop(
        Command::new(BIN)
            .args([
                "sub",
                "room:x",
                "--url",
                &format!("ws://{addr}/v1/ws"),
                "--token",
                &token,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let stats = |addr: &str| {
        rt.block_on(api(
            &client,
            addr,
            "presence_stats",
            json!({"channel": "room:x"}),
        ))
        .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while stats(&addr)["clients"] != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the subscriber joined"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let (child, addr) = start(&config, &data);
    let _child = KillOnDrop(child);
    assert_eq!(
        stats(&addr),
        json!({"clients": 0, "users": 0}),
        "a restarted process reports no one from before"
    );
    let _ = sub.0.kill();
}
