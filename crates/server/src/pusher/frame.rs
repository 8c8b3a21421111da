//! Pusher protocol 7 messages, `{"event", "channel"?, "data"}`: what
//! clients send, what the server sends (`data` a JSON string), and Tidings'
//! pushes as Pusher clients get them.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use tidings_protocol::reply::SubscribeOk;

use super::pusher_channel;
use crate::outbox::Translated;

/// A message from a Pusher client.
#[derive(Debug, Deserialize)]
pub struct Incoming {
    /// `pusher:subscribe`, `client-typing`, ...
    pub event: String,
    /// The channel, for client events.
    #[serde(default)]
    pub channel: Option<String>,
    /// An object for `pusher:*` events; anything for client events.
    #[serde(default)]
    pub data: Value,
}

/// A server message; `data` is sent as a JSON string, as Pusher does.
/// Written field by field, `event` first (Pusher's order, and how the
/// writer tells the transport's own messages from Tidings' pushes).
pub fn encode(event: &str, channel: Option<&str>, data: &Value) -> Bytes {
    let data = match data {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    message(event, channel, &Value::String(data), None)
}

/// `{"event", "channel"?, "data", "user_id"?}` in that order.
fn message(event: &str, channel: Option<&str>, data: &Value, user_id: Option<&Value>) -> Bytes {
    let string = |s: &str| Value::String(s.to_string()).to_string();
    let mut out = format!("{{\"event\":{}", string(event));
    if let Some(channel) = channel {
        out.push_str(&format!(",\"channel\":{}", string(channel)));
    }
    out.push_str(&format!(",\"data\":{data}"));
    if let Some(user) = user_id {
        out.push_str(&format!(",\"user_id\":{user}"));
    }
    out.push('}');
    Bytes::from(out)
}

/// `pusher:error` (its `data` an object, as Pusher sends it).
pub fn error(code: Option<u16>, text: &str) -> Bytes {
    message(
        "pusher:error",
        None,
        &json!({ "code": code, "message": text }),
        None,
    )
}

/// `pusher_internal:subscription_succeeded`, with the members of a
/// presence channel from the subscribe reply (one per user).
pub fn subscribed(channel: &str, ok: &SubscribeOk, presence: bool) -> Bytes {
    let data = if presence {
        let mut ids = Vec::new();
        let mut hash = serde_json::Map::new();
        for info in ok.presence.iter().flat_map(|m| m.values()) {
            if hash.contains_key(&info.user) {
                continue;
            }
            ids.push(json!(info.user));
            let user_info = info
                .info
                .as_deref()
                .and_then(|raw| serde_json::from_str(raw.get()).ok())
                .unwrap_or(Value::Null);
            hash.insert(info.user.clone(), user_info);
        }
        json!({ "presence": { "count": ids.len(), "ids": ids, "hash": hash } })
    } else {
        json!({})
    };
    encode(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        &data,
    )
}

/// A Tidings `pub` push as a Pusher event. Data shaped `{"event",
/// "data"}` (what the Pusher API and client events publish) is that event;
/// any other data is the event `publication` with the data as JSON text.
pub fn translate_pub(push: &[u8]) -> Option<Translated> {
    #[derive(Deserialize)]
    struct Pub {
        channel: String,
        data: Value,
        #[serde(default)]
        info: Option<Info>,
    }
    #[derive(Deserialize)]
    struct Info {
        client: String,
    }
    let p: Pub = serde_json::from_slice(push).ok()?;
    let channel = &pusher_channel(&p.channel);
    let bytes = match &p.data {
        // Pusher's own events (`pusher:*`, `pusher_internal:*`) come from the
        // server alone, never from a publication.
        Value::Object(o)
            if o.get("event")
                .and_then(Value::as_str)
                .is_some_and(|e| !e.starts_with("pusher")) =>
        {
            let event = o.get("event").and_then(Value::as_str).unwrap_or_default();
            let data = match o.get("data").cloned().unwrap_or(Value::Null) {
                Value::String(s) => s,
                other => other.to_string(),
            };
            message(event, Some(channel), &Value::String(data), o.get("user_id"))
        }
        other => encode("publication", Some(channel), &json!(other.to_string())),
    };
    Some(Translated {
        from: p.info.map(|i| i.client.into_boxed_str()),
        bytes,
    })
}

/// Any other Tidings push: `join`/`leave` as member added/removed, except
/// the connection's own (`me`, its Tidings client id: Pusher does not tell
/// a member of itself); nothing for the rest (`unsub`, `gap`, `ping`).
pub fn translate_push(push: &[u8], me: &str) -> Option<Bytes> {
    #[derive(Deserialize)]
    struct Presence {
        push: String,
        channel: String,
        client: String,
        user: String,
        #[serde(default)]
        info: Option<Value>,
    }
    let p: Presence = serde_json::from_slice(push).ok()?;
    if p.client == me {
        return None;
    }
    let channel = &pusher_channel(&p.channel);
    match p.push.as_str() {
        "join" => Some(encode(
            "pusher_internal:member_added",
            Some(channel),
            &json!({ "user_id": p.user, "user_info": p.info.unwrap_or(Value::Null) }),
        )),
        "leave" => Some(encode(
            "pusher_internal:member_removed",
            Some(channel),
            &json!({ "user_id": p.user }),
        )),
        _ => None,
    }
}

/// Whether `bytes` is already a Pusher message (the transport's own).
pub fn is_pusher(bytes: &[u8]) -> bool {
    bytes.starts_with(b"{\"event\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publications_become_events() {
        let push = br#"{"push":"pub","channel":"pusher:news","offset":3,"data":{"event":"headline","data":"{\"t\":1}"},"info":{"client":"1.2","user":""}}"#;
        let t = translate_pub(push).unwrap();
        assert_eq!(t.from.as_deref(), Some("1.2"));
        let v: Value = serde_json::from_slice(&t.bytes).unwrap();
        assert_eq!(
            v,
            json!({"event": "headline", "channel": "news", "data": "{\"t\":1}"})
        );
        let other =
            translate_pub(br#"{"push":"pub","channel":"pusher:news","data":[1,2]}"#).unwrap();
        let v: Value = serde_json::from_slice(&other.bytes).unwrap();
        assert_eq!(
            v,
            json!({"event": "publication", "channel": "news", "data": "[1,2]"})
        );
        assert!(translate_pub(b"not json").is_none());
        // A publication cannot pass for the server's own events.
        let forged = translate_pub(br#"{"push":"pub","channel":"pusher:p","data":{"event":"pusher_internal:member_added","data":"{}"}}"#).unwrap();
        let v: Value = serde_json::from_slice(&forged.bytes).unwrap();
        assert_eq!(v["event"], "publication");
    }

    #[test]
    fn presence_pushes_become_member_events() {
        let join = translate_push(br#"{"push":"join","channel":"pusher:presence-r","client":"c","user":"7","info":{"name":"Ann"}}"#, "me").unwrap();
        assert!(
            translate_push(
                br#"{"push":"join","channel":"pusher:presence-r","client":"me","user":"7"}"#,
                "me"
            )
            .is_none()
        );
        let v: Value = serde_json::from_slice(&join).unwrap();
        assert_eq!(v["event"], "pusher_internal:member_added");
        assert_eq!(v["channel"], "presence-r");
        let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(data, json!({"user_id": "7", "user_info": {"name": "Ann"}}));
        assert!(
            translate_push(
                br#"{"push":"unsub","channel":"pusher:x","code":3003,"reason":""}"#,
                "me"
            )
            .is_none()
        );
    }
}
