//! A typing indicator that stops by itself: call [`Typing::keystroke`] on
//! every keystroke; it publishes `{"typing": true}` at most once per
//! `interval` (so it stays under a namespace's `client_publish_rate`) and
//! `{"typing": false}` once no keystroke came for `idle`.

use std::sync::Arc;
use std::time::Duration;

use std::sync::Mutex;

use serde_json::json;
use tokio::time::Instant;

use crate::client::{Client, PublishOptions};

struct State {
    last_sent: Option<Instant>,
    last_key: Instant,
    /// Generation of the pending stop timer; a newer keystroke cancels older ones.
    generation: u64,
    typing: bool,
}

/// A typing indicator for one channel.
#[derive(Clone)]
pub struct Typing {
    client: Client,
    channel: String,
    interval: Duration,
    idle: Duration,
    state: Arc<Mutex<State>>,
}

impl Typing {
    /// An indicator for `channel`: `true` at most every `interval`, `false`
    /// after `idle` without keystrokes.
    pub fn new(
        client: Client,
        channel: impl Into<String>,
        interval: Duration,
        idle: Duration,
    ) -> Self {
        Self {
            client,
            channel: channel.into(),
            interval,
            idle,
            state: Arc::new(Mutex::new(State {
                last_sent: None,
                last_key: Instant::now(),
                generation: 0,
                typing: false,
            })),
        }
    }

    /// Records a keystroke: publishes `typing: true` unless one went out
    /// within `interval`, and (re)arms the automatic stop.
    pub async fn keystroke(&self) {
        let now = Instant::now();
        let (send, generation) = {
            let Ok(mut s) = self.state.lock() else { return };
            s.last_key = now;
            s.generation += 1;
            let send = s
                .last_sent
                .is_none_or(|t| now.duration_since(t) >= self.interval);
            if send {
                s.last_sent = Some(now);
                s.typing = true;
            }
            (send, s.generation)
        };
        if send {
            // Best effort: a refused or lost indicator is not worth an error.
            let _ = self
                .client
                .publish(
                    &self.channel,
                    &json!({"typing": true}),
                    PublishOptions::default(),
                )
                .await;
        }
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(this.idle).await;
            this.stop_if(generation).await;
        });
    }

    /// Stops now: publishes `typing: false` if `true` was the last sent.
    pub async fn stop(&self) {
        let generation = match self.state.lock() {
            Ok(s) => s.generation,
            Err(_) => return,
        };
        self.stop_if(generation).await;
    }

    async fn stop_if(&self, generation: u64) {
        {
            let Ok(mut s) = self.state.lock() else { return };
            if s.generation != generation || !s.typing {
                return;
            }
            s.typing = false;
            s.last_sent = None;
        }
        let _ = self
            .client
            .publish(
                &self.channel,
                &json!({"typing": false}),
                PublishOptions::default(),
            )
            .await;
    }
}
