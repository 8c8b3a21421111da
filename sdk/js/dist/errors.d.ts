/**
 * Typed errors. Every failure the SDK reports is a {@link TidingsError}
 * carrying either a protocol error code (100-109, see docs/protocol.md) or
 * one of the client-side codes below, so callers branch on `code`, never on
 * the message text.
 */
/** Error codes: the protocol's (100-109) and the SDK's own (1-9). */
export declare const ErrorCode: {
    /** Client-side: the connection was lost before an answer came. */
    readonly Disconnected: 1;
    /** Client-side: no answer in time. */
    readonly Timeout: 2;
    /** Client-side: the client or subscription was closed by the app. */
    readonly Closed: 3;
    /** Client-side: the server's answer could not be understood. */
    readonly BadResponse: 4;
    /** Client-side: no transport could be opened. */
    readonly TransportFailed: 5;
    /** Protocol: the server failed (temporary). */
    readonly Internal: 100;
    /** Protocol: malformed request, bad channel name, bad idempotency key. */
    readonly BadRequest: 101;
    /** Protocol: the channel's namespace is not configured. */
    readonly UnknownChannel: 102;
    /** Protocol: not allowed (anonymous, user-limited channel, invalid token...). */
    readonly PermissionDenied: 103;
    /** Protocol: a limit was exceeded (message too large, too many subscriptions). */
    readonly LimitExceeded: 104;
    /** Protocol: rate limited (temporary). */
    readonly RateLimited: 105;
    /** Protocol: the token has expired. */
    readonly TokenExpired: 106;
    /** Protocol: already subscribed to the channel. */
    readonly AlreadySubscribed: 107;
    /** Protocol: not subscribed to the channel. */
    readonly NotSubscribed: 108;
    /** Protocol: the position cannot be recovered. */
    readonly Unrecoverable: 109;
};
/** The error every SDK promise rejects with and every `error` event carries. */
export declare class TidingsError extends Error {
    /** A protocol code (100-109) or a client-side code (1-9), see {@link ErrorCode}. */
    readonly code: number;
    /** True when the same action may succeed later (codes 100, 105, and lost connections). */
    readonly temporary: boolean;
    /** Creates an error; `temporary` defaults to what the protocol says for `code`. */
    constructor(code: number, message: string, temporary?: boolean);
    /**
     * Builds an error from a server error body `{code, message, temporary}`.
     * Never throws: a malformed body becomes a {@link ErrorCode.BadResponse}.
     */
    static fromBody(body: unknown): TidingsError;
}
/**
 * Whether a disconnect/close code forbids reconnecting: the protocol's
 * 3500-3999 range ("do not reconnect"). WebSocket-layer codes (1xxx) and
 * 3000-3499 allow it.
 */
export declare function isTerminalCloseCode(code: number): boolean;
