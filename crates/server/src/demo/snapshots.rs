//! The demo's poll and Q&A as snapshot channels: the server follows them
//! like a subscriber (an observer session: no presence, no hooks), folds
//! their publications (votes, questions, upvotes) into their state, and
//! publishes that state as the channel's snapshot every few publications.
//! A page that opens, or comes back after history moved on, starts from the
//! snapshot instead of needing every publication ever made.
//!
//! A snapshot says `through`: the last publication it folds. One that lands
//! between the fold and the snapshot is folded into the next snapshot (made
//! at the next tick); the pages merge snapshots into what they hold, so
//! nothing is counted twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tidings_protocol::reply::SubscribeOk;
use tidings_protocol::{Command, CommandKind, Publication, Push, ServerMessage, SubscribeArg};

use crate::engine::PublishRequest;
use crate::node::Node;
use crate::outbox::Outbox;
use crate::session::Session;

/// The demo's channels that get snapshots.
pub const CHANNELS: [&str; 2] = ["demo:poll", "demo:qa"];
/// Publications after which a new snapshot is made.
const EVERY: usize = 5;
/// How often an overtaken snapshot is made again, at most.
const TICK: Duration = Duration::from_secs(1);

/// One channel's fold.
#[derive(Default)]
struct Fold {
    /// The state (`poll` or `qa`'s shape).
    state: Value,
    /// The last publication folded.
    through: u64,
    /// Publications folded since the last snapshot.
    since: usize,
}

impl Fold {
    fn apply(&mut self, channel: &str, p: &Publication) {
        let Some(offset) = p.offset.filter(|o| *o > self.through) else {
            return;
        };
        self.through = offset;
        if p.snapshot && p.info.is_none() {
            // Ours: what it folds is folded here already. One that others
            // overtook lacks what came between: make the next one at once.
            let through = serde_json::from_str::<Value>(p.data.get())
                .ok()
                .and_then(|d| d["through"].as_u64());
            if through.is_some_and(|t| t + 1 != offset) {
                self.since = self.since.max(EVERY);
            }
            return;
        }
        self.state = if channel == "demo:poll" {
            poll(&self.state, &[p])
        } else {
            qa(&self.state, &[p])
        };
        self.since += 1;
    }

    /// Starts over from a subscribe reply: the latest snapshot (or the
    /// channel from its start) and what followed.
    fn restart(&mut self, channel: &str, ok: SubscribeOk) {
        *self = Fold::default();
        for p in ok.publications.unwrap_or_default() {
            // Only the server's own snapshots (a client's has `info`).
            if p.snapshot && p.info.is_none() {
                self.state = serde_json::from_str(p.data.get()).unwrap_or_default();
                self.through = p.offset.unwrap_or(0);
            } else {
                self.apply(channel, &p);
            }
        }
        self.through = self.through.max(ok.offset.unwrap_or(0));
    }
}

/// Runs the snapshotter until the task is dropped; starts over after a
/// failure.
pub async fn run(node: Arc<Node>) {
    loop {
        follow(&node).await;
        tokio::time::sleep(TICK).await;
    }
}

/// Subscribes the channels and folds them until the session ends.
async fn follow(node: &Arc<Node>) {
    let outbox = Arc::new(Outbox::new(node.config.client.outbox_bytes));
    let (mut session, control) = Session::new(node.clone(), outbox.clone());
    session.set_observer();
    if session.open_as(String::new(), None).await.is_err() {
        return;
    }
    let subscribe = |i: usize| Command {
        id: u32::try_from(i + 1).unwrap_or(0),
        kind: CommandKind::Subscribe(SubscribeArg {
            channel: CHANNELS[i].to_string(),
            snapshot: true,
            ..Default::default()
        }),
    };
    for i in 0..CHANNELS.len() {
        session.handle(subscribe(i)).await;
    }
    let mut folds: HashMap<&str, Fold> = HashMap::new();
    let mut batch = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            close = outbox.next_batch(&mut batch) => if close.is_some() { break },
            c = control.recv() => { session.handle_control(c).await; continue; }
            _ = tick.tick() => {}
        }
        for entry in batch.drain(..) {
            match ServerMessage::decode(&entry.bytes) {
                Ok(ServerMessage::Reply(r)) => {
                    let i = (r.id as usize).saturating_sub(1);
                    if let (Some(channel), Ok(ok)) = (CHANNELS.get(i), r.result) {
                        let ok: SubscribeOk = serde_json::from_str(ok.get()).unwrap_or_default();
                        folds.entry(channel).or_default().restart(channel, ok);
                    }
                }
                Ok(ServerMessage::Push(Push::Pub {
                    channel,
                    publication,
                    ..
                })) => {
                    if let Some(c) = CHANNELS.iter().find(|c| **c == channel) {
                        folds.entry(c).or_default().apply(c, &publication);
                    }
                }
                // Continuity lost (3003) or ended: subscribe again.
                Ok(ServerMessage::Push(Push::Unsub { channel, .. })) => {
                    if let Some(i) = CHANNELS.iter().position(|c| *c == channel) {
                        session.handle(subscribe(i)).await;
                    }
                }
                _ => {}
            }
        }
        for (channel, fold) in &mut folds {
            if fold.since >= EVERY {
                publish(node, channel, fold).await;
            }
        }
    }
    session.end().await;
}

/// Publishes `fold`'s state as `channel`'s snapshot.
async fn publish(node: &Node, channel: &str, fold: &mut Fold) {
    let Ok((_, ns)) = node.resolve(channel) else {
        return;
    };
    let mut data = fold.state.clone();
    data["type"] = json!("snapshot");
    data["through"] = json!(fold.through);
    let Ok(data) = serde_json::value::to_raw_value(&data) else {
        return;
    };
    let request = PublishRequest {
        data,
        info: None,
        tags: None,
        idempotency_key: None,
        key: None,
        priority: None,
        snapshot: true,
    };
    // The server's own: not held to the namespace's message size.
    match node
        .engine
        .publish(channel, request, &node.policy(&ns))
        .await
    {
        Ok(_) => fold.since = 0,
        Err(e) => tracing::debug!(channel, error = %e, "demo snapshot failed"),
    }
}

/// Who published `p` (its user id).
fn user(p: &Publication) -> String {
    p.info.as_ref().map(|i| i.user.clone()).unwrap_or_default()
}

/// The poll: each user's latest vote, `{"votes": {user: {"option", "at"}}}`.
fn poll(start: &Value, pubs: &[&Publication]) -> Value {
    let mut votes: BTreeMap<String, Value> =
        serde_json::from_value(start["votes"].clone()).unwrap_or_default();
    for p in pubs {
        let Ok(d) = serde_json::from_str::<Value>(p.data.get()) else {
            continue;
        };
        if d["type"] != "vote" || !d["option"].is_string() {
            continue;
        }
        let at = p.offset.unwrap_or(0);
        let newer = votes
            .get(&user(p))
            .is_none_or(|v| v["at"].as_u64().unwrap_or(0) < at);
        if newer {
            votes.insert(user(p), json!({"option": d["option"], "at": at}));
        }
    }
    json!({ "votes": votes })
}

/// Q&A: `{"questions": [{"key", "text", "name", "user"}], "voters": {key: [user]}}`.
fn qa(start: &Value, pubs: &[&Publication]) -> Value {
    let mut questions: BTreeMap<u64, Value> = start["questions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|q| Some((q["key"].as_u64()?, q.clone())))
        .collect();
    let mut voters: BTreeMap<u64, BTreeSet<String>> =
        serde_json::from_value::<BTreeMap<String, BTreeSet<String>>>(start["voters"].clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v)))
            .collect();
    for p in pubs {
        let Ok(d) = serde_json::from_str::<Value>(p.data.get()) else {
            continue;
        };
        match (d["type"].as_str(), p.offset) {
            (Some("ask"), Some(key)) if d["text"].is_string() => {
                let name = p
                    .info
                    .as_ref()
                    .and_then(|i| i.info.as_ref())
                    .and_then(|i| serde_json::from_str::<Value>(i.get()).ok())
                    .and_then(|i| i["name"].as_str().map(String::from))
                    .unwrap_or_else(|| user(p));
                questions.entry(key).or_insert_with(
                    || json!({"key": key, "text": d["text"], "name": name, "user": user(p)}),
                );
            }
            (Some("upvote"), _) => {
                if let Some(q) = d["q"].as_u64() {
                    voters.entry(q).or_default().insert(user(p));
                }
            }
            _ => {}
        }
    }
    json!({
        "questions": questions.into_values().collect::<Vec<_>>(),
        "voters": voters.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<BTreeMap<_, _>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;
    use tidings_protocol::ClientInfo;

    fn publ(offset: u64, user: &str, data: Value) -> Publication {
        Publication {
            offset: Some(offset),
            data: RawValue::from_string(data.to_string()).unwrap(),
            info: Some(ClientInfo {
                client: "c".into(),
                user: user.into(),
                info: Some(RawValue::from_string(format!(r#"{{"name":"{user}!"}}"#)).unwrap()),
            }),
            tags: None,
            key: None,
            priority: None,
            time: 0,
            snapshot: false,
        }
    }

    #[test]
    fn the_poll_keeps_each_users_latest_vote_across_snapshots() {
        let a = publ(1, "ann", json!({"type": "vote", "option": "x"}));
        let b = publ(2, "bob", json!({"type": "vote", "option": "y"}));
        let first = poll(&Value::Null, &[&a, &b]);
        let c = publ(4, "ann", json!({"type": "vote", "option": "y"}));
        let d = publ(5, "bob", json!({"type": "nonsense"}));
        let next = poll(&first, &[&c, &d]);
        assert_eq!(next["votes"]["ann"], json!({"option": "y", "at": 4}));
        assert_eq!(next["votes"]["bob"], json!({"option": "y", "at": 2}));
    }

    #[test]
    fn qa_keeps_questions_and_one_vote_per_user() {
        let q = publ(1, "ann", json!({"type": "ask", "text": "why?"}));
        let v1 = publ(2, "bob", json!({"type": "upvote", "q": 1}));
        let v2 = publ(3, "bob", json!({"type": "upvote", "q": 1}));
        let first = qa(&Value::Null, &[&q, &v1]);
        let next = qa(&first, &[&v2]);
        assert_eq!(next["questions"][0]["name"], "ann!");
        assert_eq!(next["voters"]["1"], json!(["bob"]));
    }
}
