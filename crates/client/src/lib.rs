//! Rust client SDK for Tidings (WebSocket JSON protocol v1).
//!
//! [`Client::connect`] starts one background task that owns the connection:
//! it answers pings, matches replies to requests, reconnects with
//! exponential backoff and full jitter, and resubscribes every channel from
//! the last position delivered, so a [`Subscription`] sees each publication
//! once, in offset order, and learns of any loss through
//! [`SubEvent::NotRecovered`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), tidings_client::ClientError> {
//! use tidings_client::{Client, ClientConfig, PublishOptions, SubEvent, SubscribeOptions};
//!
//! let client = Client::connect(ClientConfig::new("ws://127.0.0.1:8000/v1/ws")).await?;
//! let mut sub = client.subscribe("chat:lobby", SubscribeOptions::default()).await?;
//! client
//!     .publish("chat:lobby", &serde_json::json!({"text": "hi"}), PublishOptions::default())
//!     .await?;
//! while let Some(event) = sub.next().await {
//!     if let SubEvent::Publication(p) = event {
//!         println!("{}", p.data.get());
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Chat (members channels): [`Client::cursor`], [`Client::mark_read`],
//! [`Client::inbox`], [`Client::inbox_changes`], `receipts` in
//! [`SubscribeOptions`] (delivered cursors told by themselves), and
//! [`Receipts`] for each message's ✓ / ✓✓ / read. End-to-end encryption
//! with the TypeScript SDK's envelopes: [`e2ee::DeviceKeys`],
//! [`Client::register_device`], [`Client::publish_sealed`], [`Client::open`].

#![warn(missing_docs)]

mod backoff;
mod client;
mod config;
pub mod e2ee;
mod error;
mod receipts;
mod subscription;
mod task;
mod tracker;
mod typing;
mod wire;

pub use client::{CURSOR_COALESCE, Client, ClientEvent, HistoryOptions, PublishOptions};
pub use config::ClientConfig;
pub use error::ClientError;
pub use receipts::{DeliveryState, Receipts};
pub use subscription::{SubEvent, SubscribeOptions, Subscription};
pub use tidings_protocol::chat::{DeviceKey, InboxOk, KeysOk, MembersOk};
pub use tidings_protocol::reply::{HistoryOk, PresenceOk, PresenceStatsOk, PublishOk, RefreshOk};
pub use tidings_protocol::{ClientInfo, Publication, SinceArg};
pub use tidings_protocol::{Conversation, Cursors, InboxChange, Receipt};
pub use typing::Typing;

/// The wire protocol crate, for its other types.
pub use tidings_protocol;
