//! A minimal WebSocket client for load: upgrade, read frames in place, send
//! masked text. A full client library allocates per message and would make
//! the bench, not the server, the bottleneck at a million messages a second.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::BenchError;

/// Opcodes the bench handles.
pub const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;

/// Opens a TCP connection from `source` (a loopback address; spreading
/// sources multiplies the ephemeral ports available).
pub async fn tcp(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, BenchError> {
    tcp_with(addr, source, None).await
}

/// Connects like [`tcp`]; with `recv_buffer`, a small receive buffer, so
/// that a slow reader's backlog waits in the server, not in this host's kernel.
pub async fn tcp_with(
    addr: SocketAddr,
    source: Option<IpAddr>,
    recv_buffer: Option<u32>,
) -> Result<TcpStream, BenchError> {
    let socket = TcpSocket::new_v4().map_err(BenchError::Io)?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).map_err(BenchError::Io)?;
    }
    if let Some(ip) = source {
        // Ports of the previous wave's sockets linger in TIME_WAIT.
        socket.set_reuseaddr(true).map_err(BenchError::Io)?;
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(BenchError::Io)?;
    }
    let stream = socket.connect(addr).await.map_err(BenchError::Io)?;
    stream.set_nodelay(true).map_err(BenchError::Io)?;
    Ok(stream)
}

/// Reads an HTTP response head; returns the status line and what followed
/// the head in the same reads.
pub async fn read_head(stream: &mut TcpStream) -> Result<(String, Vec<u8>), BenchError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await.map_err(BenchError::Io)?;
        if n == 0 {
            return Err(BenchError::Protocol(
                "closed before the response head".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Ok((head, buf[end + 4..].to_vec()));
        }
        if buf.len() > 64 * 1024 {
            return Err(BenchError::Protocol("response head over 64 KiB".into()));
        }
    }
}

/// Refuses a response head whose status is not `code`.
pub fn expect_status(head: &str, code: &str) -> Result<(), BenchError> {
    let line = head.lines().next().unwrap_or("");
    if line.split_whitespace().nth(1) == Some(code) {
        Ok(())
    } else {
        Err(BenchError::Refused(line.to_string()))
    }
}

/// One WebSocket connection.
pub struct Ws {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    start: usize,
    /// A fragmented message being assembled.
    partial: Vec<u8>,
    /// Pongs owed to the server, written by `flush`.
    pongs: Vec<u8>,
    mask: [u8; 4],
}

impl Ws {
    /// Upgrades `stream` with a GET of `path`, asking for `protocol` if given.
    pub async fn connect(
        mut stream: TcpStream,
        host: &str,
        path: &str,
        protocol: Option<&str>,
    ) -> Result<Ws, BenchError> {
        let protocol = protocol
            .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(BenchError::Io)?;
        let (head, rest) = read_head(&mut stream).await?;
        expect_status(&head, "101")?;
        Ok(Ws {
            stream,
            buf: rest,
            start: 0,
            partial: Vec::new(),
            pongs: Vec::new(),
            mask: rand::random(),
        })
    }

    /// Sends one masked text frame.
    pub async fn send(&mut self, text: &[u8]) -> Result<(), BenchError> {
        let frame = self.frame(TEXT, text);
        self.stream.write_all(&frame).await.map_err(BenchError::Io)
    }

    /// Sends one masked binary frame.
    pub async fn send_binary(&mut self, payload: &[u8]) -> Result<(), BenchError> {
        let frame = self.frame(BINARY, payload);
        self.stream.write_all(&frame).await.map_err(BenchError::Io)
    }

    fn frame(&self, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(payload.len() + 14);
        f.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&self.mask);
        f.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ self.mask[i % 4]),
        );
        f
    }

    /// Writes the pongs owed since the last read.
    pub async fn flush(&mut self) -> Result<(), BenchError> {
        if self.pongs.is_empty() {
            return Ok(());
        }
        let pongs = std::mem::take(&mut self.pongs);
        self.stream.write_all(&pongs).await.map_err(BenchError::Io)
    }

    /// Reads once from the socket (unless a whole frame is buffered) and calls `on_text` for every complete text
    /// (or binary) message; pings are answered by the next `flush`. Returns
    /// false when the server closed the connection. Cancel-safe: nothing is
    /// written here.
    pub async fn read(&mut self, mut on_text: impl FnMut(&[u8])) -> Result<bool, BenchError> {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 16 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // Spare capacity is read into without zeroing it first.
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        // A frame may already be here: one that came with the upgrade answer
        // (Pusher's connection_established does).
        if parse(&self.buf[self.start..]).is_none() {
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(BenchError::Io)?;
            if n == 0 {
                return Ok(false);
            }
        }
        let mut open = true;
        while let Some((fin, opcode, range)) = parse(&self.buf[self.start..]) {
            let payload = &self.buf[self.start + range.start..self.start + range.end];
            match opcode {
                TEXT | BINARY if fin => on_text(payload),
                TEXT | BINARY => self.partial = payload.to_vec(),
                CONTINUATION => {
                    self.partial.extend_from_slice(payload);
                    if fin {
                        on_text(&self.partial);
                        self.partial.clear();
                    }
                }
                PING => {
                    let pong = self.frame(0xA, payload);
                    self.pongs.extend_from_slice(&pong);
                }
                CLOSE => open = false,
                _ => {}
            }
            self.start += range.end;
        }
        Ok(open)
    }
}

/// Parses one unmasked server frame at the front of `b`: (fin, opcode,
/// payload range). None when incomplete.
fn parse(b: &[u8]) -> Option<(bool, u8, std::ops::Range<usize>)> {
    if b.len() < 2 {
        return None;
    }
    let fin = b[0] & 0x80 != 0;
    let opcode = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let (len, mut at): (usize, usize) = match b[1] & 0x7f {
        126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    // Servers do not mask; skip a mask key if one is there anyway.
    if masked {
        at += 4;
    }
    let end = at.checked_add(len)?;
    (b.len() >= end).then_some((fin, opcode, at..end))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_lengths_and_waits_for_more() {
        assert_eq!(parse(&[0x81, 2, b'h', b'i']), Some((true, 1, 2..4)));
        assert_eq!(parse(&[0x81, 3, b'h', b'i']), None);
        let mut long = vec![0x81, 126, 1, 0];
        long.extend(vec![b'x'; 256]);
        assert_eq!(parse(&long), Some((true, 1, 4..260)));
        assert_eq!(parse(&[0x81, 127, 0xff]), None);
        assert_eq!(
            parse(&[0x81, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }
}
