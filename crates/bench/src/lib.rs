//! `tidings bench`: a load generator for Tidings and its peers (Pusher
//! protocol servers such as sockudo, and Socket.IO). It opens many
//! connections from one process, subscribes them by a scenario, publishes at
//! increasing rates and reports deliveries, loss, latency and the server's
//! memory and CPU. Loopback only; every phase is bounded in time.

#![warn(missing_docs)]

pub mod ceiling;
pub mod client;
pub mod payload;
pub mod proc;
pub mod report;
pub mod run;
pub mod scenario;
pub mod stats;
pub mod target;
pub mod ws;

use thiserror::Error;

pub use report::Report;
pub use run::{Options, run};
pub use scenario::Scenario;

/// Why a bench run or one of its clients failed.
#[derive(Debug, Error)]
pub enum BenchError {
    /// The scenario file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The scenario is invalid.
    #[error("bad scenario: {0}")]
    Scenario(String),
    /// A socket operation failed.
    #[error("socket: {0}")]
    Io(std::io::Error),
    /// The server refused a connection or subscription.
    #[error("refused: {0}")]
    Refused(String),
    /// The server said something the bench did not expect.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A publish through the HTTP API failed.
    #[error("publish: {0}")]
    Publish(String),
}
