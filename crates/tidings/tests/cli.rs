//! The real binary: serve (flags, env, dev mode, SIGTERM), token,
//! check-config, pub and sub, and curl against the server API.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_tidings");

/// A line reader on a child's pipe, with a timeout.
struct Lines(mpsc::Receiver<String>);

impl Lines {
    fn new<R: Read + Send + 'static>(r: R) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines(rx)
    }

    /// The first line containing `needle` within 20 s (earlier lines are skipped).
    fn find(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.0.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(e) => panic!("no line containing {needle:?}: {e}"),
            }
        }
    }
}

struct Served {
    child: Child,
    addr: String,
    api_key: Option<String>,
    stderr: Lines,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(args: &[&str], envs: &[(&str, &str)]) -> Served {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("TIDINGS_LISTEN")
        .env_remove("TIDINGS_TOKEN_SECRET")
        .env_remove("TIDINGS_API_KEYS")
        .env_remove("TIDINGS_CONFIG")
        .env("TIDINGS_DATA_DIR", tempfile::tempdir().unwrap().keep())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("binary starts");
    let stderr: ChildStderr = child.stderr.take().unwrap();
    let stderr = Lines::new(stderr);
    let mut api_key = None;
    let addr = loop {
        let line = stderr.find("");
        if let Some(k) = line.trim().strip_prefix("dev API key:") {
            api_key = Some(k.trim().to_string());
        }
        if let Some(a) = line.split("listening on http://").nth(1) {
            break a.trim().to_string();
        }
    };
    Served {
        child,
        addr,
        api_key,
        stderr,
    }
}

fn curl_api(addr: &str, key: &str, method: &str, body: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            &format!("http://{addr}/v1/api/{method}"),
        ])
        .args(["-H", &format!("Authorization: Bearer {key}"), "-d", body])
        .output()
        .expect("curl runs");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("curl answer is JSON: {e}"))
}

#[test]
fn tour_sub_pub_curl_and_sigterm() {
    let server = serve(&["--listen", "127.0.0.1:0"], &[]);
    let key = server.api_key.clone().expect("dev mode prints an API key");
    let url = format!("ws://{}/v1/ws", server.addr);

    let mut sub = Command::new(BIN)
        .args(["sub", "news", "--url", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sub_out: ChildStdout = sub.stdout.take().unwrap();
    let sub_lines = Lines::new(sub_out);
    // Wait until the subscription is live: the API lists the channel.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while curl_api(&server.addr, &key, "channels", "{}")["channels"]
        .as_array()
        .is_none_or(|c| c.is_empty())
    {
        assert!(std::time::Instant::now() < deadline, "sub never subscribed");
        std::thread::sleep(Duration::from_millis(50));
    }

    let out = Command::new(BIN)
        .args(["pub", "news", r#"{"text":"hello"}"#, "--url", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let published: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(published["offset"], 1);

    let answer = curl_api(
        &server.addr,
        &key,
        "publish",
        r#"{"channel":"news","data":{"text":"from the backend"},"idempotency_key":"k1"}"#,
    );
    assert_eq!(answer["offset"], 2);
    let again = curl_api(
        &server.addr,
        &key,
        "publish",
        r#"{"channel":"news","data":{"text":"from the backend"},"idempotency_key":"k1"}"#,
    );
    assert_eq!(again, answer, "the same key publishes once");

    let first: serde_json::Value = serde_json::from_str(&sub_lines.find("hello")).unwrap();
    assert_eq!(
        (first["channel"].as_str(), first["offset"].as_u64()),
        (Some("news"), Some(1))
    );
    let second: serde_json::Value = serde_json::from_str(&sub_lines.find("backend")).unwrap();
    assert_eq!(second["offset"], 2);
    let epoch = second["epoch"].as_str().unwrap().to_string();

    // Resume from offset 1: gets offset 2 again (recovered), then nothing more.
    let mut resumed = Command::new(BIN)
        .args([
            "sub",
            "news",
            "--url",
            &url,
            "--since",
            &format!("1:{epoch}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let resumed_lines = Lines::new(resumed.stdout.take().unwrap());
    let line: serde_json::Value = serde_json::from_str(&resumed_lines.find("backend")).unwrap();
    assert_eq!(line["offset"], 2);

    let history = curl_api(&server.addr, &key, "history", r#"{"channel":"news"}"#);
    assert_eq!(history["publications"].as_array().unwrap().len(), 2);

    // SIGTERM: graceful shutdown, exit status 0.
    let mut server = server;
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    server.stderr.find("shutting down");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "server did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
    let _ = sub.kill();
    let _ = resumed.kill();
    let _ = sub.wait();
    let _ = resumed.wait();
}

#[test]
fn flags_beat_env_beat_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tidings.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1\"\n[auth]\ntoken_secret = \"file-secret-1\"\napi_keys = [\"file-key-12\"]\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    // File + env: TIDINGS_LISTEN beats the file's listen.
    let s = serve(&["--config", f], &[("TIDINGS_LISTEN", "127.0.0.1:0")]);
    assert!(s.api_key.is_none(), "a secret is configured: not dev mode");
    let ok = curl_api(&s.addr, "file-key-12", "info", "{}");
    assert_eq!(ok["nodes"].as_array().unwrap().len(), 1);
    // The env key list replaces the file's.
    drop(s);
    let s = serve(
        &["serve", "--config", f, "--listen", "127.0.0.1:0"],
        &[
            ("TIDINGS_LISTEN", "127.0.0.1:1"),
            ("TIDINGS_API_KEYS", "env-key-123,env-key-456"),
        ],
    );
    assert!(curl_api(&s.addr, "env-key-456", "info", "{}")["nodes"].is_array());
    assert_eq!(
        curl_api(&s.addr, "file-key-12", "info", "{}")["error"]["code"],
        103
    );
}

#[test]
fn refuses_public_listen_without_secret() {
    let out = Command::new(BIN)
        .args(["--listen", "0.0.0.0:0"])
        .env_remove("TIDINGS_TOKEN_SECRET")
        .env_remove("TIDINGS_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("token_secret") && err.contains("loopback"),
        "{err}"
    );
}

#[test]
fn check_config_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[namespaces.chat]\nhistory_size = 1000\nhistory_ttl = \"24h\"\nclient_publish = \"subscribers\"\nanonymous = false\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[namespaces.chat]\nclient_publish = \"everyone\"\n").unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("namespaces.chat.client_publish"), "{err}");

    std::fs::write(
        &bad,
        "[client]\nping_interval = \"0s\"\noutbox_bytes = 10\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("client.ping_interval") && err.contains("client.outbox_bytes"),
        "{err}"
    );
}

#[test]
fn token_is_verifiable() {
    let out = Command::new(BIN)
        .args([
            "token",
            "--secret",
            "secret-abc",
            "--user",
            "alice",
            "--ttl",
            "1h",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = tidings_server::auth::TokenVerifier::new("secret-abc")
        .verify(token.trim())
        .unwrap();
    assert_eq!(claims.sub, "alice");
    let exp = claims.exp.unwrap();
    let now = tidings_server::auth::unix_now();
    assert!(exp > now + 3500 && exp <= now + 3600);

    // A channel token, and a connection token with aud, iss and channels.
    let out = Command::new(BIN)
        .args([
            "token",
            "--secret",
            "secret-abc",
            "--user",
            "alice",
            "--channel",
            "private:x",
        ])
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap();
    let verifier = tidings_server::auth::TokenVerifier::new("secret-abc");
    let c = verifier.verify_channel(token.trim()).unwrap();
    assert_eq!((c.sub.as_str(), c.channel.as_str()), ("alice", "private:x"));
    assert!(
        verifier.verify(token.trim()).is_err(),
        "not a connection token"
    );
    let out = Command::new(BIN)
        .args([
            "token",
            "--secret",
            "secret-abc",
            "--user",
            "bob",
            "--aud",
            "app",
            "--iss",
            "me",
        ])
        .args(["--subscribe", "news", "--subscribe", "chat:a"])
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap();
    let strict = tidings_server::auth::TokenVerifier::from_keys(&tidings_server::auth::TokenKeys {
        secret: Some("secret-abc"),
        audience: Some("app"),
        issuer: Some("me"),
        ..Default::default()
    })
    .unwrap();
    let c = strict.verify(token.trim()).unwrap();
    assert_eq!(c.channels.unwrap(), ["news", "chat:a"]);
}

#[test]
fn curl_reads_sse_and_long_poll() {
    let server = serve(&["--listen", "127.0.0.1:0"], &[]);
    let key = server.api_key.clone().unwrap();
    let addr = server.addr.clone();
    // SSE: curl holds the stream for 3 s while two publications go out.
    let sse = std::thread::spawn({
        let addr = addr.clone();
        move || {
            Command::new("curl")
                .args([
                    "-sN",
                    "--max-time",
                    "3",
                    &format!("http://{addr}/v1/sse?channel=news"),
                ])
                .output()
                .unwrap()
        }
    });
    std::thread::sleep(Duration::from_millis(800));
    for text in ["one", "two"] {
        let a = curl_api(
            &addr,
            &key,
            "publish",
            &format!(r#"{{"channel":"news","data":"{text}"}}"#),
        );
        assert!(a["offset"].is_u64(), "{a}");
    }
    let out = String::from_utf8(sse.join().unwrap().stdout).unwrap();
    assert!(out.contains("retry: "), "{out}");
    assert_eq!(out.matches("event: pub").count(), 2, "{out}");
    // The opening block's id (the position at open), then one per publication.
    let ids: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("id: ")).collect();
    assert_eq!(ids.len(), 3, "{out}");
    let ids = &ids[1..];

    // Long-poll from the first id: answers at once with the second.
    let poll = Command::new("curl")
        .args([
            "-s",
            &format!("http://{addr}/v1/poll?channel=news&since={}", ids[0]),
        ])
        .output()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&poll.stdout).unwrap();
    assert_eq!(answer["events"][0]["data"], "two", "{answer}");
    assert_eq!(answer["position"], ids[1]);
    // From the last id: held for the timeout, then nothing new and the same position.
    let poll = Command::new("curl")
        .args([
            "-s",
            &format!(
                "http://{addr}/v1/poll?channel=news&since={}&timeout=1",
                ids[1]
            ),
        ])
        .output()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&poll.stdout).unwrap();
    assert_eq!(answer["events"], serde_json::json!([]));
    assert_eq!(answer["position"], ids[1]);
}

#[test]
fn sighup_rotates_keys_and_namespaces_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tidings.toml");
    let write = |key: &str, ns: &str| {
        std::fs::write(
            &file,
            format!("listen = \"127.0.0.1:0\"\n[auth]\ntoken_secret = \"rotate-secret\"\napi_keys = [\"{key}\"]\n{ns}"),
        )
        .unwrap();
    };
    write("key-before-1", "");
    let server = serve(&["--config", file.to_str().unwrap()], &[]);
    assert!(curl_api(&server.addr, "key-before-1", "info", "{}")["nodes"].is_array());
    let body = r#"{"channel":"late:x","data":1}"#;
    assert_eq!(
        curl_api(&server.addr, "key-before-1", "publish", body)["error"]["code"],
        102
    );
    write("key-after-12", "[namespaces.late]\n");
    let status = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    server
        .stderr
        .find("reloaded token keys, API keys and namespaces");
    assert_eq!(
        curl_api(&server.addr, "key-before-1", "info", "{}")["error"]["code"],
        103,
        "revoked"
    );
    assert!(curl_api(&server.addr, "key-after-12", "info", "{}")["nodes"].is_array());
    assert_eq!(
        curl_api(&server.addr, "key-after-12", "publish", body)["offset"],
        1,
        "a namespace added by the reload"
    );
}

#[test]
fn webhook_verify_accepts_signed_bodies_and_rejects_tampered_ones() {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(
        &body,
        r#"{"events":[{"id":"e1","event":"client_connected"}]}"#,
    )
    .unwrap();
    // Signed by the server's own signer, as a webhook request would be.
    let now = tidings_server::auth::unix_now();
    let header =
        tidings_server::hooks::signature::sign("whsec-cli", now, &std::fs::read(&body).unwrap());
    let verify = |file: &std::path::Path, header: &str, secret: &str| {
        Command::new(BIN)
            .args([
                "webhook",
                "verify",
                "--secret",
                secret,
                "--signature",
                header,
            ])
            .arg("--body-file")
            .arg(file)
            .output()
            .unwrap()
    };
    let ok = verify(&body, &header, "whsec-cli");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "valid");

    let tampered = dir.path().join("tampered.json");
    std::fs::write(
        &tampered,
        r#"{"events":[{"id":"e2","event":"client_connected"}]}"#,
    )
    .unwrap();
    let bad = verify(&tampered, &header, "whsec-cli");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("does not match"));
    assert_eq!(
        verify(&body, &header, "other-secret").status.code(),
        Some(1)
    );

    // `sign` then `verify` over stdin round-trips.
    let mut sign = Command::new(BIN)
        .args([
            "webhook",
            "sign",
            "--secret",
            "whsec-cli",
            "--time",
            "1700000000",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut sign.stdin.take().unwrap(), b"{}").unwrap();
    let signed = sign.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&signed.stdout).trim(),
        tidings_server::hooks::signature::sign("whsec-cli", 1_700_000_000, b"{}")
    );
    // An old timestamp is refused as a replay.
    let old = verify(
        &body,
        &tidings_server::hooks::signature::sign(
            "whsec-cli",
            now - 3600,
            &std::fs::read(&body).unwrap(),
        ),
        "whsec-cli",
    );
    assert_eq!(old.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&old.stderr).contains("away from now"));
}

#[test]
fn log_lines_can_be_json() {
    let mut served = serve(&["--listen", "127.0.0.1:0", "--log-format", "json"], &[]);
    let pid = served.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let line = served.stderr.find("shutting down");
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("a JSON log line");
    assert_eq!(v["level"], "INFO", "{line}");
    assert_eq!(v["fields"]["message"], "shutting down", "{line}");
    assert!(v["timestamp"].is_string(), "{line}");
    let _ = served.child.wait();
}

/// A user's mistake is one readable message with its cause: no backtrace,
/// no panic, whatever `RUST_BACKTRACE` says.
#[test]
fn user_mistakes_are_one_message_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let assert_readable = |out: std::process::Output, cause: &str| {
        assert!(!out.status.success());
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("Error: "), "{err}");
        assert!(err.contains(cause), "{err}");
        for noise in ["backtrace", "Backtrace", "panicked", "Caused by", "at /"] {
            assert!(!err.contains(noise), "{noise} in: {err}");
        }
    };
    // A bad configuration file.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[client]\nping_interval = \"0s\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", bad.to_str().unwrap(), "--data-dir"])
        .arg(dir.path())
        .env("RUST_BACKTRACE", "full")
        .env_remove("TIDINGS_CONFIG")
        .output()
        .unwrap();
    assert_readable(out, "client.ping_interval");
    // A port another process holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["--listen", &addr, "--data-dir"])
        .arg(dir.path())
        .env("RUST_BACKTRACE", "1")
        .env_remove("TIDINGS_CONFIG")
        .output()
        .unwrap();
    assert_readable(out, &addr);
    // A missing configuration file.
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/tidings.toml"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_readable(out, "/nonexistent/tidings.toml");
}
