//! Client → server commands and their decoder.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use thiserror::Error;

/// A position in a channel's stream, as a client gives it in `since`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SinceArg {
    /// The last offset the client has seen.
    pub offset: u64,
    /// The epoch that offset belongs to.
    pub epoch: String,
}

/// One subscription request (the `subscribe` command, or an entry of `connect.subscribe`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubscribeArg {
    /// Channel name.
    pub channel: String,
    /// Resume after this position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<SinceArg>,
    /// Channel token for private channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Fail with 109 instead of answering `recovered: false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    /// Start from the channel's latest snapshot (when it has one) and the
    /// publications after it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snapshot: bool,
    /// Receive publications as deltas against the previous one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaFormat>,
}

/// A delta format a subscription may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeltaFormat {
    /// Fossil's delta format (as Centrifugo's `delta: "fossil"`).
    Fossil,
}

/// A decoded command with the id the reply must echo.
#[derive(Debug, Clone)]
pub struct Command {
    /// Client-chosen id (0 when absent, as for `pong`).
    pub id: u32,
    /// What the client asks.
    pub kind: CommandKind,
}

/// The commands of protocol v1.
#[derive(Debug, Clone)]
pub enum CommandKind {
    /// Authenticate; must come first.
    Connect {
        /// Connection JWT.
        token: Option<String>,
        /// Client name (free text).
        name: Option<String>,
        /// Client version (free text).
        version: Option<String>,
        /// Channels to subscribe at once.
        subscribe: Vec<SubscribeArg>,
    },
    /// Subscribe to a channel.
    Subscribe(SubscribeArg),
    /// Leave a channel.
    Unsubscribe {
        /// Channel name.
        channel: String,
    },
    /// Publish into a channel.
    Publish {
        /// Channel name.
        channel: String,
        /// Opaque JSON payload.
        data: Box<RawValue>,
        /// Dedup key: a retry with the same key publishes nothing new.
        idempotency_key: Option<String>,
        /// Free-form string tags.
        tags: Option<BTreeMap<String, String>>,
        /// What it is the latest value of (see [`crate::Publication::key`]).
        key: Option<String>,
        /// Its lane on the way to subscribers; the namespace's default when absent.
        priority: Option<Priority>,
        /// The channel's whole state: kept beyond history trimming.
        snapshot: bool,
    },
    /// Read a channel's history.
    History {
        /// Channel name.
        channel: String,
        /// Only publications after this position.
        since: Option<SinceArg>,
        /// At most this many publications.
        limit: Option<u32>,
        /// Newest first.
        reverse: bool,
    },
    /// Who is in a channel.
    Presence {
        /// Channel name.
        channel: String,
        /// At most this many entries (a page).
        limit: Option<u32>,
        /// Start after this client id (`next_cursor` of the previous page).
        cursor: Option<String>,
    },
    /// How many clients and users are in a channel.
    PresenceStats {
        /// Channel name.
        channel: String,
    },
    /// When users were last seen.
    LastSeen {
        /// User ids.
        users: Vec<String>,
    },
    /// Renew the connection token, or with `channel` the channel token of
    /// that subscription.
    Refresh {
        /// The new token.
        token: String,
        /// The subscription whose channel token this renews.
        channel: Option<String>,
    },
    /// Move the user's cursors in a members channel.
    Cursor {
        /// Channel name.
        channel: String,
        /// Raise `delivered` to this offset.
        delivered: Option<u64>,
        /// Raise `read` to this offset.
        read: Option<u64>,
    },
    /// A page of the user's conversations.
    Inbox {
        /// At most this many.
        limit: Option<u32>,
        /// `next_cursor` of the previous page.
        cursor: Option<String>,
    },
    /// A page of a members channel's members.
    Members {
        /// Channel name.
        channel: String,
        /// At most this many.
        limit: Option<u32>,
        /// `next_cursor` of the previous page.
        cursor: Option<String>,
    },
    /// The device-key directory.
    Keys(crate::chat::KeysArg),
    /// Answer to a server `ping`.
    Pong,
}

impl CommandKind {
    /// The `op` name on the wire.
    pub fn op(&self) -> &'static str {
        match self {
            CommandKind::Connect { .. } => "connect",
            CommandKind::Subscribe(_) => "subscribe",
            CommandKind::Unsubscribe { .. } => "unsubscribe",
            CommandKind::Publish { .. } => "publish",
            CommandKind::History { .. } => "history",
            CommandKind::Presence { .. } => "presence",
            CommandKind::LastSeen { .. } => "last_seen",
            CommandKind::PresenceStats { .. } => "presence_stats",
            CommandKind::Refresh { .. } => "refresh",
            CommandKind::Cursor { .. } => "cursor",
            CommandKind::Inbox { .. } => "inbox",
            CommandKind::Members { .. } => "members",
            CommandKind::Keys(_) => "keys",
            CommandKind::Pong => "pong",
        }
    }
}

/// How urgently a publication reaches subscribers that have a backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Priority {
    /// Overtakes everything but replies (a goal, an auction's end).
    Critical,
    /// Overtakes `normal` and `low`.
    High,
    /// The default.
    Normal,
    /// Waits behind the others (statistics; `join`, `leave`, typing).
    Low,
}

/// A message that could not be decoded into a command; answered with code 101.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{message}")]
pub struct DecodeError {
    /// The command id, when it could still be read.
    pub id: Option<u32>,
    /// What was wrong, for the client.
    pub message: String,
}

/// Every field any command may carry; the op decides which are required.
#[derive(Deserialize)]
struct RawCommand {
    id: Option<u32>,
    op: Option<String>,
    channel: Option<String>,
    #[serde(default, deserialize_with = "crate::message::present")]
    data: Option<Box<RawValue>>,
    token: Option<String>,
    name: Option<String>,
    version: Option<String>,
    subscribe: Option<Vec<SubscribeArg>>,
    since: Option<SinceArg>,
    idempotency_key: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    key: Option<String>,
    priority: Option<Priority>,
    limit: Option<u32>,
    reverse: Option<bool>,
    cursor: Option<String>,
    users: Option<Vec<String>>,
    #[serde(default)]
    strict: bool,
    #[serde(default)]
    snapshot: bool,
    delta: Option<DeltaFormat>,
    delivered: Option<u64>,
    read: Option<u64>,
    device: Option<String>,
    user: Option<String>,
}

/// Only the id, to echo it when the full decode fails.
#[derive(Deserialize)]
struct IdOnly {
    id: Option<u32>,
}

fn missing(id: Option<u32>, op: &str, field: &str) -> DecodeError {
    DecodeError {
        id,
        message: format!("{op}: missing field `{field}`"),
    }
}

impl Command {
    /// Decodes one JSON command. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        let raw: RawCommand = serde_json::from_slice(bytes).map_err(|e| DecodeError {
            id: serde_json::from_slice::<IdOnly>(bytes)
                .ok()
                .and_then(|i| i.id),
            message: format!("malformed command: {e}"),
        })?;
        let id = raw.id;
        let op = raw.op.as_deref().ok_or_else(|| DecodeError {
            id,
            message: "missing field `op`".into(),
        })?;
        let channel = |c: Option<String>| c.ok_or_else(|| missing(id, op, "channel"));
        let kind = match op {
            "connect" => CommandKind::Connect {
                token: raw.token,
                name: raw.name,
                version: raw.version,
                subscribe: raw.subscribe.unwrap_or_default(),
            },
            "subscribe" => CommandKind::Subscribe(SubscribeArg {
                channel: channel(raw.channel)?,
                since: raw.since,
                token: raw.token,
                strict: raw.strict,
                snapshot: raw.snapshot,
                delta: raw.delta,
            }),
            "unsubscribe" => CommandKind::Unsubscribe {
                channel: channel(raw.channel)?,
            },
            "publish" => CommandKind::Publish {
                channel: channel(raw.channel)?,
                data: raw.data.ok_or_else(|| missing(id, op, "data"))?,
                idempotency_key: raw.idempotency_key,
                tags: raw.tags,
                key: raw.key,
                priority: raw.priority,
                snapshot: raw.snapshot,
            },
            "history" => CommandKind::History {
                channel: channel(raw.channel)?,
                since: raw.since,
                limit: raw.limit,
                reverse: raw.reverse.unwrap_or(false),
            },
            "presence" => CommandKind::Presence {
                channel: channel(raw.channel)?,
                limit: raw.limit,
                cursor: raw.cursor,
            },
            "last_seen" => CommandKind::LastSeen {
                users: raw.users.ok_or_else(|| missing(id, op, "users"))?,
            },
            "presence_stats" => CommandKind::PresenceStats {
                channel: channel(raw.channel)?,
            },
            "refresh" => CommandKind::Refresh {
                token: raw.token.ok_or_else(|| missing(id, op, "token"))?,
                channel: raw.channel,
            },
            "cursor" => CommandKind::Cursor {
                channel: channel(raw.channel)?,
                delivered: raw.delivered,
                read: raw.read,
            },
            "inbox" => CommandKind::Inbox {
                limit: raw.limit,
                cursor: raw.cursor,
            },
            "members" => CommandKind::Members {
                channel: channel(raw.channel)?,
                limit: raw.limit,
                cursor: raw.cursor,
            },
            "keys" => CommandKind::Keys(
                crate::chat::KeysArg::from_fields(
                    raw.device,
                    raw.key,
                    raw.user,
                    raw.users,
                    raw.channel,
                )
                .map_err(|message| DecodeError {
                    id,
                    message: message.into(),
                })?,
            ),
            "pong" => CommandKind::Pong,
            other => {
                return Err(DecodeError {
                    id,
                    message: format!("unknown op `{}`", other.escape_default()),
                });
            }
        };
        if id.is_none() && !matches!(kind, CommandKind::Pong) {
            return Err(DecodeError {
                id: None,
                message: format!("{op}: missing field `id`"),
            });
        }
        Ok(Command {
            id: id.unwrap_or(0),
            kind,
        })
    }
}

/// Splits a frame into its `\n`-separated messages and decodes each.
pub fn decode_commands(frame: &[u8]) -> impl Iterator<Item = Result<Command, DecodeError>> + '_ {
    frame
        .split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(Command::decode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_subscribe_with_since() {
        let c = Command::decode(
            br#"{"id":7,"op":"subscribe","channel":"chat:a","since":{"offset":3,"epoch":"x"}}"#,
        )
        .unwrap();
        assert_eq!(c.id, 7);
        match c.kind {
            CommandKind::Subscribe(s) => {
                assert_eq!(s.channel, "chat:a");
                assert_eq!(s.since.unwrap().offset, 3);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn keeps_data_raw() {
        let c = Command::decode(br#"{"id":1,"op":"publish","channel":"a","data":{"b": [1, 2]}}"#)
            .unwrap();
        match c.kind {
            CommandKind::Publish { data, .. } => assert_eq!(data.get(), r#"{"b": [1, 2]}"#),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn null_data_is_data() {
        let c = Command::decode(br#"{"id":1,"op":"publish","channel":"a","data":null}"#).unwrap();
        match c.kind {
            CommandKind::Publish { data, .. } => assert_eq!(data.get(), "null"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn reports_errors_with_id() {
        let e = Command::decode(br#"{"id":9,"op":"publish","channel":"a"}"#).unwrap_err();
        assert_eq!(e.id, Some(9));
        assert!(e.message.contains("data"), "{}", e.message);
        let e = Command::decode(br#"{"id":4,"op":"fly"}"#).unwrap_err();
        assert_eq!(e.id, Some(4));
        let e = Command::decode(br#"{"id":5,"op":"subscribe","channel":17}"#).unwrap_err();
        assert_eq!(e.id, Some(5));
        assert_eq!(Command::decode(b"not json").unwrap_err().id, None);
        assert!(Command::decode(br#"{"op":"subscribe","channel":"a"}"#).is_err());
        assert!(Command::decode(br#"{"op":"pong"}"#).is_ok());
    }

    #[test]
    fn splits_frames() {
        let frame =
            b"{\"id\":1,\"op\":\"pong\"}\n\n{\"id\":2,\"op\":\"unsubscribe\",\"channel\":\"a\"}\n";
        let cmds: Vec<_> = decode_commands(frame).collect();
        assert_eq!(cmds.len(), 2);
        assert!(cmds.iter().all(Result::is_ok));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for _ in decode_commands(&bytes) {}
        }

        #[test]
        fn decode_never_panics_on_jsonish(s in r#"\{("(id|op|channel|data|since|token)":(1|"x"|null|\{\}|\[\]|"publish"|"subscribe"),?){0,6}\}"#) {
            let _ = Command::decode(s.as_bytes());
        }
    }
}
