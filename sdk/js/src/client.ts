/**
 * The Tidings client: one logical connection over WebSocket, SSE or
 * long-polling, that reconnects by itself, resubscribes every channel from
 * its last position, and delivers publishes through an ordered, persistent,
 * idempotent outbox.
 */
import { isObj, parseJson, str, uint, type Obj } from './codec.js';
import { Backoff } from './backoff.js';
import {
  CursorSync, decodeCursors, decodeInboxEvent, decodeInboxPage, decodeKeys, decodeMembersPage,
  type Cursors, type DeviceKey, type InboxEvent, type InboxPage, type MembersPage, type PageOptions,
} from './chat.js';
import { E2ee, type E2eeOptions } from './e2ee.js';
import { Emitter } from './emitter.js';
import { ErrorCode, TidingsError } from './errors.js';
import { httpAction } from './http.js';
import { defaultOutboxStore, newKey, nextSeq, type OutboxEntry, type OutboxStore } from './outbox.js';
import { decodePresenceMap, decodePublications } from './codec.js';
import {
  Subscription,
  type HistoryOptions,
  type HistoryResult,
  type PublishOptions,
  type SubscriptionHost,
} from './subscription.js';
import type { CloseInfo, FetchFn, OpenResult, Session, SessionHandlers, SubscribeRequest, WebSocketCtor } from './transport.js';
import { PollSession } from './transport_poll.js';
import { SseSession } from './transport_sse.js';
import { WsSession } from './transport_ws.js';
import type { Position, PresenceEntry, PublishResult, TransportName } from './types.js';

/** The SDK's version, sent in `connect`. */
export const VERSION = '0.1.0';

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
  reconnecting: { delay: number; transport: TransportName };
  /** A connection-level error (a terminal one stops reconnecting). */
  error: TidingsError;
  /** An outbox entry was acknowledged. */
  published: { entry: OutboxEntry; result: PublishResult };
  /** An outbox entry was refused by the server and dropped. */
  publishFailed: { entry: OutboxEntry; error: TidingsError };
  /** Entries stored by a previous run were loaded and will be sent. */
  outboxRestored: OutboxEntry[];
  /** One of the user's conversations changed, or the user stopped being a member (`removed`). */
  inbox: InboxEvent;
}

interface Waiter {
  resolve: (r: PublishResult) => void;
  reject: (e: TidingsError) => void;
}

/** The Tidings client. */
export class TidingsClient extends Emitter<ClientEvents> implements SubscriptionHost {
  private readonly url: string;
  private readonly transports: TransportName[];
  private readonly WebSocketImpl: WebSocketCtor | undefined;
  private readonly fetchFn: FetchFn;
  private readonly backoff: Backoff;
  private readonly connectTimeout: number;
  private readonly commandTimeout: number;
  private readonly getToken: ClientOptions['getToken'];
  private token: string | null;
  private tokenStale: boolean;

  private _state: ConnectionState = 'disconnected';
  private _transport: TransportName | null = null;
  private wanted = false;
  private session: Session | null = null;
  /** Counts attempts so that a superseded one stays quiet. */
  private attemptId = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;
  /** Resets the backoff once the connection has stayed open `stableAfter` ms. */
  private stableTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly stableAfter: number;
  /** Index of the transport that last worked: each cycle starts there. */
  private sticky = 0;
  private current = 0;
  private triedInCycle = 0;
  private readonly subs = new Map<string, Subscription>();

  private readonly store: OutboxStore | null;
  private readonly queue: OutboxEntry[] = [];
  private readonly waiters = new Map<string, Waiter>();
  /** Keys sent on the current session and not answered yet. */
  private readonly inflight = new Set<string>();
  private lastSeq = 0;
  private outboxLoaded: Promise<void>;
  private loaded = false;
  /** The session the HTTP flush loop is sending on, if one runs. */
  private httpFlushing: Session | null = null;
  /** A re-flush after a WebSocket publish timed out. */
  private reflushTimer: ReturnType<typeof setTimeout> | null = null;
  /** Widening delays between resends of publishes refused as temporary. */
  private publishRetry: Backoff | null = null;
  /**
   * Channels whose subscribe waits for a position lookup before it is sent,
   * with the session it is for: publishes into them wait too, since the
   * server refuses a publish from a connection not subscribed yet (103 under
   * `client_publish = "subscribers"`).
   */
  private readonly subscribePending = new Map<string, { session: Session; done: Promise<void> }>();
  /** Retries of subscribes refused with a temporary error, by channel. */
  private readonly subRetries = new Map<string, { backoff: Backoff; timer: ReturnType<typeof setTimeout> | null }>();
  private readonly minReconnectDelay: number;
  private readonly maxReconnectDelay: number;
  private readonly encoding: 'json' | 'msgpack';
  private readonly random: (() => number) | undefined;
  private readonly onOnline = () => this.wake();
  private readonly onOffline = () => this.goneOffline();
  private readonly cursorSync: CursorSync;
  /** The app called `disconnect()`: cursor updates wait for the next `connect()`. */
  private closedByApp = false;
  private readonly e2eeOptions: E2eeOptions | null;
  private e2eeInstance: E2ee | null = null;
  /** Seals per channel, in publish order. */
  private readonly sealChains = new Map<string, Promise<void>>();

  /** The client id of the current WebSocket connection, if any. */
  clientId: string | null = null;
  /** The user id the server gave (WebSocket), if any. */
  user: string | null = null;

  /** Creates a client; nothing happens on the network until {@link connect}. */
  constructor(opts: ClientOptions = {}) {
    super();
    const loc = (globalThis as { location?: Location }).location;
    this.url = opts.url ?? (loc ? loc.origin : 'http://127.0.0.1:8000');
    this.transports = opts.transports?.length ? [...opts.transports] : ['websocket', 'sse', 'poll'];
    this.encoding = opts.encoding === 'msgpack' ? 'msgpack' : 'json';
    this.WebSocketImpl = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
    if (!this.WebSocketImpl) this.transports = this.transports.filter((t) => t !== 'websocket');
    if (this.transports.length === 0) this.transports = ['sse', 'poll'];
    const f = opts.fetch ?? globalThis.fetch;
    // Calling a global fetch detached from globalThis throws in browsers.
    this.fetchFn = opts.fetch ? f : ((input, init) => globalThis.fetch(input, init)) as FetchFn;
    this.minReconnectDelay = opts.minReconnectDelay ?? 500;
    this.maxReconnectDelay = opts.maxReconnectDelay ?? 20_000;
    this.random = opts.random;
    this.backoff = new Backoff(this.minReconnectDelay, this.maxReconnectDelay, opts.random);
    this.stableAfter = opts.stableAfter ?? 5000;
    this.connectTimeout = opts.connectTimeout ?? 10_000;
    this.commandTimeout = opts.commandTimeout ?? 15_000;
    this.getToken = opts.getToken;
    this.token = opts.token ?? null;
    this.tokenStale = !this.token && !!this.getToken;
    this.store = opts.outbox === false ? null : opts.outbox ?? defaultOutboxStore(opts.outboxName ?? 'default');
    this.outboxLoaded = this.loadOutbox();
    this.cursorSync = new CursorSync({
      // Once the app disconnected, the last updates go over HTTP: the socket is closing.
      send: (args) => this.wanted ? this.action('cursor', args)
        : httpAction(this.fetchFn, this.url, this.token, 'cursor', args, this.commandTimeout),
      active: () => !this.closedByApp,
      random: opts.random,
    }, opts.cursorInterval ?? 500);
    this.e2eeOptions = opts.e2ee === true ? {} : opts.e2ee ? opts.e2ee : null;
    if (this.e2eeOptions) this.e2eeFor(true);
  }

  /**
   * End-to-end encryption of this client's device: made from the `e2ee`
   * option (or by the first subscription with `encrypt`); null otherwise.
   */
  get e2ee(): E2ee | null {
    return this.e2eeInstance;
  }

  /** @internal The E2EE instance; `create` makes the default one when there is none. */
  e2eeFor(create: boolean): E2ee | null {
    if (!this.e2eeInstance && create) {
      this.e2eeInstance = new E2ee({
        currentUser: async () => this.user ?? jwtSub((await this.currentToken()) ?? '') ?? null,
        registerDeviceKey: (device, key) => this.registerDeviceKey(device, key),
        deviceKeys: (q) => this.deviceKeys(q),
      }, this.e2eeOptions ?? {});
      if (this._state === 'connected') this.e2eeInstance.ready().catch(() => undefined);
    }
    return this.e2eeInstance;
  }

  /** The connection state. */
  get state(): ConnectionState {
    return this._state;
  }

  /** The transport in use (or being tried), null when disconnected. */
  get transport(): TransportName | null {
    return this._transport;
  }

  /** Resolves once entries stored by a previous run are loaded. */
  get ready(): Promise<void> {
    return this.outboxLoaded;
  }

  /** Starts connecting (and keeps reconnecting until {@link disconnect}). */
  connect(): void {
    if (this.wanted) return;
    this.wanted = true;
    this.closedByApp = false;
    const g = globalThis as { addEventListener?: (n: string, f: () => void) => void };
    g.addEventListener?.('online', this.onOnline);
    g.addEventListener?.('offline', this.onOffline);
    this.triedInCycle = 0;
    this.current = this.sticky;
    void this.attempt();
  }

  /** Closes the connection and stops reconnecting. Queued publishes stay queued. */
  disconnect(): void {
    this.wanted = false;
    // Best effort: the waiting cursor updates leave over HTTP, then wait.
    this.cursorSync.flushAll();
    this.closedByApp = true;
    this.cursorSync.pause();
    const g = globalThis as { removeEventListener?: (n: string, f: () => void) => void };
    g.removeEventListener?.('online', this.onOnline);
    g.removeEventListener?.('offline', this.onOffline);
    this.attemptId += 1;
    this.clearTimers();
    const wasOpen = this._state === 'connected';
    this.dropSession();
    this.sessionGone();
    this.setState('disconnected', null);
    if (wasOpen) this.emit('disconnected', { code: 0, reason: 'disconnected by the app', reconnect: false });
  }

  /**
   * Subscribes to a channel, or returns the existing subscription. It is made
   * on the current connection and again on every reconnect.
   */
  subscribe(channel: string, opts: SubscribeOptions = {}): Subscription {
    const existing = this.subs.get(channel);
    if (existing) return existing;
    const since = opts.since;
    if (since !== undefined && since !== 'start' && !validPosition(since)) {
      throw new TidingsError(ErrorCode.BadRequest,
        'subscribe: since must be {offset, epoch} with a non-negative integer offset and a string epoch', false);
    }
    if (opts.delta !== undefined && opts.delta !== 'fossil') {
      throw new TidingsError(ErrorCode.BadRequest, "subscribe: delta may only be 'fossil'", false);
    }
    const sub = new Subscription(this, channel, since, {
      snapshot: opts.snapshot === true,
      delta: opts.delta,
      receipts: opts.receipts === true,
      encrypt: opts.encrypt === true,
    });
    this.subs.set(channel, sub);
    if (this._state === 'connected' && this.session) this.subscribeNow(sub, this.session);
    return sub;
  }

  /** The subscription to `channel`, if any. */
  getSubscription(channel: string): Subscription | undefined {
    return this.subs.get(channel);
  }

  /**
   * Publishes `data` into `channel` and resolves with its offset once the
   * server acknowledged it; rejects with a {@link TidingsError} when the
   * server refuses it. While disconnected the publish waits in the outbox
   * (stored, so it survives a reload) and is sent in order after
   * reconnecting, under the same idempotency key: a resend never publishes
   * twice (within the server's `idempotency_window`).
   */
  publish(channel: string, data: unknown, opts: PublishOptions = {}): Promise<PublishResult> {
    if (opts.encrypt) return this.publishSealed(channel, data, opts);
    const entry: OutboxEntry = {
      key: opts.idempotencyKey ?? newKey(),
      channel,
      data,
      seq: (this.lastSeq = nextSeq(this.lastSeq)),
      createdAt: Date.now(),
    };
    if (opts.tags) entry.tags = opts.tags;
    if (opts.key !== undefined) entry.conflationKey = opts.key;
    if (opts.priority) entry.priority = opts.priority;
    if (opts.queue === false || !this.store) {
      const s = this.session;
      if (this._state !== 'connected' || !s) {
        return Promise.reject(new TidingsError(ErrorCode.Disconnected, 'publish: not connected'));
      }
      // A subscribe still waiting for its position lookup goes first.
      const pending = this.subscribePending.get(channel);
      if (pending?.session === s) {
        return pending.done.then(() => s.call('publish', publishArgs(entry))).then(toPublishResult);
      }
      return s.call('publish', publishArgs(entry)).then(toPublishResult);
    }
    const existing = this.waiters.get(entry.key);
    if (existing || this.queue.some((e) => e.key === entry.key)) {
      // The same key queued twice: one publish, both callers get its answer.
      return new Promise((resolve, reject) => {
        const prev = this.waiters.get(entry.key);
        this.waiters.set(entry.key, {
          resolve: (r) => { prev?.resolve(r); resolve(r); },
          reject: (e) => { prev?.reject(e); reject(e); },
        });
      });
    }
    const p = new Promise<PublishResult>((resolve, reject) => {
      this.waiters.set(entry.key, { resolve, reject });
    });
    this.queue.push(entry);
    this.store.put(entry).catch((e) => console.warn('tidings: could not store an outbox entry', e));
    this.flush();
    return p;
  }

  /**
   * Seals `data` for the channel's members, then publishes the envelope.
   * Seals of one channel run one after the other, so publishes keep their
   * order; a seal that fails (the key directory cannot be read) rejects.
   */
  private publishSealed(channel: string, data: unknown, opts: PublishOptions): Promise<PublishResult> {
    const e2ee = this.e2eeFor(true)!;
    const prev = this.sealChains.get(channel) ?? Promise.resolve();
    const sealed = prev.then(() => e2ee.seal(channel, data));
    // Registered first, so it runs before the next seal may start.
    const result = sealed.then((env) => this.publish(channel, env, { ...opts, encrypt: false }));
    const tail = sealed.then(() => undefined, () => undefined);
    this.sealChains.set(channel, tail);
    void tail.then(() => {
      if (this.sealChains.get(channel) === tail) this.sealChains.delete(channel);
    });
    return result;
  }

  /** The publishes waiting for an acknowledgement, in sending order. */
  pendingPublishes(channel?: string): OutboxEntry[] {
    return this.queue.filter((e) => channel === undefined || e.channel === channel).map((e) => ({ ...e }));
  }

  /** Reads a channel's history (over the WebSocket when open, else HTTP). */
  async history(channel: string, opts: HistoryOptions = {}): Promise<HistoryResult> {
    const args: Obj = { channel };
    if (opts.since) args.since = { offset: opts.since.offset, epoch: opts.since.epoch };
    if (opts.limit !== undefined) args.limit = opts.limit;
    if (opts.reverse !== undefined) args.reverse = opts.reverse;
    const ok = await this.action('history', args);
    const offset = uint(ok.offset);
    const epoch = str(ok.epoch);
    if (offset === undefined || epoch === undefined) {
      throw new TidingsError(ErrorCode.BadResponse, 'history: answer without offset and epoch', true);
    }
    return { publications: decodePublications(ok.publications, channel), offset, epoch };
  }

  /** Reads a channel's whole presence, page by page. */
  async presence(channel: string): Promise<Record<string, PresenceEntry>> {
    const out: Record<string, PresenceEntry> = {};
    let cursor: string | undefined;
    for (let page = 0; page < 1000; page++) {
      const args: Obj = { channel, limit: 1000 };
      if (cursor) args.cursor = cursor;
      const ok = await this.action('presence', args);
      Object.assign(out, decodePresenceMap(ok.clients) ?? {});
      cursor = str(ok.next_cursor);
      if (!cursor) break;
    }
    return out;
  }

  /** Counts a channel's connections and distinct users. */
  async presenceStats(channel: string): Promise<{ clients: number; users: number }> {
    const ok = await this.action('presence_stats', { channel });
    return { clients: uint(ok.clients) ?? 0, users: uint(ok.users) ?? 0 };
  }

  /** When users were last seen (ms since the Unix epoch, null: never). */
  async lastSeen(users: string[]): Promise<Record<string, number | null>> {
    const ok = await this.action('last_seen', { users });
    const out: Record<string, number | null> = {};
    if (isObj(ok.users)) for (const [u, t] of Object.entries(ok.users)) out[u] = uint(t) ?? null;
    return out;
  }

  // ---- chat (members namespaces) --------------------------------------

  /**
   * Moves this user's cursors in a members channel (at once, not
   * coalesced; see {@link markRead} for that) and resolves with the stored
   * cursors. A lower value than stored changes nothing. Errors: 101 (beyond
   * the top, neither given, not a members namespace), 103 (not a member).
   */
  async cursor(channel: string, c: { delivered?: number; read?: number }): Promise<Cursors> {
    const args: Obj = { channel };
    if (c.delivered !== undefined) args.delivered = c.delivered;
    if (c.read !== undefined) args.read = c.read;
    const cur = decodeCursors(await this.action('cursor', args));
    this.cursorSync.known(channel, cur);
    return cur;
  }

  /**
   * Marks `channel` read up to `offset`, coalesced: at most one `cursor`
   * command per channel per `cursorInterval` (500 ms), carrying the highest
   * offset asked; never a value lower than sent. Resolves with the stored
   * cursors once sent (rejects when the server refuses); ignoring the
   * promise is safe.
   */
  markRead(channel: string, offset: number): Promise<Cursors> {
    const p = this.cursorSync.want(channel, { read: offset });
    p.catch(() => undefined);
    return p;
  }

  /** Marks `channel` delivered up to `offset` (this device has it), coalesced like {@link markRead}. */
  markDelivered(channel: string, offset: number): Promise<Cursors> {
    const p = this.cursorSync.want(channel, { delivered: offset });
    p.catch(() => undefined);
    return p;
  }

  /** @internal */
  flushCursors(channel: string): void {
    this.cursorSync.flush(channel);
  }

  /** @internal */
  cursorsKnown(channel: string, c: Cursors): void {
    this.cursorSync.known(channel, c);
  }

  /** One page of this user's conversations, newest activity first (see {@link Inbox} for a kept list). */
  async inbox(opts: PageOptions = {}): Promise<InboxPage> {
    const args: Obj = {};
    if (opts.limit !== undefined) args.limit = opts.limit;
    if (opts.cursor !== undefined) args.cursor = opts.cursor;
    const page = decodeInboxPage(await this.action('inbox', args));
    for (const c of page.conversations) this.cursorSync.known(c.channel, { delivered: c.delivered, read: c.read });
    return page;
  }

  /** One page of a members channel's members, sorted by user id (members only). */
  async members(channel: string, opts: PageOptions = {}): Promise<MembersPage> {
    const args: Obj = { channel };
    if (opts.limit !== undefined) args.limit = opts.limit;
    if (opts.cursor !== undefined) args.cursor = opts.cursor;
    return decodeMembersPage(await this.action('members', args));
  }

  /**
   * Registers this user's device public key (`keys` with `device` and
   * `key`: an ECDH P-256 uncompressed point, base64url). {@link E2ee} does
   * this by itself. Errors: 101 malformed, 103 anonymous, 104 more than 16
   * devices.
   */
  async registerDeviceKey(device: string, key: string): Promise<void> {
    await this.action('keys', { device, key });
  }

  /** Looks device keys up: of `users`, or of the members of `channel`. */
  async deviceKeys(q: { users?: string[]; channel?: string }): Promise<Record<string, DeviceKey[]>> {
    const args: Obj = {};
    if (q.users) args.users = q.users;
    if (q.channel !== undefined) args.channel = q.channel;
    return decodeKeys(await this.action('keys', args));
  }

  /** @internal */
  resubscribe(sub: Subscription, serverEnded: boolean): void {
    const s = this.session;
    if (this._state !== 'connected' || !s) return; // the next connection subscribes it
    if (s.transport === 'websocket' && !serverEnded) s.unsubscribe(sub.channel);
    s.subscribe(sub.request());
  }

  /** @internal */
  removeSubscription(sub: Subscription): void {
    if (this.subs.get(sub.channel) !== sub) return;
    this.subs.delete(sub.channel);
    this.clearSubRetry(sub.channel);
    if (this._state === 'connected') this.session?.unsubscribe(sub.channel);
  }

  // ---- connecting ----------------------------------------------------

  private async attempt(): Promise<void> {
    this.clearTimers();
    if (!this.wanted) return;
    const id = ++this.attemptId;
    const name = this.transports[this.current % this.transports.length];
    this.setState('connecting', name);
    let token: string | null;
    try {
      token = await this.currentToken();
    } catch (e) {
      if (id !== this.attemptId) return;
      this.emit('error', e instanceof TidingsError ? e
        : new TidingsError(ErrorCode.Disconnected, `getToken failed: ${(e as Error)?.message ?? e}`));
      this.retryLater(this.backoff.next());
      return;
    }
    if (id !== this.attemptId || !this.wanted) return;
    const http = name !== 'websocket';
    await this.lookUpPositions([...this.subs.values()], http, token);
    if (id !== this.attemptId || !this.wanted) return;
    const session = this.makeSession(name, id);
    this.session = session;
    // Channels subscribed while the lookups ran (or whose lookup failed for
    // now) still need one: they are subscribed once the session is open,
    // each after its own lookup, never live in their place.
    session.start(token, [...this.subs.values()].filter((s) => !needsLookup(s, http)).map((s) => s.request()));
  }

  private makeSession(name: TransportName, id: number): Session {
    const h: SessionHandlers = {
      onOpen: (r) => { if (id === this.attemptId) this.opened(r); },
      onSubscribed: (channel, ok, err) => { if (id === this.attemptId) this.subscribedReply(channel, ok, err); },
      onPush: (push) => { if (id === this.attemptId) this.onPush(push); },
      onClose: (info) => { if (id === this.attemptId) this.closed(info); },
    };
    if (name === 'websocket') {
      return new WsSession({
        url: this.url,
        WebSocket: this.WebSocketImpl as WebSocketCtor,
        connectTimeout: this.connectTimeout,
        commandTimeout: this.commandTimeout,
        version: VERSION,
        encoding: this.encoding,
      }, h);
    }
    const opts = {
      url: this.url,
      fetch: this.fetchFn,
      connectTimeout: this.connectTimeout,
      commandTimeout: this.commandTimeout,
      subscriptions: () => this.subscribeRequests(),
    };
    return name === 'sse' ? new SseSession(opts, h) : new PollSession(opts, h);
  }

  /**
   * What an SSE or long-poll (re)start asks for: every channel but those
   * whose subscribe waits for a position lookup (they join once it is done).
   */
  private subscribeRequests(): SubscribeRequest[] {
    return [...this.subs.values()]
      .filter((s) => !this.subscribePending.has(s.channel))
      .map((s) => s.request());
  }

  private opened(r: OpenResult): void {
    this.sticky = this.current % this.transports.length;
    this.triedInCycle = 0;
    if (this.stableTimer) clearTimeout(this.stableTimer);
    this.stableTimer = setTimeout(() => {
      this.stableTimer = null;
      this.backoff.reset();
    }, this.stableAfter);
    const transport = this.session?.transport ?? 'websocket';
    this.clientId = r.client ?? null;
    // SSE and long-poll have no connect reply: the user is the token's `sub`.
    this.user = r.user ?? (this.token ? jwtSub(this.token) : null);
    this.setState('connected', transport);
    const answered = new Set<string>();
    for (const s of r.subscribed) {
      answered.add(s.channel);
      this.subscribedReply(s.channel, s.ok ?? null, s.error ?? null);
    }
    const ev: ConnectedEvent = { transport };
    if (r.client) ev.client = r.client;
    if (r.user) ev.user = r.user;
    if (r.data !== undefined) ev.data = r.data;
    this.emit('connected', ev);
    // Channels subscribed while the connection was opening.
    const session = this.session;
    if (session) {
      for (const sub of this.subs.values()) {
        if (!answered.has(sub.channel) && sub.state === 'subscribing') this.subscribeNow(sub, session);
      }
    }
    // WebSocket says when the token expires; over SSE and long-poll read it
    // from the token, since their requests and actions need a live one.
    const exp = r.expiresIn ?? (this.token ? secondsLeft(this.token) : null);
    if (exp !== null) this.scheduleRefresh(exp);
    this.flush();
    // Cursor updates that failed while disconnected; this device's key.
    this.cursorSync.flushAll();
    this.e2eeInstance?.ready().catch(() => undefined);
  }

  private subscribedReply(channel: string, ok: Obj | null, err: TidingsError | null): void {
    const sub = this.subs.get(channel);
    if (!sub) return;
    const transport = this.session?.transport ?? 'websocket';
    if (err) {
      if (err.code === ErrorCode.AlreadySubscribed) {
        // Subscribed already, e.g. by the token's `channels` claim: pushes
        // flow. A gap from the position is recovered on the next publication.
        this.clearSubRetry(channel);
        if (sub.state !== 'subscribed') sub.handleAlreadySubscribed(transport);
        return;
      }
      if (err.temporary) {
        // 100 (server failure), 105 (rate limited): try again later.
        this.retrySubscribe(sub);
        return;
      }
      this.clearSubRetry(channel);
      sub.handleError(err);
      return;
    }
    this.clearSubRetry(channel);
    // SSE/poll restarts announce every channel; only the waiting ones care.
    if (sub.state === 'subscribed') return;
    sub.handleSubscribed(ok ?? {}, transport);
  }

  /** Subscribes `sub` again after a backoff delay (a temporary refusal). */
  private retrySubscribe(sub: Subscription): void {
    let r = this.subRetries.get(sub.channel);
    if (!r) {
      r = { backoff: new Backoff(this.minReconnectDelay, this.maxReconnectDelay, this.random), timer: null };
      this.subRetries.set(sub.channel, r);
    }
    if (r.timer) clearTimeout(r.timer);
    const retry = r;
    retry.timer = setTimeout(() => {
      retry.timer = null;
      const s = this.session;
      // Not connected: the next connection subscribes it anyway.
      if (this._state !== 'connected' || !s || this.subs.get(sub.channel) !== sub) return;
      if (sub.state !== 'subscribing') return;
      this.subscribeNow(sub, s);
    }, Math.max(1, retry.backoff.next()));
  }

  private clearSubRetry(channel: string): void {
    const r = this.subRetries.get(channel);
    if (!r) return;
    if (r.timer) clearTimeout(r.timer);
    this.subRetries.delete(channel);
  }

  private onPush(push: Obj): void {
    if (push.push === 'inbox') {
      const e = decodeInboxEvent(push);
      if (!e) return;
      if (!e.removed) this.cursorSync.known(e.channel, { delivered: e.delivered, read: e.read });
      this.emit('inbox', e);
      return;
    }
    const channel = str(push.channel);
    if (channel === undefined) return;
    this.subs.get(channel)?.handlePush(push);
  }

  private closed(info: CloseInfo): void {
    this.session = null;
    this.sessionGone();
    const expired = info.error?.code === ErrorCode.TokenExpired || info.code === 3005;
    // A fixed token (no getToken) that expired stays expired: stop.
    const deadToken = expired && !this.getToken;
    const wasOpen = info.opened;
    if (wasOpen) {
      this.setState('disconnected', null);
      const ev: DisconnectedEvent = {
        code: info.code, reason: info.reason, reconnect: info.reconnect && this.wanted && !deadToken,
      };
      if (info.delayMs !== undefined) ev.delayMs = info.delayMs;
      this.emit('disconnected', ev);
    }
    if (!this.wanted) return;
    if (deadToken) {
      this.stop(info.error ?? new TidingsError(ErrorCode.TokenExpired,
        'the token expired and no getToken was given to fetch a new one', false));
      return;
    }
    if (expired) this.tokenStale = true;
    if (info.error && info.error.code !== ErrorCode.TokenExpired && !info.error.temporary) {
      this.stop(info.error);
      return;
    }
    if (!info.reconnect && !info.error) {
      this.stop(new TidingsError(info.code || ErrorCode.Closed, `disconnected: ${info.reason}`, false));
      return;
    }
    if (!wasOpen && !info.error) {
      void this.openFailed();
      return;
    }
    this.triedInCycle = 0;
    this.current = this.sticky;
    // On shutdown (3001) the server spreads its clients with delay_ms.
    this.retryLater(info.delayMs ?? this.backoff.next());
  }

  /**
   * A transport could not be opened. If Tidings answers plain HTTP, the
   * transport itself is blocked (a proxy that refuses WebSockets, one that
   * buffers streams): try the next one at once. If not, the network or the
   * server is down: keep the transport and back off, so that an outage does
   * not push the client off a transport that works.
   */
  private async openFailed(): Promise<void> {
    const id = this.attemptId;
    this.setState('connecting', this._transport);
    const reachable = this.transports.length > 1 && await this.reachable();
    if (id !== this.attemptId || !this.wanted) return;
    this.triedInCycle += 1;
    if (reachable && this.triedInCycle < this.transports.length) {
      this.current += 1;
      this.retryLater(0);
      return;
    }
    this.triedInCycle = 0;
    this.current = this.sticky;
    this.retryLater(this.backoff.next());
  }

  /**
   * Whether Tidings itself answers a plain HTTP request. `GET /v1/poll`
   * without a channel is answered at once with 400 and a Tidings error body
   * (`{"error": {"code": 101, ...}}`), and carries CORS headers, so it works
   * from pages on other origins too. Any other answer (a reverse proxy's 502
   * while Tidings restarts, a captive portal's page) means the server is not
   * there: an outage, not a blocked transport.
   */
  private async reachable(): Promise<boolean> {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), this.connectTimeout);
    try {
      const res = await this.fetchFn(`${this.url.replace(/\/+$/, '')}/v1/poll`, {
        cache: 'no-store',
        signal: ctrl.signal,
      });
      const body = parseJson(await res.text().catch(() => ''));
      return isObj(body) && isObj(body.error) && uint(body.error.code) !== undefined;
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  private stop(err: TidingsError): void {
    this.wanted = false;
    this.setState('disconnected', null);
    this.emit('error', err);
  }

  private retryLater(delay: number): void {
    this.clearTimers();
    if (!this.wanted) return;
    if (this._state !== 'disconnected') this.setState('disconnected', null);
    const transport = this.transports[this.current % this.transports.length];
    this.emit('reconnecting', { delay, transport });
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.attempt();
    }, delay);
  }

  /** The browser is back online: try now rather than at the end of the backoff. */
  private wake(): void {
    if (!this.wanted || this._state === 'connected') return;
    if (this._state === 'connecting' && this.session) return;
    this.triedInCycle = 0;
    this.current = this.sticky;
    void this.attempt();
  }

  /** The browser went offline: drop the connection now rather than after a timeout. */
  private goneOffline(): void {
    if (!this.wanted || !this.session) return;
    const wasOpen = this._state === 'connected';
    this.attemptId += 1;
    this.dropSession();
    this.sessionGone();
    this.setState('disconnected', null);
    if (wasOpen) this.emit('disconnected', { code: 0, reason: 'offline', reconnect: true });
    // The `online` event wakes us; this is the fallback if it never comes.
    this.retryLater(this.backoff.next());
  }

  private dropSession(): void {
    const s = this.session;
    this.session = null;
    s?.close();
  }

  /**
   * What ends with a connection: answers awaited on it, the refresh timer,
   * pending subscribe retries; every subscription resubscribes (and so
   * recovers) on the next one.
   */
  private sessionGone(): void {
    if (this.stableTimer) clearTimeout(this.stableTimer);
    this.stableTimer = null;
    this.inflight.clear();
    this.clearRefresh();
    this.subscribePending.clear();
    for (const ch of [...this.subRetries.keys()]) this.clearSubRetry(ch);
    if (this.reflushTimer) clearTimeout(this.reflushTimer);
    this.reflushTimer = null;
    for (const s of this.subs.values()) s.connectionLost();
  }

  private setState(state: ConnectionState, transport: TransportName | null): void {
    if (this._state === state && this._transport === transport) return;
    this._state = state;
    this._transport = transport;
    this.emit('state', { state, transport });
  }

  private clearTimers(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.clearRefresh();
  }

  private clearRefresh(): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
  }

  // ---- subscriptions -------------------------------------------------

  /**
   * Subscribes `sub` on the open `session`: at once (in order with the
   * publishes that follow) unless its position must be looked up first; then
   * publishes into the channel wait until the subscribe is sent.
   */
  private subscribeNow(sub: Subscription, session: Session): void {
    const http = session.transport !== 'websocket';
    if (!needsLookup(sub, http)) {
      session.subscribe(sub.request());
      return;
    }
    const token = this.token;
    const done = this.lookUpPositions([sub], http, token).then(() => {
      const p = this.subscribePending.get(sub.channel);
      if (p?.session === session) this.subscribePending.delete(sub.channel);
      if (this.session !== session || this.subs.get(sub.channel) !== sub) return;
      session.subscribe(sub.request());
      this.flush();
    });
    this.subscribePending.set(sub.channel, { session, done });
  }

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
  private async lookUpPositions(subs: Subscription[], http: boolean, token: string | null): Promise<void> {
    await Promise.all(subs.map(async (sub) => {
      if (!needsLookup(sub, http)) return;
      const start = sub.startPending;
      try {
        const args: Obj = start ? { channel: sub.channel, reverse: true } : { channel: sub.channel, limit: 1, reverse: true };
        const ok = await httpAction(this.fetchFn, this.url, token, 'history', args, this.commandTimeout);
        const offset = uint(ok.offset);
        const epoch = str(ok.epoch);
        if (offset === undefined || epoch === undefined) return;
        if (sub.position) return; // found meanwhile
        if (start && sub.startPending) {
          const pubs = Array.isArray(ok.publications) ? ok.publications : [];
          const oldest = pubs.length ? uint(isObj(pubs[pubs.length - 1]) ? (pubs[pubs.length - 1] as Obj).offset : undefined) : undefined;
          const from = oldest !== undefined && oldest > 0 && oldest <= offset ? oldest - 1 : offset;
          sub.setLookedUpPosition({ offset: from, epoch }, false);
        } else if (!start) {
          sub.setLookedUpPosition({ offset, epoch }, true);
        }
      } catch (e) {
        if (e instanceof TidingsError && !e.temporary) {
          if (start) sub.startPending = false;
          else sub.noLookup = true;
        }
      }
    }));
  }

  // ---- tokens --------------------------------------------------------

  private async currentToken(): Promise<string | null> {
    if (!this.getToken) return this.token;
    if (this.tokenStale || !this.token || expiresWithin(this.token, 10)) {
      this.token = (await this.getToken()) ?? null;
      this.tokenStale = false;
    }
    return this.token;
  }

  private scheduleRefresh(expiresIn: number): void {
    this.clearRefresh();
    if (!this.getToken) return;
    // Refresh ahead of expiry: a fifth of the lifetime, at most a minute.
    const margin = Math.min(60, expiresIn / 5);
    // setTimeout cannot wait more than 2^31-1 ms (about 24 days).
    const ms = Math.min(2 ** 31 - 1, Math.max(1, expiresIn - margin) * 1000);
    this.refreshTimer = setTimeout(() => void this.refreshNow(), ms);
  }

  private async refreshNow(): Promise<void> {
    const session = this.session;
    if (!session || !this.getToken) return;
    try {
      const token = (await this.getToken()) ?? null;
      if (!token || this.session !== session) return;
      this.token = token;
      await session.refresh(token);
      const exp = jwtExp(token);
      if (exp !== null) this.scheduleRefresh(Math.max(1, exp - Date.now() / 1000));
    } catch (e) {
      // The connection keeps its old expiry; if it runs out the server
      // disconnects with 3005 and the reconnect fetches a new token.
      this.emit('error', e instanceof TidingsError ? e
        : new TidingsError(ErrorCode.Disconnected, `token refresh failed: ${(e as Error)?.message ?? e}`));
    }
  }

  // ---- actions and the outbox ----------------------------------------

  private async action(op: string, args: Obj): Promise<Obj> {
    const s = this.session;
    if (s && this._state === 'connected') return s.call(op, args);
    const token = this.getToken ? await this.currentToken() : this.token;
    return httpAction(this.fetchFn, this.url, token, op, args, this.commandTimeout);
  }

  private async loadOutbox(): Promise<void> {
    if (!this.store) {
      this.loaded = true;
      return;
    }
    let stored: OutboxEntry[] = [];
    try {
      stored = await this.store.load();
    } catch (e) {
      console.warn('tidings: could not read the outbox', e);
    }
    const known = new Set(this.queue.map((e) => e.key));
    const restored = stored.filter((e) => !known.has(e.key));
    this.queue.push(...restored);
    this.queue.sort((a, b) => a.seq - b.seq);
    for (const e of this.queue) this.lastSeq = Math.max(this.lastSeq, e.seq);
    this.loaded = true;
    if (restored.length) this.emit('outboxRestored', restored.map((e) => ({ ...e })));
    this.flush();
  }

  /** Sends what the outbox holds, in order, when connected. */
  private flush(): void {
    const s = this.session;
    if (!this.loaded || !s || this._state !== 'connected') return;
    if (s.transport === 'websocket') {
      // Commands on one socket are answered in order: send them all, up to
      // the first one into a channel whose subscribe is not sent yet.
      for (const e of this.queue) {
        if (this.subscribePending.get(e.channel)?.session === s) break;
        if (this.inflight.has(e.key)) continue;
        void this.send(e, s).then((ok) => {
          // Timed out (or lost): send it again, under the same key.
          if (!ok) this.reflushLater(s);
        });
      }
      return;
    }
    // HTTP requests may overtake each other: one at a time.
    if (this.httpFlushing) return;
    this.httpFlushing = s;
    void (async () => {
      try {
        while (this.queue.length && this.session === s && this._state === 'connected') {
          const ok = await this.send(this.queue[0], s);
          if (!ok) {
            // A network failure (the session is probably going away) or a
            // temporary refusal: try again shortly.
            await new Promise((r) => setTimeout(r, this.resendDelay()));
          }
        }
      } finally {
        this.httpFlushing = null;
        // The session changed while this loop was sending or waiting: the
        // new one's flush found the loop busy, so carry on for it.
        if (this.session !== s) this.flush();
      }
    })();
  }

  /** Flushes again shortly, if `s` is still the session. */
  private reflushLater(s: Session): void {
    if (this.reflushTimer || this.session !== s) return;
    this.reflushTimer = setTimeout(() => {
      this.reflushTimer = null;
      if (this.session === s) this.flush();
    }, this.resendDelay());
  }

  /** The pause before sending again: 1 s, or a widening backoff (with
   * jitter) while the server refuses publishes as temporary. */
  private resendDelay(): number {
    return this.publishRetry ? Math.max(1, this.publishRetry.next()) : 1000;
  }

  /** Sends one entry; resolves false when it must be sent again. */
  private async send(e: OutboxEntry, s: Session): Promise<boolean> {
    this.inflight.add(e.key);
    try {
      const ok = await s.call('publish', publishArgs(e));
      this.settle(e, toPublishResult(ok), null);
      return true;
    } catch (err) {
      const te = err instanceof TidingsError ? err : new TidingsError(ErrorCode.BadResponse, String(err), true);
      if (te.code < 100) {
        // Lost with the connection: resend later under the same key.
        this.inflight.delete(e.key);
        return false;
      }
      if (te.code === ErrorCode.Internal && te.temporary) {
        // The server could not publish it now (Redis away or failing over):
        // send it again after a widening pause, under the same key.
        this.inflight.delete(e.key);
        this.publishRetry ??= new Backoff(1000, this.maxReconnectDelay, this.random);
        return false;
      }
      if (te.code === ErrorCode.TokenExpired && this.getToken) {
        // A client action over HTTP with a token that just expired: not the
        // message's fault. Get a new token and send it again.
        this.inflight.delete(e.key);
        this.tokenStale = true;
        try {
          const token = await this.currentToken();
          if (token && this.session === s) await s.refresh(token);
        } catch {
          // Retried after the pause of the HTTP flush loop.
        }
        return false;
      }
      this.settle(e, null, te);
      return true;
    }
  }

  private settle(e: OutboxEntry, result: PublishResult | null, err: TidingsError | null): void {
    this.inflight.delete(e.key);
    const i = this.queue.findIndex((x) => x.key === e.key);
    if (i < 0) return;
    this.queue.splice(i, 1);
    this.store?.delete(e.key).catch((x) => console.warn('tidings: could not delete an outbox entry', x));
    const w = this.waiters.get(e.key);
    this.waiters.delete(e.key);
    if (result) {
      this.publishRetry = null;
      w?.resolve(result);
      this.emit('published', { entry: { ...e }, result });
    } else if (err) {
      w?.reject(err);
      this.emit('publishFailed', { entry: { ...e }, error: err });
    }
  }
}

/** Whether `sub` needs its position looked up before subscribing. */
function needsLookup(sub: Subscription, http: boolean): boolean {
  if (sub.position) return false;
  // Without a position the server starts it from its snapshot: nothing to look up.
  if (sub.wantsSnapshot && !sub.startPending) return false;
  return sub.startPending || (http && !sub.noLookup);
}

/** A position an app may pass as `since`: offsets are what pushLeb128 can encode. */
function validPosition(p: unknown): p is Position {
  if (!isObj(p)) return false;
  return typeof p.offset === 'number' && Number.isSafeInteger(p.offset) && p.offset >= 0 && typeof p.epoch === 'string';
}

function publishArgs(e: OutboxEntry): Obj {
  const a: Obj = { channel: e.channel, data: e.data, idempotency_key: e.key };
  if (e.tags) a.tags = e.tags;
  if (e.conflationKey !== undefined) a.key = e.conflationKey;
  if (e.priority) a.priority = e.priority;
  return a;
}

function toPublishResult(ok: Obj): PublishResult {
  const r: PublishResult = {};
  const offset = uint(ok.offset);
  if (offset !== undefined) r.offset = offset;
  const epoch = str(ok.epoch);
  if (epoch !== undefined) r.epoch = epoch;
  return r;
}

/** A JWT's claims (not verified: the server does that), or null when unreadable. Never throws. */
function jwtClaims(token: string): Record<string, unknown> | null {
  try {
    const part = token.split('.')[1];
    if (!part) return null;
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((part.length + 3) % 4));
    const claims: unknown = JSON.parse(json);
    return claims !== null && typeof claims === 'object' ? (claims as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** The `exp` claim of a JWT, or null (unreadable or none). Never throws. */
export function jwtExp(token: string): number | null {
  const exp = jwtClaims(token)?.exp;
  return typeof exp === 'number' ? exp : null;
}

/** The `sub` claim of a JWT (not verified: the server does that), or null. Never throws. */
export function jwtSub(token: string): string | null {
  const sub = jwtClaims(token)?.sub;
  return typeof sub === 'string' ? sub : null;
}

/** Seconds until the token's `exp`, or null when it has none. */
function secondsLeft(token: string): number | null {
  const exp = jwtExp(token);
  return exp === null ? null : Math.max(1, exp - Date.now() / 1000);
}

function expiresWithin(token: string, seconds: number): boolean {
  const exp = jwtExp(token);
  return exp !== null && exp - Date.now() / 1000 < seconds;
}


