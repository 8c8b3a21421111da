//! The client's error type.

use thiserror::Error;
use tidings_protocol::ErrorBody;

/// Why a client call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// A network error (connecting, reading, writing).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The server sent something this client cannot use, or the WebSocket
    /// handshake failed.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server answered the command with an error.
    #[error("server error {code}: {message}")]
    Server {
        /// Reply error code (100–109, see `tidings_protocol::ErrorCode`).
        code: u16,
        /// The server's message.
        message: String,
        /// Whether the same command may succeed later.
        temporary: bool,
    },
    /// The connection was lost before the reply came, or the server ended it
    /// for good.
    #[error("disconnected ({}): {reason}", code.map_or_else(|| "no code".to_string(), |c| c.to_string()))]
    Disconnected {
        /// The disconnect or close code, when there was one.
        code: Option<u16>,
        /// Why.
        reason: String,
    },
    /// No reply within `request_timeout`.
    #[error("timed out")]
    Timeout,
    /// The client was closed (or its background task ended).
    #[error("client closed")]
    Closed,
    /// An argument was refused before anything was sent (bad URL, invalid JSON).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A message could not be sealed or opened (end-to-end encryption).
    #[error("end-to-end encryption: {0}")]
    E2ee(#[from] crate::e2ee::E2eeError),
}

impl ClientError {
    /// Whether retrying the same call later may succeed.
    pub fn is_temporary(&self) -> bool {
        match self {
            ClientError::Server { temporary, .. } => *temporary,
            ClientError::Disconnected { code, .. } => {
                !code.is_some_and(|c| (3500..4000).contains(&c))
            }
            ClientError::Io(_) | ClientError::Timeout => true,
            ClientError::Protocol(_)
            | ClientError::Closed
            | ClientError::InvalidArgument(_)
            | ClientError::E2ee(_) => false,
        }
    }
}

impl From<ErrorBody> for ClientError {
    fn from(e: ErrorBody) -> Self {
        ClientError::Server {
            code: e.code,
            message: e.message,
            temporary: e.temporary,
        }
    }
}

impl From<tokio_websockets::Error> for ClientError {
    fn from(e: tokio_websockets::Error) -> Self {
        match e {
            tokio_websockets::Error::Io(e) => ClientError::Io(e),
            other => ClientError::Protocol(other.to_string()),
        }
    }
}
