//! The Tidings server: a real-time updates server.
//!
//! Dependencies point one way: transport → session → hub → engine → protocol.

#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod chat;
pub mod client_api;
pub mod config;
pub mod delivery;
pub mod delta;
pub mod demo;
pub mod engine;
pub mod hooks;
pub mod hub;
pub mod ingest;
pub mod lease;
pub mod listener;
pub mod mailbox;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod pusher;
pub mod server;
pub mod session;
mod throttle;
pub mod transport;

pub use config::Config;
pub use server::{DevCredentials, Server, ServerError};
