//! Client → server command encoding.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;
use tidings_protocol::{DeltaFormat, Priority, SinceArg, SubscribeArg};

/// A command's body; the `op` tag and the fields as PROTOCOL.md names them.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Op {
    Connect {
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        subscribe: Vec<SubscribeArg>,
    },
    Subscribe {
        channel: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<SinceArg>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        snapshot: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        delta: Option<DeltaFormat>,
    },
    Unsubscribe {
        channel: String,
    },
    Publish {
        channel: String,
        data: Box<RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tags: Option<BTreeMap<String, String>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        priority: Option<Priority>,
    },
    History {
        channel: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<SinceArg>,
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        reverse: bool,
    },
    Presence {
        channel: String,
    },
    PresenceStats {
        channel: String,
    },
    Refresh {
        token: String,
    },
    Cursor {
        channel: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        delivered: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        read: Option<u64>,
    },
    Inbox {
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    Members {
        channel: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    Keys {
        #[serde(skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        users: Option<Vec<String>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
    },
}

#[derive(Serialize)]
struct Out<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u32>,
    #[serde(flatten)]
    op: &'a Op,
}

/// Encodes one command as a single JSON line (no newline).
pub(crate) fn encode(id: Option<u32>, op: &Op) -> String {
    // Our own types hold only strings, numbers and raw JSON: serializing cannot fail.
    serde_json::to_string(&Out { id, op }).unwrap_or_default()
}

/// `{"op":"pong"}`: the answer to a server `ping` (no id, no reply).
pub(crate) const PONG: &str = r#"{"op":"pong"}"#;

/// Joins lines into frames of at most about `max` bytes (a single longer line gets its own frame).
pub(crate) fn frames(lines: Vec<String>, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in lines {
        if !cur.is_empty() && cur.len() + 1 + line.len() > max {
            out.push(std::mem::take(&mut cur));
        }
        if cur.is_empty() {
            cur = line;
        } else {
            cur.push('\n');
            cur.push_str(&line);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_protocol::{Command, CommandKind, decode_commands};

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn encodes_every_op_as_the_server_decodes_it() {
        let since = SinceArg {
            offset: 4,
            epoch: "e1".into(),
        };
        let s = encode(
            Some(1),
            &Op::Connect {
                token: Some("t".into()),
                name: None,
                version: Some("v".into()),
                subscribe: vec![],
            },
        );
        assert_eq!(s, r#"{"id":1,"op":"connect","token":"t","version":"v"}"#);
        match Command::decode(s.as_bytes()).unwrap().kind {
            CommandKind::Connect {
                token, subscribe, ..
            } => {
                assert_eq!(token.as_deref(), Some("t"));
                assert!(subscribe.is_empty());
            }
            other => panic!("{other:?}"),
        }

        let s = encode(
            Some(2),
            &Op::Subscribe {
                channel: "chat:a".into(),
                since: Some(since.clone()),
                snapshot: false,
                delta: None,
            },
        );
        assert_eq!(
            s,
            r#"{"id":2,"op":"subscribe","channel":"chat:a","since":{"offset":4,"epoch":"e1"}}"#
        );
        let c = Command::decode(s.as_bytes()).unwrap();
        assert_eq!(c.id, 2);
        match c.kind {
            CommandKind::Subscribe(a) => {
                assert_eq!(a.channel, "chat:a");
                assert_eq!(a.since, Some(since.clone()));
            }
            other => panic!("{other:?}"),
        }

        let s = encode(
            Some(3),
            &Op::Publish {
                channel: "a".into(),
                data: raw(r#"{"x": [1, 2]}"#),
                idempotency_key: Some("k".into()),
                tags: Some(BTreeMap::from([("t".to_string(), "v".to_string())])),
                key: None,
                priority: None,
            },
        );
        assert_eq!(
            s,
            r#"{"id":3,"op":"publish","channel":"a","data":{"x": [1, 2]},"idempotency_key":"k","tags":{"t":"v"}}"#
        );
        match Command::decode(s.as_bytes()).unwrap().kind {
            CommandKind::Publish {
                data,
                idempotency_key,
                tags,
                ..
            } => {
                assert_eq!(data.get(), r#"{"x": [1, 2]}"#);
                assert_eq!(idempotency_key.as_deref(), Some("k"));
                assert_eq!(tags.unwrap()["t"], "v");
            }
            other => panic!("{other:?}"),
        }

        let s = encode(
            Some(4),
            &Op::History {
                channel: "a".into(),
                since: Some(since),
                limit: Some(10),
                reverse: true,
            },
        );
        match Command::decode(s.as_bytes()).unwrap().kind {
            CommandKind::History {
                since,
                limit,
                reverse,
                ..
            } => {
                assert_eq!(since.unwrap().offset, 4);
                assert_eq!(limit, Some(10));
                assert!(reverse);
            }
            other => panic!("{other:?}"),
        }
        let s = encode(
            Some(5),
            &Op::History {
                channel: "a".into(),
                since: None,
                limit: None,
                reverse: false,
            },
        );
        assert_eq!(s, r#"{"id":5,"op":"history","channel":"a"}"#);

        for (op, name) in [
            (
                Op::Unsubscribe {
                    channel: "a".into(),
                },
                "unsubscribe",
            ),
            (
                Op::Presence {
                    channel: "a".into(),
                },
                "presence",
            ),
            (
                Op::PresenceStats {
                    channel: "a".into(),
                },
                "presence_stats",
            ),
            (Op::Refresh { token: "t".into() }, "refresh"),
        ] {
            let s = encode(Some(9), &op);
            let c = Command::decode(s.as_bytes()).unwrap();
            assert_eq!((c.id, c.kind.op()), (9, name), "{s}");
        }

        assert!(matches!(
            Command::decode(PONG.as_bytes()).unwrap().kind,
            CommandKind::Pong
        ));
    }

    #[test]
    fn batches_lines_into_frames() {
        let lines: Vec<String> = (1..=5)
            .map(|i| {
                encode(
                    Some(i),
                    &Op::Unsubscribe {
                        channel: "a".into(),
                    },
                )
            })
            .collect();
        let one = frames(lines.clone(), 64 * 1024);
        assert_eq!(one.len(), 1);
        let ids: Vec<u32> = decode_commands(one[0].as_bytes())
            .map(|c| c.unwrap().id)
            .collect();
        assert_eq!(ids, [1, 2, 3, 4, 5]);

        let len = lines[0].len();
        let split = frames(lines, 2 * len + 1);
        assert_eq!(split.len(), 3);
        assert!(split.iter().all(|f| f.len() <= 2 * len + 1));
        assert!(frames(vec![], 10).is_empty());
        assert_eq!(frames(vec!["x".repeat(20)], 10).len(), 1);
    }
}
