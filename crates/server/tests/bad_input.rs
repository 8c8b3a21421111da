//! Bad input is a feature: every kind of garbage gets its code, and the other
//! clients keep receiving. Real server, real sockets.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tidings_server::Server;
use tidings_server::config::{ClientPublish, Config, NamespaceOptions};
use tokio_websockets::Message;

const T: Duration = Duration::from_secs(10);

/// The next message that is not a ping, or panics (closed or timeout).
async fn next_msg(raw: &mut Raw) -> Value {
    raw.next_non_ping()
        .await
        .expect("connection open while waiting for a message")
}

/// Asserts an error reply with `code` (and `id` when given).
#[track_caller]
fn assert_error(m: &Value, code: u64, id: Option<u32>) {
    assert!(m.get("push").is_none(), "expected an error reply, got {m}");
    assert_eq!(m["error"]["code"], code, "{m}");
    assert!(m["error"]["message"].is_string(), "{m}");
    if let Some(id) = id {
        assert_eq!(m["id"], id, "the reply echoes the id: {m}");
    }
}

/// Subscribes and asserts it worked.
async fn subscribe(raw: &mut Raw, channel: &str) {
    let r = raw
        .call(json!({"op": "subscribe", "channel": channel}))
        .await;
    assert!(r.get("ok").is_some(), "subscribe {channel}: {r}");
}

/// Publishes through the API; returns the offset.
async fn publish(server: &Server, channel: &str, data: Value) -> u64 {
    let (status, body) = api(server, "publish", json!({"channel": channel, "data": data})).await;
    assert_eq!(status, 200, "{body}");
    body["offset"].as_u64().expect("an offset")
}

/// The next message, which must be a publication.
async fn next_pub(raw: &mut Raw) -> Value {
    let m = next_msg(raw).await;
    assert_eq!(m["push"], "pub", "expected a publication, got {m}");
    m
}

/// Publishes a probe into `channel` and checks that each of `raws` (all
/// subscribed, nothing else pending) receives exactly it next.
async fn all_receive(server: &Server, raws: &mut [&mut Raw], channel: &str) {
    let data = json!({"probe": channel});
    let offset = publish(server, channel, data.clone()).await;
    for raw in raws.iter_mut() {
        let p = next_pub(raw).await;
        assert_eq!(
            (p["channel"].as_str(), p["offset"].as_u64(), &p["data"]),
            (Some(channel), Some(offset), &data)
        );
    }
}

/// The JSON messages among `events`.
fn msgs(events: &[Event]) -> Vec<&Value> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Msg(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// Expects the sequence "error reply 101, `disconnect` 3500, close 3500", nothing else.
async fn expect_101_then_3500(raw: &mut Raw, id: Option<u32>) {
    let events = raw.events_until_closed(10, T).await;
    let m = msgs(&events);
    assert_eq!(
        m.len(),
        2,
        "an error reply and a disconnect push: {events:?}"
    );
    assert_error(m[0], 101, id);
    assert_eq!(m[1]["push"], "disconnect", "{events:?}");
    assert_eq!(m[1]["code"], 3500, "{events:?}");
    assert_eq!(m[1]["reconnect"], false, "{events:?}");
    assert!(
        matches!(events.last(), Some(Event::Close(Some(3500), _))),
        "closed with 3500: {events:?}"
    );
}

/// Waits (bounded) until the node counts `n` connections.
async fn wait_connections(server: &Server, n: u64) {
    let mut last = Value::Null;
    for _ in 0..200 {
        let (_, body) = api(server, "info", json!({})).await;
        last = body["nodes"][0]["connections"].clone();
        if last == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("expected {n} connections, still {last}");
}

#[tokio::test]
async fn non_json_after_connect_is_101_and_the_connection_stays() {
    let server = start().await;
    let mut a = Raw::connect(&server, None).await;
    subscribe(&mut a, "bi").await;
    let mut other = Raw::connect(&server, None).await;
    subscribe(&mut other, "bi").await;

    for garbage in [
        "hello",
        "{",
        "{\"id\": 5, \"op\": \"subscribe\", \"channel\": \"x\"",
        "[1, 2]",
        "null",
        "42",
        "\"op\"",
        "{} {}",
        "\u{0}",
    ] {
        a.send_text(garbage).await;
        let m = next_msg(&mut a).await;
        assert_error(&m, 101, None);
    }
    // Good and bad lines in one frame: each answered, in order.
    a.send_text(concat!(
        r#"{"id":1,"op":"subscribe","channel":"bi.one"}"#,
        "\n",
        "not json at all",
        "\n",
        r#"{"id":3,"op":"subscribe","channel":"bi.two"}"#
    ))
    .await;
    let m = next_msg(&mut a).await;
    assert_eq!((&m["id"], m.get("ok").is_some()), (&json!(1), true), "{m}");
    assert_error(&next_msg(&mut a).await, 101, None);
    let m = next_msg(&mut a).await;
    assert_eq!((&m["id"], m.get("ok").is_some()), (&json!(3), true), "{m}");

    all_receive(&server, &mut [&mut a, &mut other], "bi").await;
    all_receive(&server, &mut [&mut a], "bi.two").await;
}

#[tokio::test]
async fn non_json_before_connect_is_101_then_disconnect_3500() {
    let server = start().await;
    let mut other = Raw::connect(&server, None).await;
    subscribe(&mut other, "pre").await;
    let mut a = Raw::open(&server).await;
    a.send_text("GET / HTTP/1.1").await;
    expect_101_then_3500(&mut a, None).await;
    all_receive(&server, &mut [&mut other], "pre").await;
}

#[tokio::test]
async fn a_command_before_connect_is_101_then_disconnect_3500() {
    let server = start().await;
    let mut other = Raw::connect(&server, None).await;
    subscribe(&mut other, "pre").await;

    for cmd in [
        json!({"id": 1, "op": "subscribe", "channel": "pre"}),
        json!({"id": 1, "op": "publish", "channel": "pre", "data": "sneaky"}),
        json!({"id": 1, "op": "history", "channel": "pre"}),
        json!({"id": 1, "op": "refresh", "token": token("alice")}),
    ] {
        let mut a = Raw::open(&server).await;
        a.send_text(cmd.to_string()).await;
        expect_101_then_3500(&mut a, Some(1)).await;
    }
    // A `connect` after the bad command in the same frame is not answered.
    let mut a = Raw::open(&server).await;
    a.send_text(concat!(
        r#"{"id":1,"op":"subscribe","channel":"pre"}"#,
        "\n",
        r#"{"id":2,"op":"connect"}"#
    ))
    .await;
    expect_101_then_3500(&mut a, Some(1)).await;
    // A bad command instead of `connect` closes the connection too.
    let mut a = Raw::open(&server).await;
    a.send_text(r#"{"id":7,"op":"fly"}"#).await;
    expect_101_then_3500(&mut a, Some(7)).await;

    // Nothing got published; the bystander is unaffected.
    all_receive(&server, &mut [&mut other], "pre").await;
    let (_, h) = api(&server, "history", json!({"channel": "pre"})).await;
    assert_eq!(h["offset"], 1, "only the probe was published: {h}");
}

#[tokio::test]
async fn unknown_op_is_101_echoing_the_id() {
    let server = start().await;
    let mut a = Raw::connect(&server, None).await;
    for (id, op) in [(41, "fly"), (42, "Subscribe"), (43, ""), (44, "connect ")] {
        a.send_text(json!({"id": id, "op": op, "channel": "x"}).to_string())
            .await;
        let m = next_msg(&mut a).await;
        assert_error(&m, 101, Some(id));
    }
    // `op` missing or not a string.
    a.send_text(r#"{"id":45,"channel":"x"}"#).await;
    assert_error(&next_msg(&mut a).await, 101, Some(45));
    a.send_text(r#"{"id":46,"op":7}"#).await;
    assert_error(&next_msg(&mut a).await, 101, Some(46));
    subscribe(&mut a, "still.fine").await;
}

#[tokio::test]
async fn missing_fields_are_101_with_the_id() {
    let server = start().await;
    let mut a = Raw::connect(&server, None).await;
    let mut other = Raw::connect(&server, None).await;
    subscribe(&mut other, "mf").await;
    let cases = [
        json!({"id": 11, "op": "publish", "channel": "mf"}),
        json!({"id": 12, "op": "publish", "data": 1}),
        json!({"id": 13, "op": "subscribe"}),
        json!({"id": 14, "op": "unsubscribe"}),
        json!({"id": 15, "op": "history"}),
        json!({"id": 16, "op": "presence"}),
        json!({"id": 17, "op": "presence_stats"}),
        json!({"id": 18, "op": "refresh"}),
    ];
    for cmd in cases {
        let id = cmd["id"].as_u64().unwrap() as u32;
        a.send_text(cmd.to_string()).await;
        let m = next_msg(&mut a).await;
        assert_error(&m, 101, Some(id));
    }
    // A command without an id cannot be matched to a reply: still answered 101.
    a.send_text(r#"{"op":"subscribe","channel":"mf"}"#).await;
    assert_error(&next_msg(&mut a).await, 101, None);
    // None of it subscribed or published anything.
    let r = a.call(json!({"op": "unsubscribe", "channel": "mf"})).await;
    assert_eq!(error_code(&r), 108, "{r}");
    all_receive(&server, &mut [&mut other], "mf").await;
    let (_, h) = api(&server, "history", json!({"channel": "mf"})).await;
    assert_eq!(h["offset"], 1, "{h}");
}

#[tokio::test]
async fn wrong_types_are_101() {
    let server = start().await;
    let mut a = Raw::connect(&server, None).await;
    let with_id = [
        json!({"id": 21, "op": "subscribe", "channel": 17}),
        json!({"id": 22, "op": "subscribe", "channel": ["wt"]}),
        json!({"id": 23, "op": "subscribe", "channel": null}),
        json!({"id": 24, "op": "publish", "channel": "wt", "data": 1, "tags": {"k": 1}}),
        json!({"id": 25, "op": "history", "channel": "wt", "limit": "ten"}),
        json!({"id": 26, "op": "history", "channel": "wt", "reverse": "yes"}),
        json!({"id": 27, "op": "subscribe", "channel": "wt", "since": {"offset": "1", "epoch": "e"}}),
        json!({"id": 28, "op": "subscribe", "channel": "wt", "since": 3}),
        json!({"id": 29, "op": "connect", "subscribe": "wt"}),
        json!({"id": 30, "op": "publish", "channel": "wt", "data": 1, "idempotency_key": 5}),
    ];
    for cmd in with_id {
        let id = cmd["id"].as_u64().unwrap() as u32;
        a.send_text(cmd.to_string()).await;
        let m = next_msg(&mut a).await;
        assert_error(&m, 101, Some(id));
    }
    // An id that is not a u32: the reply cannot echo it, but it is a 101.
    for text in [
        r#"{"id":"x","op":"subscribe","channel":"wt"}"#,
        r#"{"id":-1,"op":"subscribe","channel":"wt"}"#,
        r#"{"id":4294967296,"op":"subscribe","channel":"wt"}"#,
        r#"{"id":1.5,"op":"subscribe","channel":"wt"}"#,
    ] {
        a.send_text(text).await;
        let m = next_msg(&mut a).await;
        assert_error(&m, 101, None);
    }
    // Nothing above subscribed to `wt`.
    let r = a.call(json!({"op": "unsubscribe", "channel": "wt"})).await;
    assert_eq!(error_code(&r), 108, "{r}");
    subscribe(&mut a, "wt").await;
    all_receive(&server, &mut [&mut a], "wt").await;
}

#[tokio::test]
async fn invalid_utf8_in_a_binary_frame_is_101_and_the_connection_stays() {
    let server = start().await;
    let mut a = Raw::connect(&server, None).await;
    subscribe(&mut a, "bin").await;
    let mut other = Raw::connect(&server, None).await;
    subscribe(&mut other, "bin").await;

    for bytes in [
        &b"{\"id\":31,\"op\":\"subscribe\",\"channel\":\"\xff\xfe\"}"[..],
        &b"\xff\xfe\xfd"[..],
        &b"{\"id\":32,\"op\":\"publish\",\"channel\":\"bin\",\"data\":\"\xc3\x28\"}"[..],
    ] {
        a.ws.send(Message::binary(Bytes::copy_from_slice(bytes)))
            .await
            .expect("send");
        let m = next_msg(&mut a).await;
        assert_error(&m, 101, None);
    }
    // The connection is still usable, and nothing was published.
    subscribe(&mut a, "bin.after").await;
    all_receive(&server, &mut [&mut a, &mut other], "bin").await;
    let (_, h) = api(&server, "history", json!({"channel": "bin"})).await;
    assert_eq!(h["offset"], 1, "{h}");
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_with_1007_and_others_keep_receiving() {
    let server = start().await;
    let mut a = Raw::connect(&server, None).await;
    subscribe(&mut a, "utf").await;
    let mut other = Raw::connect(&server, None).await;
    subscribe(&mut other, "utf").await;

    // tokio-websockets does not check what it sends: the frame goes out as is.
    a.ws.send(Message::text(Bytes::from_static(
        b"{\"id\":1,\"op\":\"subscribe\",\"channel\":\"\xff\"}",
    )))
    .await
    .expect("send");
    let events = a.events_until_closed(10, T).await;
    // The WebSocket layer rejects the frame (RFC 6455 §8.1) and closes with
    // 1007 itself; no reply or push comes before it.
    assert!(msgs(&events).is_empty(), "{events:?}");
    assert!(
        matches!(events.last(), Some(Event::Close(Some(1007), _))),
        "closed with 1007 (invalid frame payload data): {events:?}"
    );

    wait_connections(&server, 1).await;
    all_receive(&server, &mut [&mut other], "utf").await;
    let (_, body) = api(&server, "channels", json!({"prefix": "utf"})).await;
    assert_eq!(
        body["channels"],
        json!([{"channel": "utf", "subscribers": 1}]),
        "the closed connection's subscription is gone"
    );
}

/// A WebSocket client at the frame level, to send what a well-behaved library
/// would not and to see every frame the server sends, even while writing.
mod frames {
    use std::net::SocketAddr;

    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    pub const TEXT: u8 = 1;

    /// What the server sent.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Got {
        /// One JSON message of a text frame.
        Msg(Value),
        /// A close frame and its code.
        Close(Option<u16>),
    }

    /// Opens `/v1/ws` with a hand-written upgrade.
    pub async fn open(addr: SocketAddr) -> (Reader, OwnedWriteHalf) {
        let mut s = TcpStream::connect(addr).await.expect("tcp connect");
        let req = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("write upgrade");
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(buf.len() < 16 * 1024, "no end of the upgrade answer");
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await.expect("read upgrade answer");
            assert!(n > 0, "closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let (rd, wr) = s.into_split();
        let reader = Reader {
            rd,
            buf: buf[end..].to_vec(),
            partial: Vec::new(),
        };
        (reader, wr)
    }

    /// A masked client frame with FIN set.
    pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        fragment(opcode, payload, true)
    }

    /// A masked client frame, the last of its message when `fin`.
    pub fn fragment(opcode: u8, payload: &[u8], fin: bool) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [0x5a, 0x13, 0xc7, 0x2e];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// The read half: parses the server's (unmasked) frames.
    pub struct Reader {
        rd: OwnedReadHalf,
        buf: Vec<u8>,
        partial: Vec<u8>,
    }

    /// One complete frame at the start of `buf`: (fin, opcode, payload, bytes used).
    fn parse(buf: &[u8]) -> Option<(bool, u8, Vec<u8>, usize)> {
        if buf.len() < 2 {
            return None;
        }
        assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
        let (len, mut at) = match buf[1] & 0x7f {
            126 => (
                u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
                4,
            ),
            127 => (
                u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let payload = buf.get(at..at + len)?.to_vec();
        at += len;
        Some((buf[0] & 0x80 != 0, buf[0] & 0x0f, payload, at))
    }

    impl Reader {
        /// Everything until the stream ends (EOF, reset, or after a close
        /// frame): the messages and close frames seen, and how it ended.
        pub async fn until_end(&mut self, max_frames: usize) -> (Vec<Got>, String) {
            let mut got = Vec::new();
            for _ in 0..max_frames {
                while let Some((fin, opcode, payload, used)) = parse(&self.buf) {
                    self.buf.drain(..used);
                    match opcode {
                        0 | 1 => {
                            self.partial.extend_from_slice(&payload);
                            if fin {
                                let text = String::from_utf8(std::mem::take(&mut self.partial))
                                    .expect("the server sends UTF-8");
                                for line in text.split('\n').filter(|l| !l.is_empty()) {
                                    got.push(Got::Msg(serde_json::from_str(line).expect("JSON")));
                                }
                            }
                        }
                        8 => {
                            let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                            got.push(Got::Close(code));
                            return (got, "close frame".into());
                        }
                        _ => {}
                    }
                }
                let mut chunk = vec![0u8; 64 * 1024];
                let read = tokio::time::timeout(super::T, self.rd.read(&mut chunk))
                    .await
                    .unwrap_or_else(|_| panic!("nothing within {:?}; got {got:?}", super::T));
                match read {
                    Ok(0) => return (got, "eof".into()),
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    Err(e) => return (got, format!("error: {e}")),
                }
            }
            panic!("no end after {max_frames} reads: {got:?}")
        }

        /// Messages until one with `id`, which is returned.
        pub async fn reply(&mut self, id: u32) -> Value {
            for _ in 0..100 {
                while let Some((_, opcode, payload, used)) = parse(&self.buf) {
                    self.buf.drain(..used);
                    assert_eq!(opcode, 1, "a text frame expected");
                    let text = String::from_utf8(payload).expect("UTF-8");
                    for line in text.split('\n').filter(|l| !l.is_empty()) {
                        let v: Value = serde_json::from_str(line).expect("JSON");
                        if v["id"] == id {
                            return v;
                        }
                    }
                }
                let mut chunk = vec![0u8; 64 * 1024];
                let n = tokio::time::timeout(super::T, self.rd.read(&mut chunk))
                    .await
                    .expect("a reply in time")
                    .expect("read");
                assert!(n > 0, "closed while waiting for reply {id}");
                self.buf.extend_from_slice(&chunk[..n]);
            }
            panic!("no reply {id}")
        }
    }
}

#[tokio::test]
async fn a_10_mib_frame_closes_the_connection_and_others_keep_receiving() {
    use tokio::io::AsyncWriteExt;

    let server = start().await;
    let max_frame = server.node().config.client.max_frame_size;
    let size = 10 * 1024 * 1024;
    assert!(size > max_frame);
    let (mut rd, mut wr) = frames::open(server.local_addr()).await;
    for (id, cmd) in [
        (1, json!({"id": 1, "op": "connect"})),
        (2, json!({"id": 2, "op": "subscribe", "channel": "huge"})),
    ] {
        wr.write_all(&frames::frame(frames::TEXT, cmd.to_string().as_bytes()))
            .await
            .expect("write");
        let r = rd.reply(id).await;
        assert!(r.get("ok").is_some(), "{r}");
    }
    let mut other = Raw::connect(&server, None).await;
    subscribe(&mut other, "huge").await;

    // One 10 MiB frame, written while reading what the server answers. The
    // server may stop reading and reset the socket: the write may fail.
    let data = "x".repeat(size);
    let cmd = json!({"id": 3, "op": "publish", "channel": "huge", "data": data}).to_string();
    let writing = tokio::spawn(async move {
        let r = wr
            .write_all(&frames::frame(frames::TEXT, cmd.as_bytes()))
            .await;
        (wr, r)
    });
    let (got, end) = rd.until_end(10_000).await;
    let (_wr, written) = tokio::time::timeout(Duration::from_secs(30), writing)
        .await
        .expect("the write ends")
        .expect("writer");
    // No reply to the publish; the frame is refused as soon as its header is
    // read: tokio-websockets answers with a close frame 1009 (message too
    // big). A `disconnect` push, had one been sent first, must say 3500.
    let (last, before) = got.split_last().unwrap_or_else(|| {
        panic!("the server sent nothing before the end ({end}, write: {written:?})")
    });
    for g in before {
        match g {
            frames::Got::Msg(m) => {
                assert_eq!(
                    m["push"], "disconnect",
                    "only a disconnect may come: {got:?}"
                );
                assert_eq!(m["code"], 3500, "{got:?}");
            }
            other => panic!("unexpected {other:?} in {got:?}"),
        }
    }
    assert_eq!(
        last,
        &frames::Got::Close(Some(1009)),
        "closed as too big: {got:?} ({end}, write: {written:?})"
    );

    // The other subscriber keeps receiving what is published after.
    wait_connections(&server, 1).await;
    for _ in 0..3 {
        all_receive(&server, &mut [&mut other], "huge").await;
    }
    let (_, h) = api(&server, "history", json!({"channel": "huge"})).await;
    assert_eq!(h["offset"], 3, "the 10 MiB publish was not accepted: {h}");
    // And the server still accepts new connections.
    let mut again = Raw::connect(&server, None).await;
    subscribe(&mut again, "huge").await;
    all_receive(&server, &mut [&mut other, &mut again], "huge").await;
}

#[tokio::test]
async fn a_message_fragmented_past_the_frame_limit_closes_like_one_big_frame() {
    use tokio::io::AsyncWriteExt;

    let mut config = config();
    config.client.max_frame_size = 64 * 1024;
    let server = start_with(config).await;
    let (mut rd, mut wr) = frames::open(server.local_addr()).await;
    wr.write_all(&frames::frame(frames::TEXT, br#"{"id":1,"op":"connect"}"#))
        .await
        .expect("write");
    assert!(rd.reply(1).await.get("ok").is_some());
    // Five fragments of 20 KiB: each is within the limit, the message is not.
    let chunk = vec![b'x'; 20 * 1024];
    for i in 0..5u8 {
        let opcode = if i == 0 { frames::TEXT } else { 0 };
        // The server may close before the last fragments arrive.
        if wr
            .write_all(&frames::fragment(opcode, &chunk, i == 4))
            .await
            .is_err()
        {
            break;
        }
    }
    let (got, end) = rd.until_end(100).await;
    assert_eq!(
        got,
        vec![frames::Got::Close(Some(1009))],
        "the same close as one oversized frame, with no push ({end})"
    );
}

#[tokio::test]
async fn data_nested_deeper_than_the_limit_is_refused_by_clients_and_the_api() {
    let server = start().await;
    let mut raw = Raw::connect(&server, None).await;
    subscribe(&mut raw, "deep").await;
    // 10,000 levels fit in 20 KB, far below the size limit.
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    let cmd = format!(r#"{{"id":7,"op":"publish","channel":"deep","data":{deep}}}"#);
    raw.send_text(&cmd).await;
    let r = next_msg(&mut raw).await;
    assert_error(&r, 104, Some(7));
    let server = &server;
    let publish = |data: String| async move {
        let body = format!(r#"{{"channel":"deep","data":{data}}}"#);
        let auth = format!("Bearer {API_KEY}");
        let (status, reply) = api_raw(server, "publish", Some(&auth), &[], body).await;
        (
            status,
            serde_json::from_str::<Value>(&reply).expect("a JSON answer"),
        )
    };
    let (status, reply) = publish(deep).await;
    assert_eq!(status, 413, "{reply}");
    assert_eq!(reply["error"]["code"], 104, "{reply}");
    // 64 levels (the default limit) pass; nothing deeper was stored.
    let (status, reply) = publish("[".repeat(64) + &"]".repeat(64)).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["offset"], 1, "the deep ones were not stored: {reply}");
    let m = next_pub(&mut raw).await;
    assert_eq!(m["offset"], 1);
}

#[tokio::test]
async fn recovery_replies_are_bounded_in_bytes() {
    let mut config = config();
    config.client.recovery_max_bytes = 64 * 1024;
    let server = start_with(config).await;
    let blob = "x".repeat(2000);
    // Ten channels of ten 2 KB publications: about 21 KB to recover each.
    let mut epochs = Vec::new();
    for c in 0..10 {
        let channel = format!("many{c}");
        let (_, first) = api(
            &server,
            "publish",
            json!({"channel": channel, "data": blob}),
        )
        .await;
        epochs.push(first["epoch"].as_str().unwrap().to_string());
        for _ in 1..10 {
            publish(&server, &channel, json!(blob)).await;
        }
    }
    let since = |c: usize| json!({"offset": 0, "epoch": epochs[c]});
    let subscribe: Vec<Value> = (0..10)
        .map(|c| json!({"channel": format!("many{c}"), "since": since(c)}))
        .collect();
    let mut raw = Raw::open(&server).await;
    raw.send_text(json!({"id": 1, "op": "connect", "subscribe": subscribe}).to_string())
        .await;
    let reply = raw.reply(1).await;
    assert!(
        reply.to_string().len() < 70 * 1024,
        "the connect reply stays within recovery_max_bytes: {} bytes",
        reply.to_string().len()
    );
    let results = reply["ok"]["subscribed"].as_array().expect("results");
    let (mut recovered, mut deferred) = (0, Vec::new());
    for (c, r) in results.iter().enumerate() {
        if r["ok"]["recovered"] == true {
            assert_eq!(r["ok"]["publications"].as_array().unwrap().len(), 10);
            recovered += 1;
        } else {
            // Past the budget: a temporary 104, to subscribe on its own.
            assert_eq!(r["error"]["code"], 104, "{r}");
            assert_eq!(r["error"]["temporary"], true, "{r}");
            deferred.push(c);
        }
    }
    assert_eq!(recovered, 3, "as many as fit in 64 KiB");
    // Each deferred channel recovers in full with its own subscribe.
    for c in deferred {
        let r = raw
            .call(json!({"op": "subscribe", "channel": format!("many{c}"), "since": since(c)}))
            .await;
        assert_eq!(r["ok"]["recovered"], true, "{r}");
        assert_eq!(r["ok"]["publications"].as_array().unwrap().len(), 10);
    }
    // One channel with more than the budget: recovered false (109 strict),
    // and history answers it in pages.
    for _ in 0..30 {
        publish(&server, "many0", json!(blob)).await;
    }
    let mut other = Raw::connect(&server, None).await;
    let r = other
        .call(json!({"op": "subscribe", "channel": "many0", "since": since(0)}))
        .await;
    assert_eq!(r["ok"]["recovered"], false, "{r}");
    let r = other
        .call(json!({"op": "subscribe", "channel": "many1", "since": since(1), "strict": true}))
        .await;
    assert_eq!(r["ok"]["recovered"], true, "within the budget: {r}");
    let mut after = 0;
    let mut pages = 0;
    while after < 40 {
        let r = other
            .call(json!({"op": "history", "channel": "many0", "since": {"offset": after, "epoch": epochs[0]}}))
            .await;
        let page = r["ok"]["publications"].as_array().expect("a page");
        assert!(
            !page.is_empty() && page.len() < 40,
            "a bounded page: {}",
            page.len()
        );
        for p in page {
            after += 1;
            assert_eq!(p["offset"], after, "pages follow on without gaps");
        }
        pages += 1;
    }
    assert!(pages >= 2, "{pages}");
}

#[tokio::test]
async fn a_request_body_that_trickles_is_answered_within_the_body_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = config();
    config.client.body_timeout = Duration::from_secs(1);
    let server = start_with(config).await;
    let mut tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let head = format!(
        "POST /v1/api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"channel\""
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // The rest of the body never comes.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "answered, not held");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
}

/// A config for load cases: pings out of the way, namespace `slow` with a long history.
fn load_config() -> Config {
    let mut c = config();
    c.client.ping_interval = Duration::from_secs(600);
    c.client.pong_timeout = Duration::from_secs(600);
    c.namespaces.insert(
        "slow".into(),
        NamespaceOptions {
            history_size: 100_000,
            client_publish: ClientPublish::Any,
            anonymous: true,
            ..Default::default()
        },
    );
    c
}

/// Reads publications of `channel` until offset `last`; asserts they are 1..=last, in order.
async fn receive_in_order(mut raw: Raw, channel: &str, last: u64) -> Raw {
    let mut want = 1;
    while want <= last {
        let m = next_msg(&mut raw).await;
        assert_eq!(m["push"], "pub", "only publications expected: {m}");
        assert_eq!(m["channel"], channel);
        assert_eq!(
            m["offset"], want,
            "publications in order, none lost or doubled"
        );
        want += 1;
    }
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_10000_subscribes_hits_the_limit_and_others_keep_receiving() {
    const N: u32 = 10_000;
    const PUBS: u64 = 300;
    let mut config = load_config();
    config.client.max_subscriptions = 1000;
    config.validate().expect("a valid config");
    let server = start_with(config).await;
    let max = server.node().config.client.max_subscriptions as u32;

    // A bystander receives publications in order during the burst.
    let mut watcher = Raw::connect(&server, None).await;
    subscribe(&mut watcher, "watch").await;
    let watching = tokio::spawn(receive_in_order(watcher, "watch", PUBS));
    let addr = server.local_addr();
    let publishing = tokio::spawn(async move {
        let client = reqwest::Client::new();
        for i in 1..=PUBS {
            let res = client
                .post(format!("http://{addr}/v1/api/publish"))
                .bearer_auth(API_KEY)
                .json(&json!({"channel": "watch", "data": i}))
                .send()
                .await
                .expect("api publish");
            assert_eq!(res.status().as_u16(), 200);
        }
    });

    let mut burst = Raw::connect(&server, None).await;
    let frames: Vec<String> = (0..4)
        .map(|f| {
            let per = N / 4;
            (f * per + 1..=(f + 1) * per)
                .map(|id| {
                    json!({"id": id, "op": "subscribe", "channel": format!("burst.{id}")})
                        .to_string()
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    // Send and read at once, as a client that keeps up with its replies.
    let (mut tx, mut rx) = (&mut burst.ws).split();
    let send = async {
        for f in frames {
            tx.send(Message::text(f)).await.expect("send a frame");
        }
    };
    let receive = async {
        let mut answers: HashMap<u64, Value> = HashMap::new();
        while answers.len() < N as usize {
            let msg = tokio::time::timeout(T, rx.next())
                .await
                .unwrap_or_else(|_| panic!("no answer within {T:?} after {}", answers.len()))
                .expect("connection open")
                .expect("read");
            let Some(text) = msg.as_text() else {
                panic!("unexpected frame {msg:?} after {} answers", answers.len());
            };
            for line in text.split('\n') {
                let m: Value = serde_json::from_str(line).expect("JSON");
                let id = m["id"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("only replies expected, got {m}"));
                assert!(answers.insert(id, m).is_none(), "id {id} answered twice");
            }
        }
        answers
    };
    let (_, answers) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(send, receive)
    })
    .await
    .expect("the burst is answered");
    drop((tx, rx));

    assert_eq!(answers.len(), N as usize);
    let mut ok = 0;
    for id in 1..=N {
        let m = &answers[&u64::from(id)];
        if id <= max {
            assert!(m.get("ok").is_some(), "the first {max} succeed: {m}");
            ok += 1;
        } else {
            assert_error(m, 104, Some(id));
        }
    }
    assert_eq!(ok, max);

    tokio::time::timeout(Duration::from_secs(60), publishing)
        .await
        .expect("publishing ends")
        .expect("publisher");
    let mut watcher = tokio::time::timeout(Duration::from_secs(60), watching)
        .await
        .expect("the watcher receives everything")
        .expect("watcher");

    let (_, info) = api(&server, "info", json!({})).await;
    let node = &info["nodes"][0];
    assert_eq!(node["subscriptions"], u64::from(max) + 1, "{info}");
    assert_eq!(node["channels"], u64::from(max) + 1, "{info}");

    // The bursting connection is still usable; unsubscribing makes room again.
    let r = burst
        .call(json!({"op": "subscribe", "channel": "one.more"}))
        .await;
    assert_eq!(error_code(&r), 104);
    let r = burst
        .call(json!({"op": "unsubscribe", "channel": "burst.1"}))
        .await;
    assert_eq!(r["ok"], json!({}));
    subscribe(&mut burst, "one.more").await;
    all_receive(&server, &mut [&mut burst], "one.more").await;
    all_receive(&server, &mut [&mut watcher], "watch").await;
}

/// What the slow-consumer scenario leaves behind.
struct SlowOutcome {
    server: Server,
    /// The last offset published.
    last: u64,
    /// The last offset the slow client read before its `disconnect`.
    slow_last: u64,
    epoch: String,
}

const SLOW_CHANNEL: &str = "slow:feed";

/// One subscriber stops reading while another reads and a publisher writes
/// ~4 KiB publications until the server has cut the slow one off.
async fn slow_consumer_scenario() -> SlowOutcome {
    const MAX_PUBS: u64 = 20_000;
    const BATCH: u64 = 4;
    const AFTER_CUT: u64 = 200;
    let mut config = load_config();
    config.client.outbox_bytes = 64 * 1024;
    config.client.recovery_max = MAX_PUBS as usize;
    // One publication may take at most half of an outbox.
    let half = config.client.outbox_bytes / 2;
    config.channels.max_message_size = half;
    for ns in config.namespaces.values_mut() {
        ns.max_message_size = half;
    }
    config.validate().expect("a valid config");
    let server = start_with(config).await;

    let mut slow = Raw::connect(&server, None).await;
    let r = slow
        .call(json!({"op": "subscribe", "channel": SLOW_CHANNEL}))
        .await;
    let epoch = r["ok"]["epoch"].as_str().expect("an epoch").to_string();
    let mut healthy = Raw::connect(&server, None).await;
    subscribe(&mut healthy, SLOW_CHANNEL).await;

    // The healthy subscriber reads until the end marker, and tells the
    // publisher how far it got: "healthy" means keeping up, which a loaded
    // test machine must not be able to take away by starving its task.
    let (read_tx, mut read_rx) = tokio::sync::watch::channel(0u64);
    let healthy_task = tokio::spawn(async move {
        let mut offsets = Vec::new();
        loop {
            let m = next_msg(&mut healthy).await;
            assert_eq!(
                m["push"], "pub",
                "the healthy subscriber only gets publications: {m}"
            );
            offsets.push(m["offset"].as_u64().unwrap());
            read_tx.send_replace(offsets.len() as u64);
            if m["data"] == "end" {
                return (healthy, offsets);
            }
        }
    });

    // Publish (pipelined, a few per frame) until the slow one is cut off, and
    // some more. The server gives a cut-off connection a grace period to take
    // what is already written before it drops the socket, so the slow client
    // starts reading again as soon as the cut is seen, after each batch.
    let mut publisher = Raw::connect(&server, None).await;
    let filler = "x".repeat(4000);
    let mut published = 0u64;
    let mut cut_at = None;
    let mut slow = Some(slow);
    let mut slow_reader = None;
    while published < MAX_PUBS {
        // At most two batches (32 KiB) ahead of the healthy reader: half its outbox.
        tokio::time::timeout(
            Duration::from_secs(30),
            read_rx.wait_for(|&read| read + 2 * BATCH >= published),
        )
        .await
        .expect("the healthy subscriber keeps reading")
        .expect("the healthy subscriber is alive");
        let mut ids = Vec::new();
        for _ in 0..BATCH {
            published += 1;
            let id = publisher
                .send(json!({"op": "publish", "channel": SLOW_CHANNEL, "data": {"n": published, "fill": filler}}))
                .await;
            ids.push(id);
        }
        for (i, id) in ids.into_iter().enumerate() {
            let r = publisher.reply(id).await;
            let want = published - BATCH + 1 + i as u64;
            assert_eq!(r["ok"]["offset"], want, "{r}");
        }
        if cut_at.is_none() && server.node().metrics.slow_consumer_disconnects.get() >= 1 {
            cut_at = Some(published);
            let mut slow = slow.take().expect("the slow client");
            slow_reader = Some(tokio::spawn(async move {
                slow.events_until_closed(MAX_PUBS as usize + 10, Duration::from_secs(20))
                    .await
            }));
        }
        if cut_at.is_some_and(|c| published >= c + AFTER_CUT) {
            break;
        }
    }
    let Some(slow_reader) = slow_reader else {
        panic!("{published} publications of 4 KiB never cut off a client that does not read");
    };
    let r = publisher
        .call(json!({"op": "publish", "channel": SLOW_CHANNEL, "data": "end"}))
        .await;
    let last = r["ok"]["offset"].as_u64().expect("offset");
    assert_eq!(last, published + 1);

    // The healthy one got every offset once, in order.
    let (_healthy, offsets) = tokio::time::timeout(Duration::from_secs(120), healthy_task)
        .await
        .expect("the healthy subscriber gets everything")
        .expect("healthy task");
    let want: Vec<u64> = (1..=last).collect();
    assert!(
        offsets == want,
        "healthy: {} offsets, not 1..={last} in order",
        offsets.len()
    );

    // The slow one, reading again: an unbroken prefix of publications, then
    // 3002, then the close.
    let events = tokio::time::timeout(Duration::from_secs(120), slow_reader)
        .await
        .expect("the slow client's connection ends")
        .expect("slow reader");
    let m = msgs(&events);
    let (disconnect, pubs) = m.split_last().expect("messages before the close");
    assert_eq!(disconnect["push"], "disconnect", "{disconnect}");
    assert_eq!(disconnect["code"], 3002, "{disconnect}");
    assert_eq!(disconnect["reconnect"], true, "{disconnect}");
    let mut slow_last = 0;
    for p in pubs {
        assert_eq!(p["push"], "pub", "{p}");
        slow_last += 1;
        assert_eq!(p["offset"], slow_last, "no gap before the cut");
    }
    assert!(slow_last < last, "the slow client missed publications");
    assert!(
        matches!(events.last(), Some(Event::Close(Some(3002), _))),
        "closed with 3002: {:?}",
        events.last()
    );
    let cut = metric(&server, "tidings_slow_consumer_disconnects_total")
        .await
        .expect("the metric exists");
    assert!(cut >= 1.0, "{cut}");
    SlowOutcome {
        server,
        last,
        slow_last,
        epoch,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_cut_off_with_3002_and_others_receive_everything() {
    let outcome = slow_consumer_scenario().await;
    assert!(outcome.slow_last < outcome.last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_slow_consumer_recovers_what_it_missed() {
    let SlowOutcome {
        server,
        last,
        slow_last,
        epoch,
    } = slow_consumer_scenario().await;
    let mut back = Raw::connect(&server, None).await;
    let id = back
        .send(json!({"op": "subscribe", "channel": SLOW_CHANNEL, "since": {"offset": slow_last, "epoch": epoch}}))
        .await;
    let reply = loop {
        match back.next_event(Duration::from_secs(20)).await {
            Some(Event::Msg(m)) if m["id"] == id => break m,
            Some(Event::Msg(m)) if m["push"] == "ping" => continue,
            other => panic!(
                "expected the subscribe reply recovering {} publications, got {other:?}",
                last - slow_last
            ),
        }
    };
    assert_eq!(
        reply["ok"]["recovered"], true,
        "{}",
        reply["ok"]["recovered"]
    );
    assert_eq!(reply["ok"]["offset"], last);
    let got: Vec<u64> = reply["ok"]["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = (slow_last + 1..=last).collect();
    assert!(
        got == want,
        "recovered {} publications, want {}",
        got.len(),
        want.len()
    );
    // And it is live again.
    let next = publish(&server, SLOW_CHANNEL, json!("live")).await;
    let p = next_pub(&mut back).await;
    assert_eq!(p["offset"], next);
}
