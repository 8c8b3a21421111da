//! The chat layer's messages: members' cursors, receipts, the inbox and
//! the device-key directory (see PROTOCOL.md, "Chat").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::message::Publication;

/// A member's two cursors in a channel; each only moves forward, and
/// `read` implies `delivered`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Cursors {
    /// The user's devices have every publication up to this offset.
    pub delivered: u64,
    /// The user saw every publication up to this offset.
    pub read: u64,
}

impl Cursors {
    /// Both cursors raised to at least `to`'s (never lowered), with
    /// `delivered` at least `read`.
    pub fn advanced(self, to: Cursors) -> Cursors {
        let read = self.read.max(to.read);
        Cursors {
            delivered: self.delivered.max(to.delivered).max(read),
            read,
        }
    }
}

/// A `receipt` push: one member's cursors moved, or (without `user`) a
/// summary of a large group's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Channel name.
    pub channel: String,
    /// Whose cursors these are; absent in a summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The member's `delivered` (in a summary: what every member has).
    pub delivered: u64,
    /// The member's `read` (in a summary: what every member has).
    pub read: u64,
    /// In a summary: how many members the channel has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<u64>,
    /// In a summary: `[offset, members with delivered ≥ offset, members
    /// with read ≥ offset]` for the newest offsets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<Vec<[u64; 3]>>,
}

/// One conversation of a user's inbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Conversation {
    /// Channel name.
    pub channel: String,
    /// Publications after the user's `read` cursor (`top - read`).
    pub unread: u64,
    /// The user's `read` cursor.
    pub read: u64,
    /// The user's `delivered` cursor.
    pub delivered: u64,
    /// The channel's top offset.
    pub top: u64,
    /// The epoch of `top` and the cursors: a channel that started over
    /// has another, and its offsets begin again.
    #[serde(default)]
    pub epoch: String,
    /// Its last publication, while history holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Publication>,
    /// Ms since the Unix epoch of the last publication, or of when the
    /// user became a member.
    pub active_at: u64,
}

/// An `inbox` push: one of the user's conversations changed or is gone.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum InboxChange {
    /// The user stopped being a member.
    Removed {
        /// Channel name.
        channel: String,
        /// Always true.
        removed: bool,
    },
    /// The conversation as it is now.
    Changed(Box<Conversation>),
}

/// Every field of an `inbox` push: an untagged enum cannot read `last`
/// (raw JSON data does not survive serde's buffering), so this does.
#[derive(Deserialize)]
struct InboxWire {
    channel: String,
    #[serde(default)]
    removed: bool,
    unread: Option<u64>,
    read: Option<u64>,
    delivered: Option<u64>,
    top: Option<u64>,
    #[serde(default)]
    epoch: String,
    last: Option<Publication>,
    active_at: Option<u64>,
}

impl<'de> Deserialize<'de> for InboxChange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = InboxWire::deserialize(d)?;
        if w.removed {
            return Ok(InboxChange::Removed {
                channel: w.channel,
                removed: true,
            });
        }
        let need = |v: Option<u64>, name| v.ok_or_else(|| serde::de::Error::missing_field(name));
        Ok(InboxChange::Changed(Box::new(Conversation {
            channel: w.channel,
            unread: need(w.unread, "unread")?,
            read: need(w.read, "read")?,
            delivered: need(w.delivered, "delivered")?,
            top: need(w.top, "top")?,
            epoch: w.epoch,
            last: w.last,
            active_at: need(w.active_at, "active_at")?,
        })))
    }
}

/// `inbox` → ok.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InboxOk {
    /// Conversations, the most recently active first.
    pub conversations: Vec<Conversation>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `members` (and the API's `members/list`) → ok.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MembersOk {
    /// Members, sorted by user id.
    pub users: Vec<String>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A device's public key in the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceKey {
    /// The device's id (chosen by the client).
    pub device: String,
    /// Its ECDH P-256 public key: the uncompressed point in base64url.
    pub key: String,
}

/// A lookup of `keys` → ok.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeysOk {
    /// Each user's devices' keys (users without keys are absent).
    pub keys: BTreeMap<String, Vec<DeviceKey>>,
}

/// What a `keys` command asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysArg {
    /// Register this connection's user's device key.
    Register {
        /// The device id.
        device: String,
        /// Its public key.
        key: String,
        /// A user the client named (refused unless its own).
        user: Option<String>,
    },
    /// The keys of these users.
    Users(Vec<String>),
    /// The keys of the members of this channel.
    Channel(String),
}

impl KeysArg {
    /// The request that a `keys` command's fields make: `device` and
    /// `key`, or `users`, or `channel` (an error says what is wrong).
    pub fn from_fields(
        device: Option<String>,
        key: Option<String>,
        user: Option<String>,
        users: Option<Vec<String>>,
        channel: Option<String>,
    ) -> Result<KeysArg, &'static str> {
        match (device, key, users, channel) {
            (Some(device), Some(key), None, None) => Ok(KeysArg::Register { device, key, user }),
            (None, None, Some(users), None) if user.is_none() => Ok(KeysArg::Users(users)),
            (None, None, None, Some(channel)) if user.is_none() => Ok(KeysArg::Channel(channel)),
            _ => Err("keys: give `device` and `key`, or `users`, or `channel`"),
        }
    }
}

/// Whether `key` is what the directory takes: an uncompressed P-256
/// point (65 bytes starting with 4) in unpadded base64url.
pub fn valid_device_key(key: &str) -> bool {
    // 65 bytes are 87 characters of unpadded base64url; the first byte 0x04
    // makes the first character 'B' (000001 00...).
    key.len() == 87
        && key.starts_with('B')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `device` is a device id the directory takes.
pub fn valid_device_id(device: &str) -> bool {
    (1..=64).contains(&device.len())
        && device
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_only_move_forward_and_read_implies_delivered() {
        let c = Cursors {
            delivered: 5,
            read: 3,
        };
        let to = Cursors {
            delivered: 2,
            read: 7,
        };
        assert_eq!(
            c.advanced(to),
            Cursors {
                delivered: 7,
                read: 7
            }
        );
        assert_eq!(c.advanced(Cursors::default()), c);
    }

    #[test]
    fn device_keys_are_uncompressed_points() {
        let mut raw = [7u8; 65];
        raw[0] = 4;
        use base64::Engine;
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert!(valid_device_key(&key), "{key}");
        raw[0] = 2;
        let compressed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert!(!valid_device_key(&compressed));
        assert!(!valid_device_key(&format!("{key}=")));
        assert!(!valid_device_key(""));
        assert!(valid_device_id("laptop-1"));
        assert!(!valid_device_id("a/b"));
        assert!(!valid_device_id(""));
    }
}
