//! Error codes of replies and close/disconnect codes, as PROTOCOL.md lists them.

use serde::{Deserialize, Serialize};

/// A reply error code (`{"error": {"code": ...}}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u16", try_from = "u16")]
pub enum ErrorCode {
    /// 100: the server failed; not the client's fault.
    Internal,
    /// 101: malformed message, unknown op, missing or mistyped field.
    BadRequest,
    /// 102: unknown channel or namespace.
    UnknownChannel,
    /// 103: permission denied.
    PermissionDenied,
    /// 104: a limit was exceeded (subscriptions, message size).
    LimitExceeded,
    /// 105: rate limited; try again later.
    RateLimited,
    /// 106: the token has expired.
    TokenExpired,
    /// 107: already subscribed to this channel.
    AlreadySubscribed,
    /// 108: not subscribed to this channel.
    NotSubscribed,
    /// 109: the position asked for cannot be recovered.
    Unrecoverable,
}

impl ErrorCode {
    /// All codes, in numeric order.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::Internal,
        ErrorCode::BadRequest,
        ErrorCode::UnknownChannel,
        ErrorCode::PermissionDenied,
        ErrorCode::LimitExceeded,
        ErrorCode::RateLimited,
        ErrorCode::TokenExpired,
        ErrorCode::AlreadySubscribed,
        ErrorCode::NotSubscribed,
        ErrorCode::Unrecoverable,
    ];

    /// The numeric code on the wire.
    pub fn code(self) -> u16 {
        100 + self as u16
    }

    /// Whether retrying the same command later may succeed.
    pub fn temporary(self) -> bool {
        matches!(self, ErrorCode::Internal | ErrorCode::RateLimited)
    }

    /// The default human-readable message.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::Internal => "internal error",
            ErrorCode::BadRequest => "bad request",
            ErrorCode::UnknownChannel => "unknown channel",
            ErrorCode::PermissionDenied => "permission denied",
            ErrorCode::LimitExceeded => "limit exceeded",
            ErrorCode::RateLimited => "rate limited",
            ErrorCode::TokenExpired => "token expired",
            ErrorCode::AlreadySubscribed => "already subscribed",
            ErrorCode::NotSubscribed => "not subscribed",
            ErrorCode::Unrecoverable => "unrecoverable position",
        }
    }
}

impl From<ErrorCode> for u16 {
    fn from(c: ErrorCode) -> u16 {
        c.code()
    }
}

impl TryFrom<u16> for ErrorCode {
    type Error = String;
    fn try_from(v: u16) -> Result<Self, String> {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| c.code() == v)
            .ok_or_else(|| format!("unknown error code {v}"))
    }
}

/// A close code, sent in a `disconnect` push and as the WebSocket close code.
/// 3000–3499: the client reconnects (with backoff); 3500–3999: it does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DisconnectCode(pub u16);

impl DisconnectCode {
    /// Server shutting down; reconnect after `delay_ms`.
    pub const SHUTDOWN: Self = Self(3001);
    /// Outbox overflowed; reconnect and recover.
    pub const SLOW_CONSUMER: Self = Self(3002);
    /// The server lost state it needs; reconnect and recover.
    pub const INSUFFICIENT_STATE: Self = Self(3003);
    /// No pong in time.
    pub const NO_PONG: Self = Self(3004);
    /// The connection token expired without refresh: fetch a new token, reconnect.
    pub const TOKEN_EXPIRED: Self = Self(3005);
    /// Disconnected by the server API; may come back.
    pub const FORCE_RECONNECT: Self = Self(3006);
    /// The client sent something the server cannot accept.
    pub const BAD_REQUEST: Self = Self(3500);
    /// The connection token is invalid.
    pub const INVALID_TOKEN: Self = Self(3501);
    /// Forbidden: the client must not come back.
    pub const FORBIDDEN: Self = Self(3502);
    /// Too many connections.
    pub const CONNECTION_LIMIT: Self = Self(3503);

    /// Whether a client should reconnect after this code.
    pub fn reconnect(self) -> bool {
        (3000..3500).contains(&self.0)
    }

    /// The default reason text.
    pub fn reason(self) -> &'static str {
        match self.0 {
            3001 => "server shutting down",
            3002 => "slow consumer",
            3003 => "insufficient state",
            3004 => "no pong",
            3005 => "token expired",
            3006 => "disconnected by server",
            3500 => "bad request",
            3501 => "invalid token",
            3502 => "forbidden",
            3503 => "connection limit",
            _ => "disconnect",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_u16() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::try_from(c.code()), Ok(c));
        }
        assert_eq!(ErrorCode::BadRequest.code(), 101);
        assert_eq!(ErrorCode::Unrecoverable.code(), 109);
        assert!(ErrorCode::try_from(110).is_err());
    }

    #[test]
    fn reconnect_ranges() {
        assert!(DisconnectCode::SLOW_CONSUMER.reconnect());
        assert!(!DisconnectCode::INVALID_TOKEN.reconnect());
    }
}
