import { type Cursors, type DeviceKey, type InboxEvent, type InboxPage, type MembersPage, type PageOptions } from './chat.js';
import { E2ee, type E2eeOptions } from './e2ee.js';
import { Emitter } from './emitter.js';
import { TidingsError } from './errors.js';
import { type OutboxEntry, type OutboxStore } from './outbox.js';
import { Subscription, type HistoryOptions, type HistoryResult, type PublishOptions, type SubscriptionHost } from './subscription.js';
import type { FetchFn, WebSocketCtor } from './transport.js';
import type { Position, PresenceEntry, PublishResult, TransportName } from './types.js';
/** The SDK's version, sent in `connect`. */
export declare const VERSION = "0.1.0";
/** Connection state. */
export type ConnectionState = 'disconnected' | 'connecting' | 'connected';
/** Options of {@link TidingsClient}. */
export interface ClientOptions {
    /** The server's base URL, `http(s)://host:port`. Default: the page's origin. */
    url?: string;
    /** A fixed connection token (null or absent: anonymous, unless `getToken` is given). */
    token?: string | null;
    /**
     * Fetches a connection token: called before connecting when no valid
     * token is held, after the server said it expired (error 106, disconnect
     * 3005), and ahead of expiry to `refresh` the connection. Null: anonymous.
     */
    getToken?: () => Promise<string | null> | string | null;
    /** Transports to try, in order. Default `['websocket', 'sse', 'poll']`. */
    transports?: TransportName[];
    /** WebSocket implementation. Default: the global one (in Node 20, pass the `ws` package's). */
    WebSocket?: WebSocketCtor;
    /**
     * The WebSocket encoding: `json` (default) or `msgpack` (the
     * `tidings.v1.msgpack` subprotocol: binary frames, fewer bytes). SSE and
     * long-poll are JSON either way.
     */
    encoding?: 'json' | 'msgpack';
    /** fetch implementation. Default: the global one. */
    fetch?: FetchFn;
    /** Smallest reconnect backoff window, ms (default 500). */
    minReconnectDelay?: number;
    /** Largest reconnect delay, ms (default 20000). */
    maxReconnectDelay?: number;
    /** Give up opening a transport after this long, ms (default 10000). */
    connectTimeout?: number;
    /** Give up waiting for an answer after this long, ms (default 15000). */
    commandTimeout?: number;
    /**
     * Where queued publishes are kept: a store, or false for none (publishes
     * then fail at once when disconnected). Default: IndexedDB in browsers,
     * memory elsewhere.
     */
    outbox?: OutboxStore | false;
    /** Name of the default outbox store (use the user id). Default `default`. */
    outboxName?: string;
    /**
     * The reconnect backoff starts over only once a connection has stayed open
     * this long, ms (default 5000): a server that accepts and then closes at
     * once (3002, 3006, a crash loop) gets growing delays.
     */
    stableAfter?: number;
    /** Uniform random numbers in [0, 1) for backoff jitter; for tests. */
    random?: () => number;
    /**
     * End-to-end encryption for chat channels: `true` or options (device id,
     * key store). Envelopes in every subscription are then opened, and
     * publishes with `encrypt` are sealed. See {@link E2ee}.
     */
    e2ee?: E2eeOptions | boolean;
    /** Cursor updates (`markRead`, `markDelivered`, receipts) are sent at most once per this many ms per channel (default 500). */
    cursorInterval?: number;
}
/** Options of {@link TidingsClient.subscribe}. */
export interface SubscribeOptions {
    /**
     * Resume after this position (`{offset, epoch}` saved from a previous
     * run), or `'start'` for the whole retained history first.
     */
    since?: Position | 'start';
    /**
     * Start from the channel's latest snapshot and the publications after it
     * (a `snapshot` event, then `publication`s). The server falls back to the
     * snapshot by itself whenever a position cannot be recovered.
     */
    snapshot?: boolean;
    /**
     * `'fossil'`: receive payloads as Fossil deltas against the previous one
     * where the server can (fewer bytes for state that changes a little at a
     * time); applied here, the app sees whole payloads.
     */
    delta?: 'fossil';
    /**
     * Members channels: advance this user's `delivered` cursor by itself as
     * publications arrive (coalesced), and read the members for
     * `deliveryState`.
     */
    receipts?: boolean;
    /**
     * Seal `sub.publish` data end to end by default (see {@link E2ee}); the
     * client's default E2EE is made if it has none. Envelopes are opened
     * whenever the client has E2EE.
     */
    encrypt?: boolean;
}
/** Payload of the client's `state` event. */
export interface StateEvent {
    /** The new state. */
    state: ConnectionState;
    /** The transport in use or being tried; null when disconnected. */
    transport: TransportName | null;
}
/** Payload of the `connected` event. */
export interface ConnectedEvent {
    /** The transport in use. */
    transport: TransportName;
    /** The connection id (WebSocket only). */
    client?: string;
    /** The user id (WebSocket only). */
    user?: string;
    /** What the backend's connect hook gave this connection (WebSocket only). */
    data?: unknown;
}
/** Payload of the `disconnected` event. */
export interface DisconnectedEvent {
    /** Disconnect or close code; 0 when the connection was just lost. */
    code: number;
    /** Why. */
    reason: string;
    /** Whether the client will reconnect. */
    reconnect: boolean;
    /** With code 3001: the server asked to wait this long (ms) before reconnecting; the client does. */
    delayMs?: number;
}
/** Events of {@link TidingsClient}. */
export interface ClientEvents {
    /** Connection state changed. */
    state: StateEvent;
    /** Connected (again). */
    connected: ConnectedEvent;
    /** The connection was lost or closed. */
    disconnected: DisconnectedEvent;
    /** A reconnect is scheduled in `delay` ms. */
    reconnecting: {
        delay: number;
        transport: TransportName;
    };
    /** A connection-level error (a terminal one stops reconnecting). */
    error: TidingsError;
    /** An outbox entry was acknowledged. */
    published: {
        entry: OutboxEntry;
        result: PublishResult;
    };
    /** An outbox entry was refused by the server and dropped. */
    publishFailed: {
        entry: OutboxEntry;
        error: TidingsError;
    };
    /** Entries stored by a previous run were loaded and will be sent. */
    outboxRestored: OutboxEntry[];
    /** One of the user's conversations changed, or the user stopped being a member (`removed`). */
    inbox: InboxEvent;
}
/** The Tidings client. */
export declare class TidingsClient extends Emitter<ClientEvents> implements SubscriptionHost {
    private readonly url;
    private readonly transports;
    private readonly WebSocketImpl;
    private readonly fetchFn;
    private readonly backoff;
    private readonly connectTimeout;
    private readonly commandTimeout;
    private readonly getToken;
    private token;
    private tokenStale;
    private _state;
    private _transport;
    private wanted;
    private session;
    /** Counts attempts so that a superseded one stays quiet. */
    private attemptId;
    private timer;
    private refreshTimer;
    /** Resets the backoff once the connection has stayed open `stableAfter` ms. */
    private stableTimer;
    private readonly stableAfter;
    /** Index of the transport that last worked: each cycle starts there. */
    private sticky;
    private current;
    private triedInCycle;
    private readonly subs;
    private readonly store;
    private readonly queue;
    private readonly waiters;
    /** Keys sent on the current session and not answered yet. */
    private readonly inflight;
    private lastSeq;
    private outboxLoaded;
    private loaded;
    /** The session the HTTP flush loop is sending on, if one runs. */
    private httpFlushing;
    /** A re-flush after a WebSocket publish timed out. */
    private reflushTimer;
    /** Widening delays between resends of publishes refused as temporary. */
    private publishRetry;
    /**
     * Channels whose subscribe waits for a position lookup before it is sent,
     * with the session it is for: publishes into them wait too, since the
     * server refuses a publish from a connection not subscribed yet (103 under
     * `client_publish = "subscribers"`).
     */
    private readonly subscribePending;
    /** Retries of subscribes refused with a temporary error, by channel. */
    private readonly subRetries;
    private readonly minReconnectDelay;
    private readonly maxReconnectDelay;
    private readonly encoding;
    private readonly random;
    private readonly onOnline;
    private readonly onOffline;
    private readonly cursorSync;
    /** The app called `disconnect()`: cursor updates wait for the next `connect()`. */
    private closedByApp;
    private readonly e2eeOptions;
    private e2eeInstance;
    /** Seals per channel, in publish order. */
    private readonly sealChains;
    /** The client id of the current WebSocket connection, if any. */
    clientId: string | null;
    /** The user id the server gave (WebSocket), if any. */
    user: string | null;
    /** Creates a client; nothing happens on the network until {@link connect}. */
    constructor(opts?: ClientOptions);
    /**
     * End-to-end encryption of this client's device: made from the `e2ee`
     * option (or by the first subscription with `encrypt`); null otherwise.
     */
    get e2ee(): E2ee | null;
    /** @internal The E2EE instance; `create` makes the default one when there is none. */
    e2eeFor(create: boolean): E2ee | null;
    /** The connection state. */
    get state(): ConnectionState;
    /** The transport in use (or being tried), null when disconnected. */
    get transport(): TransportName | null;
    /** Resolves once entries stored by a previous run are loaded. */
    get ready(): Promise<void>;
    /** Starts connecting (and keeps reconnecting until {@link disconnect}). */
    connect(): void;
    /** Closes the connection and stops reconnecting. Queued publishes stay queued. */
    disconnect(): void;
    /**
     * Subscribes to a channel, or returns the existing subscription. It is made
     * on the current connection and again on every reconnect.
     */
    subscribe(channel: string, opts?: SubscribeOptions): Subscription;
    /** The subscription to `channel`, if any. */
    getSubscription(channel: string): Subscription | undefined;
    /**
     * Publishes `data` into `channel` and resolves with its offset once the
     * server acknowledged it; rejects with a {@link TidingsError} when the
     * server refuses it. While disconnected the publish waits in the outbox
     * (stored, so it survives a reload) and is sent in order after
     * reconnecting, under the same idempotency key: a resend never publishes
     * twice (within the server's `idempotency_window`).
     */
    publish(channel: string, data: unknown, opts?: PublishOptions): Promise<PublishResult>;
    /**
     * Seals `data` for the channel's members, then publishes the envelope.
     * Seals of one channel run one after the other, so publishes keep their
     * order; a seal that fails (the key directory cannot be read) rejects.
     */
    private publishSealed;
    /** The publishes waiting for an acknowledgement, in sending order. */
    pendingPublishes(channel?: string): OutboxEntry[];
    /** Reads a channel's history (over the WebSocket when open, else HTTP). */
    history(channel: string, opts?: HistoryOptions): Promise<HistoryResult>;
    /** Reads a channel's whole presence, page by page. */
    presence(channel: string): Promise<Record<string, PresenceEntry>>;
    /** Counts a channel's connections and distinct users. */
    presenceStats(channel: string): Promise<{
        clients: number;
        users: number;
    }>;
    /** When users were last seen (ms since the Unix epoch, null: never). */
    lastSeen(users: string[]): Promise<Record<string, number | null>>;
    /**
     * Moves this user's cursors in a members channel (at once, not
     * coalesced; see {@link markRead} for that) and resolves with the stored
     * cursors. A lower value than stored changes nothing. Errors: 101 (beyond
     * the top, neither given, not a members namespace), 103 (not a member).
     */
    cursor(channel: string, c: {
        delivered?: number;
        read?: number;
    }): Promise<Cursors>;
    /**
     * Marks `channel` read up to `offset`, coalesced: at most one `cursor`
     * command per channel per `cursorInterval` (500 ms), carrying the highest
     * offset asked; never a value lower than sent. Resolves with the stored
     * cursors once sent (rejects when the server refuses); ignoring the
     * promise is safe.
     */
    markRead(channel: string, offset: number): Promise<Cursors>;
    /** Marks `channel` delivered up to `offset` (this device has it), coalesced like {@link markRead}. */
    markDelivered(channel: string, offset: number): Promise<Cursors>;
    /** @internal */
    flushCursors(channel: string): void;
    /** @internal */
    cursorsKnown(channel: string, c: Cursors): void;
    /** One page of this user's conversations, newest activity first (see {@link Inbox} for a kept list). */
    inbox(opts?: PageOptions): Promise<InboxPage>;
    /** One page of a members channel's members, sorted by user id (members only). */
    members(channel: string, opts?: PageOptions): Promise<MembersPage>;
    /**
     * Registers this user's device public key (`keys` with `device` and
     * `key`: an ECDH P-256 uncompressed point, base64url). {@link E2ee} does
     * this by itself. Errors: 101 malformed, 103 anonymous, 104 more than 16
     * devices.
     */
    registerDeviceKey(device: string, key: string): Promise<void>;
    /** Looks device keys up: of `users`, or of the members of `channel`. */
    deviceKeys(q: {
        users?: string[];
        channel?: string;
    }): Promise<Record<string, DeviceKey[]>>;
    /** @internal */
    resubscribe(sub: Subscription, serverEnded: boolean): void;
    /** @internal */
    removeSubscription(sub: Subscription): void;
    private attempt;
    private makeSession;
    /**
     * What an SSE or long-poll (re)start asks for: every channel but those
     * whose subscribe waits for a position lookup (they join once it is done).
     */
    private subscribeRequests;
    private opened;
    private subscribedReply;
    /** Subscribes `sub` again after a backoff delay (a temporary refusal). */
    private retrySubscribe;
    private clearSubRetry;
    private onPush;
    private closed;
    /**
     * A transport could not be opened. If Tidings answers plain HTTP, the
     * transport itself is blocked (a proxy that refuses WebSockets, one that
     * buffers streams): try the next one at once. If not, the network or the
     * server is down: keep the transport and back off, so that an outage does
     * not push the client off a transport that works.
     */
    private openFailed;
    /**
     * Whether Tidings itself answers a plain HTTP request. `GET /v1/poll`
     * without a channel is answered at once with 400 and a Tidings error body
     * (`{"error": {"code": 101, ...}}`), and carries CORS headers, so it works
     * from pages on other origins too. Any other answer (a reverse proxy's 502
     * while Tidings restarts, a captive portal's page) means the server is not
     * there: an outage, not a blocked transport.
     */
    private reachable;
    private stop;
    private retryLater;
    /** The browser is back online: try now rather than at the end of the backoff. */
    private wake;
    /** The browser went offline: drop the connection now rather than after a timeout. */
    private goneOffline;
    private dropSession;
    /**
     * What ends with a connection: answers awaited on it, the refresh timer,
     * pending subscribe retries; every subscription resubscribes (and so
     * recovers) on the next one.
     */
    private sessionGone;
    private setState;
    private clearTimers;
    private clearRefresh;
    /**
     * Subscribes `sub` on the open `session`: at once (in order with the
     * publishes that follow) unless its position must be looked up first; then
     * publishes into the channel wait until the subscribe is sent.
     */
    private subscribeNow;
    /**
     * Finds a starting position where the transport needs one (only while the
     * subscription has none):
     *
     * - `since: 'start'`: just before the oldest publication a subscribe can
     *   recover, i.e. the oldest of the newest `client.recovery_max` retained
     *   ones (a `history` read, newest first, without `limit`: the server caps
     *   it at `recovery_max`), or the top when nothing is retained. Asking from
     *   offset 0 would get `recovered: false` as soon as history is trimmed.
     * - over SSE and long-polling, fresh subscriptions: their top, so that they
     *   have a `subscribed` with a position and resume exactly on any later
     *   transport.
     *
     * A failed lookup (ephemeral channel, history closed) leaves the channel
     * live-only. `startPending` stays set until a subscribe reply is handled.
     */
    private lookUpPositions;
    private currentToken;
    private scheduleRefresh;
    private refreshNow;
    private action;
    private loadOutbox;
    /** Sends what the outbox holds, in order, when connected. */
    private flush;
    /** Flushes again shortly, if `s` is still the session. */
    private reflushLater;
    /** The pause before sending again: 1 s, or a widening backoff (with
     * jitter) while the server refuses publishes as temporary. */
    private resendDelay;
    /** Sends one entry; resolves false when it must be sent again. */
    private send;
    private settle;
}
/** The `exp` claim of a JWT, or null (unreadable or none). Never throws. */
export declare function jwtExp(token: string): number | null;
/** The `sub` claim of a JWT (not verified: the server does that), or null. Never throws. */
export declare function jwtSub(token: string): string | null;
