//! The Tidings wire protocol, version 1 (JSON codec).
//!
//! Pure types and codecs: no I/O, no async. Decoding never panics; every
//! malformed input becomes a [`DecodeError`] that the server maps to code 101.

#![warn(missing_docs)]

pub mod channel;
pub mod chat;
pub mod codes;
pub mod command;
pub mod depth;
pub mod message;
pub mod msgpack;
pub mod position;
pub mod reply;

pub use channel::{ChannelName, ChannelNameError};
pub use chat::{Conversation, Cursors, InboxChange, KeysArg, Receipt};
pub use codes::{DisconnectCode, ErrorCode};
pub use command::{
    Command, CommandKind, DecodeError, DeltaFormat, Priority, SinceArg, SubscribeArg,
    decode_commands,
};
pub use depth::nests_deeper_than;
pub use message::{
    ClientInfo, Disconnect, ErrorBody, PubStyle, Publication, Push, Reply, ServerMessage,
    StreamPosition, decode_server_messages, encode_error_reply, encode_ok_reply, encode_pub,
    encode_pub_as, encode_push,
};

/// The WebSocket subprotocol name of this codec.
pub const SUBPROTOCOL_JSON: &str = "tidings.v1.json";

/// The WebSocket subprotocol carrying the same messages in MessagePack.
pub const SUBPROTOCOL_MSGPACK: &str = "tidings.v1.msgpack";
