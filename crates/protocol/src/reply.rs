//! Bodies of `ok` replies, shared by the server (encoding) and clients (decoding).

use serde::{Deserialize, Serialize};

use crate::message::{ClientInfo, Publication};

/// `connect` → ok.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectOk {
    /// The connection's client id.
    pub client: String,
    /// The authenticated user (empty when anonymous).
    pub user: String,
    /// Seconds between server pings.
    pub ping_interval: u64,
    /// Seconds until the token expires, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    /// Replies to `connect.subscribe`, in order: each an ok body or an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribed: Option<Vec<SubscribeResult>>,
    /// What the backend's connect hook gave the client (any JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<serde_json::value::RawValue>>,
}

/// One entry of `connect.subscribed`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscribeResult {
    /// Channel name.
    pub channel: String,
    /// The subscribe answer, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<SubscribeOk>,
    /// The error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::message::ErrorBody>,
}

/// `subscribe` → ok.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubscribeOk {
    /// Top offset of the channel now (absent in ephemeral channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Epoch of the channel's history (absent in ephemeral channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// Only when `since` was given: whether every missed publication follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// The missed publications, in order (when recovered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publications: Option<Vec<Publication>>,
    /// Who is in the channel, when the namespace has presence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<std::collections::BTreeMap<String, ClientInfo>>,
    /// Publications of this subscription come as Fossil deltas where they
    /// can (`delta: "fossil"` was asked and the channel allows it): every
    /// `data` is then a string, the payload's JSON text or a delta.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delta: bool,
}

/// `publish` → ok.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublishOk {
    /// Offset given to the publication (absent in ephemeral channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Epoch of the channel's history (absent in ephemeral channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// `history` → ok.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryOk {
    /// The publications asked for.
    pub publications: Vec<Publication>,
    /// Top offset of the channel now.
    pub offset: u64,
    /// Epoch of the channel's history.
    pub epoch: String,
}

/// `refresh` → ok.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RefreshOk {
    /// Seconds until the new token expires, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
}

/// `presence` → ok.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PresenceOk {
    /// Connections in the channel by client id (one page).
    pub clients: std::collections::BTreeMap<String, ClientInfo>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `last_seen` → ok.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LastSeenOk {
    /// Per user: milliseconds since the Unix epoch of their last connect or
    /// disconnect, or null when never seen.
    pub users: std::collections::BTreeMap<String, Option<u64>>,
}

/// `presence_stats` → ok.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PresenceStatsOk {
    /// Number of connections.
    pub clients: u64,
    /// Number of distinct users.
    pub users: u64,
}

/// An ok reply with no fields: `{}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Empty {}
