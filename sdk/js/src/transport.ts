/**
 * What the client needs from a transport. A {@link Session} is one attempt at
 * a connection: the client starts one, is told synchronously (in the order the
 * server sent things) when it opens, of each push and of its end, and starts
 * a new one to reconnect. Callbacks are synchronous on purpose: the `connect`
 * reply's recovered publications must be handled before the pushes that
 * follow it in the same frame.
 */
import type { Obj } from './codec.js';
import { TidingsError } from './errors.js';
import type { Position, TransportName } from './types.js';

/** A channel to subscribe, with the position to resume after. */
export interface SubscribeRequest {
  /** The channel name. */
  channel: string;
  /** Resume after this position; null for live publications only. */
  since: Position | null;
  /** Start from the channel's latest snapshot when there is no position (or it is lost). */
  snapshot?: boolean;
  /** Receive payloads as Fossil deltas where the server can. */
  delta?: 'fossil';
}

/** What a session reports when it opens. */
export interface OpenResult {
  /** Connection id (WebSocket only). */
  client?: string;
  /** User id (WebSocket only). */
  user?: string;
  /** Seconds until the token expires (WebSocket only). */
  expiresIn?: number;
  /** What the backend's connect hook gave the client (WebSocket only). */
  data?: unknown;
  /** One answer per requested channel: an `ok` subscribe reply or an error. */
  subscribed: Array<{ channel: string; ok?: Obj; error?: TidingsError }>;
}

/** How a session ended. */
export interface CloseInfo {
  /** Whether the session had opened (else: the transport could not be opened). */
  opened: boolean;
  /** Disconnect or close code; 0 when the connection was just lost. */
  code: number;
  /** Human-readable reason. */
  reason: string;
  /** Whether reconnecting is allowed. */
  reconnect: boolean;
  /** With code 3001: wait at least this long before reconnecting. */
  delayMs?: number;
  /** An error answer that ended the session (a token or permission error). */
  error?: TidingsError;
}

/** Synchronous callbacks from a session to the client. */
export interface SessionHandlers {
  /** The session is open and these channels are subscribed (or failed). */
  onOpen(result: OpenResult): void;
  /** A later subscribe was answered. */
  onSubscribed(channel: string, ok: Obj | null, error: TidingsError | null): void;
  /** A push: `pub`, `join`, `leave`, `unsub`, `reset`. */
  onPush(push: Obj): void;
  /** The session ended; called at most once, never after {@link Session.close}. */
  onClose(info: CloseInfo): void;
}

/** One connection attempt over one transport. */
export interface Session {
  /** The transport's name. */
  readonly transport: TransportName;
  /** Opens the connection with the token and the channels to subscribe. */
  start(token: string | null, subs: SubscribeRequest[]): void;
  /** Runs a client action (`publish`, `history`, ...) and resolves with its `ok` object. */
  call(op: string, args: Obj): Promise<Obj>;
  /** Subscribes one more channel; the answer comes through `onSubscribed`. */
  subscribe(req: SubscribeRequest): void;
  /** Ends a subscription. */
  unsubscribe(channel: string): void;
  /** Replaces the token (WebSocket: the `refresh` command). */
  refresh(token: string): Promise<void>;
  /** Closes the session; no callback follows. */
  close(): void;
}

/** A WebSocket constructor (the browser's, or e.g. the `ws` package in Node). */
export type WebSocketCtor = new (url: string, protocols?: string | string[]) => WebSocket;

/** The fetch function (the global one by default). */
export type FetchFn = typeof fetch;
