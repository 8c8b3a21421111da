/**
 * Typed errors. Every failure the SDK reports is a {@link TidingsError}
 * carrying either a protocol error code (100-109, see docs/protocol.md) or
 * one of the client-side codes below, so callers branch on `code`, never on
 * the message text.
 */

/** Error codes: the protocol's (100-109) and the SDK's own (1-9). */
export const ErrorCode = {
  /** Client-side: the connection was lost before an answer came. */
  Disconnected: 1,
  /** Client-side: no answer in time. */
  Timeout: 2,
  /** Client-side: the client or subscription was closed by the app. */
  Closed: 3,
  /** Client-side: the server's answer could not be understood. */
  BadResponse: 4,
  /** Client-side: no transport could be opened. */
  TransportFailed: 5,
  /** Protocol: the server failed (temporary). */
  Internal: 100,
  /** Protocol: malformed request, bad channel name, bad idempotency key. */
  BadRequest: 101,
  /** Protocol: the channel's namespace is not configured. */
  UnknownChannel: 102,
  /** Protocol: not allowed (anonymous, user-limited channel, invalid token...). */
  PermissionDenied: 103,
  /** Protocol: a limit was exceeded (message too large, too many subscriptions). */
  LimitExceeded: 104,
  /** Protocol: rate limited (temporary). */
  RateLimited: 105,
  /** Protocol: the token has expired. */
  TokenExpired: 106,
  /** Protocol: already subscribed to the channel. */
  AlreadySubscribed: 107,
  /** Protocol: not subscribed to the channel. */
  NotSubscribed: 108,
  /** Protocol: the position cannot be recovered. */
  Unrecoverable: 109,
} as const;

/** The error every SDK promise rejects with and every `error` event carries. */
export class TidingsError extends Error {
  /** A protocol code (100-109) or a client-side code (1-9), see {@link ErrorCode}. */
  readonly code: number;
  /** True when the same action may succeed later (codes 100, 105, and lost connections). */
  readonly temporary: boolean;

  /** Creates an error; `temporary` defaults to what the protocol says for `code`. */
  constructor(code: number, message: string, temporary?: boolean) {
    super(message);
    this.name = 'TidingsError';
    this.code = code;
    this.temporary = temporary ?? defaultTemporary(code);
  }

  /**
   * Builds an error from a server error body `{code, message, temporary}`.
   * Never throws: a malformed body becomes a {@link ErrorCode.BadResponse}.
   */
  static fromBody(body: unknown): TidingsError {
    if (body && typeof body === 'object') {
      const b = body as Record<string, unknown>;
      if (typeof b.code === 'number') {
        const message = typeof b.message === 'string' ? b.message : `error ${b.code}`;
        const temporary = typeof b.temporary === 'boolean' ? b.temporary : undefined;
        return new TidingsError(b.code, message, temporary);
      }
    }
    return new TidingsError(ErrorCode.BadResponse, 'malformed error from the server');
  }
}

function defaultTemporary(code: number): boolean {
  return code === ErrorCode.Internal || code === ErrorCode.RateLimited
    || code === ErrorCode.Disconnected || code === ErrorCode.Timeout
    || code === ErrorCode.TransportFailed;
}

/**
 * Whether a disconnect/close code forbids reconnecting: the protocol's
 * 3500-3999 range ("do not reconnect"). WebSocket-layer codes (1xxx) and
 * 3000-3499 allow it.
 */
export function isTerminalCloseCode(code: number): boolean {
  return code >= 3500 && code <= 3999;
}
