//! Transports: turn bytes from the network into commands, and outbox
//! batches into bytes on the network.

pub mod http;
pub mod poll;
pub mod pusher;
pub mod sse;
pub mod ws;
