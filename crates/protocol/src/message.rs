//! Server → client messages: replies and pushes, their encoders and decoder.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codes::{DisconnectCode, ErrorCode};
use crate::command::DecodeError;

/// A channel's stream position: the top offset and the epoch of its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Offset of the newest publication (0 when there is none).
    pub offset: u64,
    /// Names this incarnation of the channel's history.
    pub epoch: String,
}

/// Who published, when a client did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClientInfo {
    /// Connection id.
    pub client: String,
    /// User id (empty for anonymous).
    pub user: String,
    /// Connection info from the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<serde_json::Value>))]
    pub info: Option<Box<RawValue>>,
}

/// One publication as history stores it and replies carry it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Publication {
    /// Offset in the channel (absent in ephemeral channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Opaque JSON payload.
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub data: Box<RawValue>,
    /// The publishing client, if a client published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<ClientInfo>,
    /// Free-form tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// What it is the latest value of within its channel (a ticker's
    /// symbol, a driver's id): in `latest` and conflating delivery, a
    /// newer publication with the same key replaces a queued one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Its priority on the way to subscribers, when the publisher gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<crate::Priority>,
    /// Server time of the publish, milliseconds since the Unix epoch.
    #[serde(default)]
    pub time: u64,
    /// The channel's whole state (a snapshot): kept beyond history
    /// trimming, and given to subscribers that cannot recover instead of
    /// `recovered: false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snapshot: bool,
}

impl Publication {
    /// About how many bytes it takes as JSON, without encoding it: its
    /// variable parts exactly, the fixed ones (field names, offset, time)
    /// bounded.
    pub fn approx_size(&self) -> usize {
        const FIXED: usize = 96;
        let info = self.info.as_ref().map_or(0, |i| {
            i.client.len() + i.user.len() + i.info.as_ref().map_or(0, |x| x.get().len()) + 48
        });
        let tags = self.tags.as_ref().map_or(0, |t| {
            t.iter().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>()
        });
        FIXED + self.data.get().len() + info + tags
    }
}

/// The body of an error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Numeric code (see [`ErrorCode`]).
    pub code: u16,
    /// Human-readable message.
    pub message: String,
    /// Whether the same command may succeed later.
    #[serde(default)]
    pub temporary: bool,
}

impl ErrorBody {
    /// An error body for `code` with a specific message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code.code(),
            message: message.into(),
            temporary: code.temporary(),
        }
    }
}

/// The `disconnect` push: sent just before the server closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    /// Close code (3000–3999).
    pub code: u16,
    /// Why.
    pub reason: String,
    /// Whether the client should come back.
    pub reconnect: bool,
    /// Wait at least this long before reconnecting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

impl Disconnect {
    /// A disconnect for `code` with its default reason.
    pub fn new(code: DisconnectCode, delay_ms: Option<u64>) -> Self {
        Self {
            code: code.0,
            reason: code.reason().into(),
            reconnect: code.reconnect(),
            delay_ms,
        }
    }
}

/// A reply to a command.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The command's id.
    pub id: u32,
    /// The `ok` body (raw JSON, decode it by the command) or the error.
    pub result: Result<Box<RawValue>, ErrorBody>,
}

/// A push: a message the server sends unasked.
#[derive(Debug, Clone)]
pub enum Push {
    /// A publication in a subscribed channel.
    Pub {
        /// Channel name.
        channel: String,
        /// Epoch of the channel's history, when it has one.
        epoch: Option<String>,
        /// The publication (its `time` is 0 unless the namespace pushes it).
        publication: Publication,
        /// The channel's pushes may skip values (`delivery = "latest"`,
        /// `slow_consumer = "conflate"`): an offset jump is not a loss.
        latest: bool,
        /// In subscriptions with `delta: "fossil"`, `data` is a string:
        /// `Some(true)` a Fossil delta against the previous payload's text,
        /// `Some(false)` the payload's text. None elsewhere.
        delta: Option<bool>,
    },
    /// A client joined a channel.
    Join {
        /// Channel name.
        channel: String,
        /// Who.
        info: ClientInfo,
    },
    /// A client left a channel.
    Leave {
        /// Channel name.
        channel: String,
        /// Who.
        info: ClientInfo,
    },
    /// The server ended a subscription.
    Unsub {
        /// Channel name.
        channel: String,
        /// Close-style code: 3000–3499 means resubscribe.
        code: u16,
        /// Why.
        reason: String,
    },
    /// Publications of a channel were skipped for a slow connection
    /// (`slow_consumer = "skip"`): recover from history, through `offset`.
    Gap {
        /// Channel name.
        channel: String,
        /// The newest offset skipped.
        offset: Option<u64>,
        /// The channel's epoch.
        epoch: Option<String>,
    },
    /// A member's cursors moved, or a large group's summary.
    Receipt(crate::chat::Receipt),
    /// One of the user's conversations changed.
    Inbox(crate::chat::InboxChange),
    /// The server is about to close the connection.
    Disconnect(Disconnect),
    /// Heartbeat; answer with `{"op":"pong"}`.
    Ping,
}

/// Anything the server sends.
#[derive(Debug, Clone)]
pub enum ServerMessage {
    /// A reply to a command.
    Reply(Reply),
    /// A push.
    Push(Push),
}

#[derive(Serialize)]
struct OkReply<'a, T: Serialize> {
    id: u32,
    ok: &'a T,
}

#[derive(Serialize)]
struct ErrReply<'a> {
    id: u32,
    error: &'a ErrorBody,
}

/// Encodes `{"id": id, "ok": body}`.
pub fn encode_ok_reply<T: Serialize>(id: u32, body: &T) -> Bytes {
    to_bytes(&OkReply { id, ok: body })
}

/// Encodes `{"id": id, "error": {...}}`.
pub fn encode_error_reply(id: u32, error: &ErrorBody) -> Bytes {
    to_bytes(&ErrReply { id, error })
}

#[derive(Serialize)]
#[serde(tag = "push", rename_all = "snake_case")]
enum PushOut<'a> {
    Pub {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        data: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<&'a ClientInfo>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tags: Option<&'a BTreeMap<String, String>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        time: Option<u64>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        latest: bool,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        snapshot: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        delta: Option<bool>,
    },
    Join {
        channel: &'a str,
        #[serde(flatten)]
        info: &'a ClientInfo,
    },
    Leave {
        channel: &'a str,
        #[serde(flatten)]
        info: &'a ClientInfo,
    },
    Unsub {
        channel: &'a str,
        code: u16,
        reason: &'a str,
    },
    Gap {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
    },
    Receipt(&'a crate::chat::Receipt),
    Inbox(&'a crate::chat::InboxChange),
    Disconnect(&'a Disconnect),
    Ping {},
}

/// How a `pub` push is written: beside the publication itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PubStyle {
    /// Carry the publication's server `time`.
    pub time: bool,
    /// Say `"latest": true`: the channel's pushes may skip values, so an
    /// offset jump is not a loss.
    pub latest: bool,
}

/// Encodes a `pub` push without building a [`Push`]: the bytes shared by
/// all subscribers.
pub fn encode_pub(channel: &str, epoch: Option<&str>, p: &Publication, style: PubStyle) -> Bytes {
    encode_pub_as(channel, epoch, p, style, &p.data, None)
}

/// Encodes a `pub` push of `p` carrying `data` instead of its own: in a
/// subscription with deltas, the payload's text (`"delta": false`) or a
/// delta against the previous one (`"delta": true`).
pub fn encode_pub_as(
    channel: &str,
    epoch: Option<&str>,
    p: &Publication,
    style: PubStyle,
    data: &RawValue,
    delta: Option<bool>,
) -> Bytes {
    to_bytes(&PushOut::Pub {
        channel,
        offset: p.offset,
        epoch,
        data,
        info: p.info.as_ref(),
        tags: p.tags.as_ref(),
        key: p.key.as_deref(),
        time: style.time.then_some(p.time),
        latest: style.latest,
        snapshot: p.snapshot,
        delta,
    })
}

/// Encodes a push.
pub fn encode_push(push: &Push) -> Bytes {
    let out = match push {
        Push::Pub {
            channel,
            epoch,
            publication,
            latest,
            delta,
        } => {
            let style = PubStyle {
                time: publication.time > 0,
                latest: *latest,
            };
            let data = &publication.data;
            return encode_pub_as(channel, epoch.as_deref(), publication, style, data, *delta);
        }
        Push::Join { channel, info } => PushOut::Join { channel, info },
        Push::Leave { channel, info } => PushOut::Leave { channel, info },
        Push::Unsub {
            channel,
            code,
            reason,
        } => PushOut::Unsub {
            channel,
            code: *code,
            reason,
        },
        Push::Gap {
            channel,
            offset,
            epoch,
        } => PushOut::Gap {
            channel,
            offset: *offset,
            epoch: epoch.as_deref(),
        },
        Push::Receipt(r) => PushOut::Receipt(r),
        Push::Inbox(i) => PushOut::Inbox(i),
        Push::Disconnect(d) => PushOut::Disconnect(d),
        Push::Ping => PushOut::Ping {},
    };
    to_bytes(&out)
}

fn to_bytes<T: Serialize>(v: &T) -> Bytes {
    // Serializing our own types into a Vec cannot fail: no maps with non-string keys.
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// Deserializes a field that is there, `null` included, as `Some`: `data`
/// may be any JSON value, and `"data": null` is not a missing field.
pub(crate) fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// Every field a server message may carry.
#[derive(Deserialize)]
struct RawServerMessage {
    id: Option<u32>,
    ok: Option<Box<RawValue>>,
    error: Option<ErrorBody>,
    push: Option<String>,
    channel: Option<String>,
    offset: Option<u64>,
    epoch: Option<String>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    info: Option<Box<RawValue>>,
    tags: Option<BTreeMap<String, String>>,
    key: Option<String>,
    time: Option<u64>,
    #[serde(default)]
    latest: bool,
    #[serde(default)]
    snapshot: bool,
    delta: Option<bool>,
    client: Option<String>,
    user: Option<String>,
    code: Option<u16>,
    reason: Option<String>,
    reconnect: Option<bool>,
    delay_ms: Option<u64>,
}

impl ServerMessage {
    /// Decodes one JSON server message. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<ServerMessage, DecodeError> {
        let bad = |message: String| DecodeError { id: None, message };
        let raw: RawServerMessage =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("malformed message: {e}")))?;
        if let Some(push) = raw.push.as_deref() {
            let channel = || {
                raw.channel
                    .clone()
                    .ok_or_else(|| bad("missing `channel`".into()))
            };
            let who = || -> Result<ClientInfo, DecodeError> {
                Ok(ClientInfo {
                    client: raw.client.clone().unwrap_or_default(),
                    user: raw.user.clone().unwrap_or_default(),
                    info: raw.info.clone(),
                })
            };
            let push = match push {
                "pub" => Push::Pub {
                    channel: channel()?,
                    epoch: raw.epoch.clone(),
                    publication: Publication {
                        offset: raw.offset,
                        data: raw
                            .data
                            .clone()
                            .ok_or_else(|| bad("missing `data`".into()))?,
                        info: match &raw.info {
                            Some(i) => Some(
                                serde_json::from_str(i.get())
                                    .map_err(|e| bad(format!("bad `info`: {e}")))?,
                            ),
                            None => None,
                        },
                        tags: raw.tags.clone(),
                        key: raw.key.clone(),
                        priority: None,
                        time: raw.time.unwrap_or(0),
                        snapshot: raw.snapshot,
                    },
                    latest: raw.latest,
                    delta: raw.delta,
                },
                "join" => Push::Join {
                    channel: channel()?,
                    info: who()?,
                },
                "leave" => Push::Leave {
                    channel: channel()?,
                    info: who()?,
                },
                "unsub" => Push::Unsub {
                    channel: channel()?,
                    code: raw.code.unwrap_or(0),
                    reason: raw.reason.clone().unwrap_or_default(),
                },
                "disconnect" => Push::Disconnect(Disconnect {
                    code: raw.code.unwrap_or(0),
                    reason: raw.reason.clone().unwrap_or_default(),
                    reconnect: raw.reconnect.unwrap_or(false),
                    delay_ms: raw.delay_ms,
                }),
                "gap" => Push::Gap {
                    channel: channel()?,
                    offset: raw.offset,
                    epoch: raw.epoch.clone(),
                },
                // Their own types read them (the `push` field is ignored).
                "receipt" => Push::Receipt(
                    serde_json::from_slice(bytes).map_err(|e| bad(format!("bad receipt: {e}")))?,
                ),
                "inbox" => Push::Inbox(
                    serde_json::from_slice(bytes).map_err(|e| bad(format!("bad inbox: {e}")))?,
                ),
                "ping" => Push::Ping,
                other => return Err(bad(format!("unknown push `{}`", other.escape_default()))),
            };
            return Ok(ServerMessage::Push(push));
        }
        let id = raw
            .id
            .ok_or_else(|| bad("neither `push` nor `id`".into()))?;
        let result = match (raw.ok, raw.error) {
            (Some(ok), None) => Ok(ok),
            (None, Some(err)) => Err(err),
            _ => return Err(bad("a reply needs exactly one of `ok` and `error`".into())),
        };
        Ok(ServerMessage::Reply(Reply { id, result }))
    }
}

/// Splits a frame into its `\n`-separated messages and decodes each.
pub fn decode_server_messages(
    frame: &[u8],
) -> impl Iterator<Item = Result<ServerMessage, DecodeError>> + '_ {
    frame
        .split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(ServerMessage::decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn chat_pushes_round_trip() {
        use crate::chat::{Conversation, InboxChange, Receipt};
        let receipt = Push::Receipt(Receipt {
            channel: "dm:a".into(),
            user: Some("bob".into()),
            delivered: 4,
            read: 3,
            members: None,
            counts: None,
        });
        let bytes = encode_push(&receipt);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"push":"receipt","channel":"dm:a","user":"bob","delivered":4,"read":3}"#
        );
        let last: Publication =
            serde_json::from_str(r#"{"offset":5,"data":{"text":"hi"},"time":9}"#).unwrap();
        let conversation = Conversation {
            channel: "dm:a".into(),
            unread: 2,
            read: 3,
            delivered: 4,
            top: 5,
            epoch: "e1".into(),
            last: Some(last),
            active_at: 9,
        };
        for change in [
            InboxChange::Changed(Box::new(conversation)),
            InboxChange::Removed {
                channel: "dm:a".into(),
                removed: true,
            },
        ] {
            let bytes = encode_push(&Push::Inbox(change.clone()));
            match ServerMessage::decode(&bytes).unwrap() {
                ServerMessage::Push(Push::Inbox(back)) => assert_eq!(
                    serde_json::to_string(&back).unwrap(),
                    serde_json::to_string(&change).unwrap()
                ),
                other => panic!("{other:?}"),
            }
        }
        match ServerMessage::decode(&bytes).unwrap() {
            ServerMessage::Push(Push::Receipt(r)) => assert_eq!(r.user.as_deref(), Some("bob")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pub_push_round_trips() {
        let push = Push::Pub {
            channel: "chat:a".into(),
            epoch: Some("e1".into()),
            publication: Publication {
                offset: Some(5),
                data: raw(r#"{"text":"hi"}"#),
                info: Some(ClientInfo {
                    client: "c1".into(),
                    user: "alice".into(),
                    info: None,
                }),
                tags: None,
                key: None,
                priority: None,
                time: 0,
                snapshot: false,
            },
            latest: false,
            delta: None,
        };
        let bytes = encode_push(&push);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"push":"pub","channel":"chat:a","offset":5,"epoch":"e1","data":{"text":"hi"},"info":{"client":"c1","user":"alice"}}"#
        );
        match ServerMessage::decode(&bytes).unwrap() {
            ServerMessage::Push(Push::Pub {
                channel,
                publication,
                ..
            }) => {
                assert_eq!(channel, "chat:a");
                assert_eq!(publication.offset, Some(5));
                assert_eq!(publication.info.unwrap().user, "alice");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn replies_round_trip() {
        let ok = encode_ok_reply(
            3,
            &StreamPosition {
                offset: 1,
                epoch: "e".into(),
            },
        );
        let err = encode_error_reply(4, &ErrorBody::new(ErrorCode::RateLimited, "slow down"));
        let mut frame = ok.to_vec();
        frame.push(b'\n');
        frame.extend_from_slice(&err);
        let msgs: Vec<_> = decode_server_messages(&frame).map(Result::unwrap).collect();
        match (&msgs[0], &msgs[1]) {
            (ServerMessage::Reply(a), ServerMessage::Reply(b)) => {
                assert_eq!(a.id, 3);
                assert!(a.result.is_ok());
                let e = b.result.as_ref().unwrap_err();
                assert_eq!((e.code, e.temporary), (105, true));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn ping_and_disconnect_encode() {
        assert_eq!(&encode_push(&Push::Ping)[..], br#"{"push":"ping"}"#);
        let d = encode_push(&Push::Disconnect(Disconnect::new(
            DisconnectCode::SHUTDOWN,
            Some(1200),
        )));
        assert_eq!(
            std::str::from_utf8(&d).unwrap(),
            r#"{"push":"disconnect","code":3001,"reason":"server shutting down","reconnect":true,"delay_ms":1200}"#
        );
    }
}
