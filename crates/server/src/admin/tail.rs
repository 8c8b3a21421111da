//! `GET /admin/tail?channel=…`: a channel's live publications as Server-Sent
//! Events, for the operator. An observer session subscribes: it may watch
//! any channel, runs no hooks, and is in no one's presence.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::Deserialize;

use super::Viewer;
use crate::api::ApiError;
use crate::mailbox::Mailbox;
use crate::node::Node;
use crate::outbox::Outbox;
use crate::session::Session;

#[derive(Deserialize)]
pub struct TailQuery {
    channel: String,
}

/// Each message of the channel as a `message` event (its protocol JSON);
/// `subscribed` first, with the channel's position.
pub async fn tail(
    _: Viewer,
    State(node): State<Arc<Node>>,
    Query(q): Query<TailQuery>,
) -> Response {
    let outbox = Arc::new(Outbox::new(node.config.client.outbox_bytes));
    let (mut session, control) = Session::new(node.clone(), outbox.clone());
    session.set_observer();
    if let Err(e) = session.open_as(String::new(), None).await {
        return ApiError(e).into_response();
    }
    let subscribed = session
        .subscribe_then(&q.channel, |ok| {
            serde_json::to_vec(&serde_json::json!({
                "push": "subscribed",
                "channel": q.channel,
                "offset": ok.offset,
                "epoch": ok.epoch,
            }))
            .unwrap_or_default()
            .into()
        })
        .await;
    if let Err(e) = subscribed {
        return ApiError(e).into_response();
    }
    Sse::new(events(session, outbox, control, q.channel))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The outbox's messages until it closes, or until the subscription ends
/// (the engine lost the channel's continuity, the API unsubscribed it):
/// then the stream ends, and the browser's EventSource opens a new tail.
/// The session lives as long as the stream (dropping it unsubscribes).
fn events(
    session: Session,
    outbox: Arc<Outbox>,
    control: Arc<Mailbox>,
    channel: String,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let state = (session, outbox, control, channel, Vec::new(), false);
    let batches = stream::unfold(state, |state| async move {
        let (mut session, outbox, control, channel, mut batch, done) = state;
        if done {
            return None;
        }
        batch.clear();
        let closed = loop {
            tokio::select! {
                close = outbox.next_batch(&mut batch) => break close.is_some(),
                c = control.recv() => session.handle_control(c).await,
            }
        };
        let done = closed || !session.is_subscribed(&channel);
        let events: Vec<_> = batch
            .iter()
            .map(|e| Ok(Event::default().data(String::from_utf8_lossy(&e.bytes))))
            .collect();
        Some((
            stream::iter(events),
            (session, outbox, control, channel, batch, done),
        ))
    });
    futures_util::StreamExt::flatten(batches)
}
