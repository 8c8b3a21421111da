//! permessage-deflate (RFC 7692) on a raw socket, frame by frame: the
//! server accepts the offer, compresses pushes over `compress_min_size`,
//! reads compressed commands, and refuses bad compressed frames with the
//! close code RFC 6455 gives them, never with a panic.

mod common;

use std::time::Duration;

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A WebSocket client that writes and reads frames itself.
struct Frames {
    tcp: TcpStream,
    buf: Vec<u8>,
}

struct Frame {
    opcode: u8,
    rsv1: bool,
    payload: Vec<u8>,
}

impl Frames {
    /// Opens `/v1/ws` offering `extensions`; returns the agreed extensions.
    async fn open(
        server: &tidings_server::Server,
        extensions: Option<&str>,
    ) -> (Frames, Option<String>) {
        let mut tcp = TcpStream::connect(server.local_addr()).await.unwrap();
        let mut req = "GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n".to_string();
        if let Some(e) = extensions {
            req.push_str(&format!("Sec-WebSocket-Extensions: {e}\r\n"));
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tcp.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let agreed = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("sec-websocket-extensions: ")
                    .or_else(|| l.strip_prefix("Sec-WebSocket-Extensions: "))
            })
            .map(String::from);
        (
            Frames {
                tcp,
                buf: Vec::new(),
            },
            agreed,
        )
    }

    async fn send(&mut self, opcode: u8, rsv1: bool, payload: &[u8]) {
        let mut f = vec![0x80 | if rsv1 { 0x40 } else { 0 } | opcode];
        let mask = [1u8, 2, 3, 4];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&f).await.unwrap();
    }

    async fn fill(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(10), self.tcp.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return false,
                Ok(Ok(k)) => self.buf.extend_from_slice(&chunk[..k]),
                Err(_) => panic!("no frame within 10 s"),
            }
        }
        true
    }

    /// The next frame; None once the connection closed.
    async fn next(&mut self) -> Option<Frame> {
        if !self.fill(2).await {
            return None;
        }
        let (b0, b1) = (self.buf[0], self.buf[1]);
        let (mut len, mut at) = ((b1 & 0x7f) as usize, 2);
        if len == 126 {
            self.fill(4).await;
            len = u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize;
            at = 4;
        } else if len == 127 {
            self.fill(10).await;
            len = u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize;
            at = 10;
        }
        self.fill(at + len).await;
        let payload = self.buf[at..at + len].to_vec();
        self.buf.drain(..at + len);
        Some(Frame {
            opcode: b0 & 0x0f,
            rsv1: b0 & 0x40 != 0,
            payload,
        })
    }

    /// The next text message, inflated when compressed; the close code if it closes.
    async fn message(&mut self) -> Result<(bool, String), Option<u16>> {
        loop {
            let Some(f) = self.next().await else {
                return Err(None);
            };
            match f.opcode {
                1 | 2 => {
                    let text = if f.rsv1 {
                        inflate(&f.payload)
                    } else {
                        f.payload
                    };
                    return Ok((f.rsv1, String::from_utf8(text).unwrap()));
                }
                8 => return Err(f.payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]))),
                _ => {}
            }
        }
    }

    /// Messages until the one with `id` (pushes skipped), JSON.
    async fn reply(&mut self, id: u64) -> Value {
        loop {
            let (_, text) = self.message().await.expect("open");
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                if v["id"] == id {
                    return v;
                }
            }
        }
    }
}

/// Raw deflate of one message, as permessage-deflate sends it (no trailer).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let input: Vec<u8> = data.iter().copied().chain([0, 0, 0xff, 0xff]).collect();
    let mut out = Vec::with_capacity(data.len() * 20 + 1024);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

fn config() -> tidings_server::config::Config {
    let mut c = common::config();
    c.channels.compress_min_size = 512;
    c
}

#[tokio::test]
async fn pushes_over_the_threshold_come_compressed_and_compressed_commands_are_read() {
    let server = start_with(config()).await;
    let (mut ws, agreed) =
        Frames::open(&server, Some("permessage-deflate; client_max_window_bits")).await;
    assert_eq!(
        agreed.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    // A compressed command.
    ws.send(1, true, &deflate(br#"{"id":1,"op":"connect"}"#))
        .await;
    assert!(ws.reply(1).await["ok"].is_object());
    ws.send(1, false, br#"{"id":2,"op":"subscribe","channel":"big"}"#)
        .await;
    assert!(ws.reply(2).await["ok"].is_object());
    let big: Vec<Value> = (0..200)
        .map(|i| json!({"price": 100 + i, "size": i}))
        .collect();
    api(&server, "publish", json!({"channel": "big", "data": big})).await;
    api(
        &server,
        "publish",
        json!({"channel": "big", "data": "small"}),
    )
    .await;
    let (compressed, text) = ws.message().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(
        compressed && text.len() > 4000,
        "a large push is compressed"
    );
    assert_eq!(v["data"], json!(big));
    let (compressed, text) = ws.message().await.unwrap();
    assert!(!compressed, "a push under the threshold is not: {text}");
    server.shutdown().await;
}

#[tokio::test]
async fn without_an_offer_or_with_deflate_off_nothing_is_agreed() {
    let server = start_with(config()).await;
    let (_, agreed) = Frames::open(&server, None).await;
    assert_eq!(agreed, None);
    server.shutdown().await;
    let mut c = config();
    c.client.deflate = false;
    let server = start_with(c).await;
    let (_, agreed) = Frames::open(&server, Some("permessage-deflate")).await;
    assert_eq!(agreed, None);
    server.shutdown().await;
}

#[tokio::test]
async fn bad_compressed_frames_are_refused_with_their_close_code() {
    let server = start_with(config()).await;
    let offer = Some("permessage-deflate");
    // Compressed text that inflates to invalid UTF-8: 1007.
    let (mut ws, _) = Frames::open(&server, offer).await;
    ws.send(1, true, &deflate(&[0xff, 0xfe, b'{'])).await;
    assert_eq!(ws.message().await.unwrap_err(), Some(1007));
    // A compressed frame on a connection that did not agree to compression: 1002.
    let (mut ws, agreed) = Frames::open(&server, None).await;
    assert!(agreed.is_none());
    ws.send(1, true, &deflate(br#"{"id":1,"op":"connect"}"#))
        .await;
    assert_eq!(ws.message().await.unwrap_err(), Some(1002));
    // Bytes that are not deflate at all: closed with 1011, the code yawc
    // gives a decompression failure before the server can give 1007 (a
    // known shortfall, see docs/protocol.md); the server goes on.
    let (mut ws, _) = Frames::open(&server, offer).await;
    ws.send(1, true, &[0xff; 64]).await;
    assert_eq!(ws.message().await.unwrap_err(), Some(1011));
    // A compression bomb over max_frame_size: 1009.
    let (mut ws, _) = Frames::open(&server, offer).await;
    let bomb = deflate(&vec![b' '; 2 * 1024 * 1024]);
    assert!(bomb.len() < 10_000);
    ws.send(1, true, &bomb).await;
    assert_eq!(ws.message().await.unwrap_err(), Some(1009));
    // Everyone else is fine.
    let mut raw = Raw::connect(&server, None).await;
    let r = raw
        .call(json!({"op": "subscribe", "channel": "still"}))
        .await;
    assert!(r["ok"].is_object());
    server.shutdown().await;
}
