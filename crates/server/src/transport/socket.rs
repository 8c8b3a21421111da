//! The WebSocket libraries under the connection loop: tokio-websockets
//! (zero-copy, small buffers) for every connection, yawc for those that
//! negotiated permessage-deflate (RFC 7692), which tokio-websockets cannot
//! do. Both are seen as a stream of [`Incoming`] and a sink of [`Outgoing`].

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt, future};
use tidings_protocol::{Disconnect, DisconnectCode};
use tokio_websockets::{CloseCode, Config, Limits, Message, ServerBuilder};

/// Frames are built in chunks of this size (tokio-websockets' default is 4 KiB).
const WRITE_FRAME_SIZE: usize = 64 * 1024;

/// A message read from a client.
pub enum Incoming {
    /// A text or binary message.
    Data {
        /// Its payload.
        payload: Bytes,
        /// Whether it came in a binary frame.
        binary: bool,
    },
    /// The client closes.
    Close,
    /// A control frame the library answered itself.
    Skip,
}

/// A message to write.
pub enum Outgoing {
    /// A text or binary message.
    Data {
        /// Its payload.
        payload: Bytes,
        /// Whether to send it as a binary frame.
        binary: bool,
    },
    /// The close frame.
    Close(u16, String),
}

/// Reads fail with the disconnect that answers them.
pub type Read = Result<Incoming, Disconnect>;

/// A message over `max` bytes: close 1009, without a push.
fn too_big(max: usize) -> Disconnect {
    Disconnect {
        code: CloseCode::MESSAGE_TOO_BIG.into(),
        reason: format!("message larger than {max} bytes"),
        reconnect: false,
        delay_ms: None,
    }
}

/// A frame that breaks the protocol: the WebSocket close code for it.
fn bad_frame(code: u16, e: &dyn std::fmt::Display) -> Disconnect {
    Disconnect {
        code,
        reason: format!("bad frame: {e}"),
        reconnect: false,
        delay_ms: None,
    }
}

/// A connection on tokio-websockets.
pub fn plain<S>(
    io: S,
    max_frame: usize,
) -> (
    impl Stream<Item = Read> + Send + Unpin,
    impl Sink<Outgoing, Error = ()> + Send + Unpin,
)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let ws = ServerBuilder::new()
        .limits(Limits::default().max_payload_len(Some(max_frame)))
        .config(Config::default().frame_size(WRITE_FRAME_SIZE))
        .serve(io);
    let (sink, stream) = ws.split();
    let stream = stream.map(|m| match m {
        Ok(m) if m.is_text() || m.is_binary() => Ok(Incoming::Data {
            binary: m.is_binary(),
            payload: m.into_payload().into(),
        }),
        Ok(m) if m.is_close() => Ok(Incoming::Close),
        Ok(_) => Ok(Incoming::Skip),
        // Over `max_frame_size`, as one frame or as fragments (the library
        // closes the first case itself).
        Err(tokio_websockets::Error::PayloadTooLong { max_len, .. }) => Err(too_big(max_len)),
        Err(tokio_websockets::Error::Protocol(e)) => {
            Err(bad_frame(u16::from(CloseCode::PROTOCOL_ERROR), &e))
        }
        Err(e) => Err(Disconnect {
            reason: format!("bad frame: {e}"),
            ..Disconnect::new(DisconnectCode::BAD_REQUEST, None)
        }),
    });
    let sink = sink.sink_map_err(|_| ()).with(|o: Outgoing| {
        future::ok::<_, ()>(match o {
            Outgoing::Data {
                payload,
                binary: false,
            } => Message::text(payload),
            Outgoing::Data { payload, .. } => Message::binary(payload),
            Outgoing::Close(code, reason) => {
                let code = CloseCode::try_from(code).unwrap_or(CloseCode::POLICY_VIOLATION);
                Message::close(Some(code), &reason)
            }
        })
    });
    (stream, sink)
}

/// The permessage-deflate terms agreed with a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deflate {
    /// The `Sec-WebSocket-Extensions` answer.
    pub agreed: String,
    /// Frames at least this large are compressed.
    pub threshold: usize,
    /// Both sides keep their deflate state between messages.
    pub context_takeover: bool,
}

/// Accepts the first permessage-deflate offer in `offers` (the
/// `Sec-WebSocket-Extensions` values) that we can honour. Without context
/// takeover, both sides reset after every message (RFC 7692 lets a server
/// impose that), so a connection holds no deflate state while idle.
pub fn negotiate<'a>(
    offers: impl Iterator<Item = &'a str>,
    threshold: Option<usize>,
    context_takeover: bool,
) -> Option<Deflate> {
    let threshold = threshold?;
    let acceptable = offers.flat_map(|v| v.split(',')).find(|offer| {
        let mut parts = offer.split(';').map(str::trim);
        parts.next() == Some("permessage-deflate")
            && parts.all(|p| match p.split_once('=') {
                None => matches!(
                    p,
                    "server_no_context_takeover"
                        | "client_no_context_takeover"
                        | "client_max_window_bits"
                ),
                // Our compressor uses a 15-bit window: a smaller one is declined.
                Some(("server_max_window_bits", v)) => v.trim_matches('"') == "15",
                Some(("client_max_window_bits", v)) => v
                    .trim_matches('"')
                    .parse::<u8>()
                    .is_ok_and(|b| (8..=15).contains(&b)),
                _ => false,
            })
    })?;
    let asks = |p: &str| acceptable.split(';').any(|x| x.trim() == p);
    let mut agreed = String::from("permessage-deflate");
    if !context_takeover || asks("server_no_context_takeover") {
        agreed.push_str("; server_no_context_takeover");
    }
    if !context_takeover || asks("client_no_context_takeover") {
        agreed.push_str("; client_no_context_takeover");
    }
    Some(Deflate {
        agreed,
        threshold,
        context_takeover,
    })
}

/// Deflate state shared between connections without context takeover,
/// between their messages (about as many as messages compressed at once).
fn pool() -> yawc::DeflatePool {
    static POOL: std::sync::OnceLock<yawc::DeflatePool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| yawc::DeflatePool::new(64)).clone()
}

/// A connection on yawc, with the agreed permessage-deflate.
pub fn deflate<S>(
    io: S,
    max_frame: usize,
    terms: &Deflate,
) -> Result<
    (
        impl Stream<Item = Read> + Send + Unpin + use<S>,
        impl Sink<Outgoing, Error = ()> + Send + Unpin + use<S>,
    ),
    String,
>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut options = yawc::Options::default()
        .with_low_latency_compression()
        .with_compression_threshold(terms.threshold)
        // yawc refuses a payload of exactly its limit; tokio-websockets accepts it.
        .with_limits(max_frame + 1, max_frame + 1)
        .with_utf8()
        .with_read_buffer_capacity(1024)
        .with_write_buffer_capacity(1024);
    if !terms.context_takeover {
        options = options
            .server_no_context_takeover()
            .client_no_context_takeover()
            .with_deflate_pool(pool());
    }
    let ws = yawc::WebSocket::from_stream_with_extensions(
        io,
        yawc::Role::Server,
        Some(&terms.agreed),
        options,
    )
    .map_err(|e| e.to_string())?;
    let (sink, stream) = Yawc(ws).split();
    let stream = stream.map(move |frame| {
        use yawc::frame::OpCode;
        // yawc may have queued its own close frame already (1011 for a
        // payload that does not inflate): ours carries the same codes, and
        // bad data for that case, whichever goes first.
        let frame = frame.map_err(|e| {
            use yawc::WebSocketError as E;
            let code = match &e {
                E::FrameTooLarge => return too_big(max_frame),
                E::InvalidUTF8 | E::IoError(_) => 1007,
                _ => u16::from(CloseCode::PROTOCOL_ERROR),
            };
            bad_frame(code, &e)
        })?;
        Ok(match frame.opcode() {
            OpCode::Text | OpCode::Binary => Incoming::Data {
                binary: frame.opcode() == OpCode::Binary,
                payload: frame.into_payload(),
            },
            OpCode::Close => Incoming::Close,
            _ => Incoming::Skip,
        })
    });
    let sink = sink.sink_map_err(|_| ()).with(|o: Outgoing| {
        future::ok::<_, ()>(match o {
            Outgoing::Data {
                payload,
                binary: false,
            } => yawc::frame::Frame::text(payload),
            Outgoing::Data { payload, .. } => yawc::frame::Frame::binary(payload),
            Outgoing::Close(code, reason) => {
                yawc::frame::Frame::close(yawc::close::CloseCode::from(code), reason)
            }
        })
    });
    Ok((stream, sink))
}

/// yawc's socket with its read errors kept (its own `Stream` ends
/// without saying why), so the connection closes with the right code.
struct Yawc<S>(yawc::WebSocket<S>);

impl<S> Stream for Yawc<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    type Item = Result<yawc::frame::Frame, yawc::WebSocketError>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match self.get_mut().0.poll_next_frame(cx) {
            std::task::Poll::Ready(Err(yawc::WebSocketError::ConnectionClosed)) => {
                std::task::Poll::Ready(None)
            }
            std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl<S> Sink<yawc::frame::Frame> for Yawc<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    type Error = yawc::WebSocketError;

    fn poll_ready(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.get_mut().0.poll_ready_unpin(cx)
    }

    fn start_send(
        self: std::pin::Pin<&mut Self>,
        item: yawc::frame::Frame,
    ) -> Result<(), Self::Error> {
        self.get_mut().0.start_send_unpin(item)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.get_mut().0.poll_flush_unpin(cx)
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.get_mut().0.poll_close_unpin(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_accepted_only_when_honoured() {
        let chrome = "permessage-deflate; client_max_window_bits";
        let d = negotiate([chrome].into_iter(), Some(1024), false).unwrap();
        assert_eq!(
            d.agreed,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let d = negotiate([chrome].into_iter(), Some(1024), true).unwrap();
        assert_eq!(d.agreed, "permessage-deflate");
        // A smaller server window or an unknown parameter: the next offer.
        let offers = "permessage-deflate; server_max_window_bits=10, permessage-deflate; x=1, permessage-deflate; server_no_context_takeover";
        let d = negotiate([offers].into_iter(), Some(1), true).unwrap();
        assert_eq!(d.agreed, "permessage-deflate; server_no_context_takeover");
        assert!(
            negotiate(
                ["permessage-deflate; server_max_window_bits=9"].into_iter(),
                Some(1),
                true
            )
            .is_none()
        );
        assert!(negotiate(["x-webkit-deflate-frame"].into_iter(), Some(1), true).is_none());
        assert!(negotiate([chrome].into_iter(), None, true).is_none());
    }
}
