/**
 * The Tidings client: one logical connection over WebSocket, SSE or
 * long-polling, that reconnects by itself, resubscribes every channel from
 * its last position, and delivers publishes through an ordered, persistent,
 * idempotent outbox.
 */
import { isObj, str, uint } from './codec.js';
import { Backoff } from './backoff.js';
import { Emitter } from './emitter.js';
import { ErrorCode, TidingsError } from './errors.js';
import { httpAction } from './http.js';
import { defaultOutboxStore, newKey, nextSeq } from './outbox.js';
import { decodePresenceMap, decodePublications } from './codec.js';
import { Subscription, } from './subscription.js';
import { PollSession } from './transport_poll.js';
import { SseSession } from './transport_sse.js';
import { WsSession } from './transport_ws.js';
/** The SDK's version, sent in `connect`. */
export const VERSION = '0.1.0';
/** The Tidings client. */
export class TidingsClient extends Emitter {
    /** Creates a client; nothing happens on the network until {@link connect}. */
    constructor(opts = {}) {
        super();
        this._state = 'disconnected';
        this._transport = null;
        this.wanted = false;
        this.session = null;
        /** Counts attempts so that a superseded one stays quiet. */
        this.attemptId = 0;
        this.timer = null;
        this.refreshTimer = null;
        /** Index of the transport that last worked: each cycle starts there. */
        this.sticky = 0;
        this.current = 0;
        this.triedInCycle = 0;
        this.subs = new Map();
        this.queue = [];
        this.waiters = new Map();
        /** Keys sent on the current session and not answered yet. */
        this.inflight = new Set();
        this.lastSeq = 0;
        this.loaded = false;
        this.httpFlushing = false;
        this.onOnline = () => this.wake();
        this.onOffline = () => this.goneOffline();
        /** The client id of the current WebSocket connection, if any. */
        this.clientId = null;
        /** The user id the server gave (WebSocket), if any. */
        this.user = null;
        const loc = globalThis.location;
        this.url = opts.url ?? (loc ? loc.origin : 'http://127.0.0.1:8000');
        this.transports = opts.transports?.length ? [...opts.transports] : ['websocket', 'sse', 'poll'];
        this.WebSocketImpl = opts.WebSocket ?? globalThis.WebSocket;
        if (!this.WebSocketImpl)
            this.transports = this.transports.filter((t) => t !== 'websocket');
        if (this.transports.length === 0)
            this.transports = ['sse', 'poll'];
        const f = opts.fetch ?? globalThis.fetch;
        // Calling a global fetch detached from globalThis throws in browsers.
        this.fetchFn = opts.fetch ? f : ((input, init) => globalThis.fetch(input, init));
        this.backoff = new Backoff(opts.minReconnectDelay ?? 500, opts.maxReconnectDelay ?? 20000, opts.random);
        this.connectTimeout = opts.connectTimeout ?? 10000;
        this.commandTimeout = opts.commandTimeout ?? 15000;
        this.getToken = opts.getToken;
        this.token = opts.token ?? null;
        this.tokenStale = !this.token && !!this.getToken;
        this.store = opts.outbox === false ? null : opts.outbox ?? defaultOutboxStore(opts.outboxName ?? 'default');
        this.outboxLoaded = this.loadOutbox();
    }
    /** The connection state. */
    get state() {
        return this._state;
    }
    /** The transport in use (or being tried), null when disconnected. */
    get transport() {
        return this._transport;
    }
    /** Resolves once entries stored by a previous run are loaded. */
    get ready() {
        return this.outboxLoaded;
    }
    /** Starts connecting (and keeps reconnecting until {@link disconnect}). */
    connect() {
        if (this.wanted)
            return;
        this.wanted = true;
        const g = globalThis;
        g.addEventListener?.('online', this.onOnline);
        g.addEventListener?.('offline', this.onOffline);
        this.triedInCycle = 0;
        this.current = this.sticky;
        void this.attempt();
    }
    /** Closes the connection and stops reconnecting. Queued publishes stay queued. */
    disconnect() {
        this.wanted = false;
        const g = globalThis;
        g.removeEventListener?.('online', this.onOnline);
        g.removeEventListener?.('offline', this.onOffline);
        this.attemptId += 1;
        this.clearTimers();
        const wasOpen = this._state === 'connected';
        this.dropSession();
        this.setState('disconnected', null);
        if (wasOpen)
            this.emit('disconnected', { code: 0, reason: 'disconnected by the app', reconnect: false });
    }
    /**
     * Subscribes to a channel, or returns the existing subscription. It is made
     * on the current connection and again on every reconnect.
     */
    subscribe(channel, opts = {}) {
        const existing = this.subs.get(channel);
        if (existing)
            return existing;
        const sub = new Subscription(this, channel, opts.since);
        this.subs.set(channel, sub);
        if (this._state === 'connected' && this.session)
            void this.subscribeNow(sub, this.session);
        return sub;
    }
    /** The subscription to `channel`, if any. */
    getSubscription(channel) {
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
    publish(channel, data, opts = {}) {
        const entry = {
            key: opts.idempotencyKey ?? newKey(),
            channel,
            data,
            seq: (this.lastSeq = nextSeq(this.lastSeq)),
            createdAt: Date.now(),
        };
        if (opts.tags)
            entry.tags = opts.tags;
        if (opts.queue === false || !this.store) {
            if (this._state !== 'connected' || !this.session) {
                return Promise.reject(new TidingsError(ErrorCode.Disconnected, 'publish: not connected'));
            }
            return this.session.call('publish', publishArgs(entry)).then(toPublishResult);
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
        const p = new Promise((resolve, reject) => {
            this.waiters.set(entry.key, { resolve, reject });
        });
        this.queue.push(entry);
        this.store.put(entry).catch((e) => console.warn('tidings: could not store an outbox entry', e));
        this.flush();
        return p;
    }
    /** The publishes waiting for an acknowledgement, in sending order. */
    pendingPublishes(channel) {
        return this.queue.filter((e) => channel === undefined || e.channel === channel).map((e) => ({ ...e }));
    }
    /** Reads a channel's history (over the WebSocket when open, else HTTP). */
    async history(channel, opts = {}) {
        const args = { channel };
        if (opts.since)
            args.since = { offset: opts.since.offset, epoch: opts.since.epoch };
        if (opts.limit !== undefined)
            args.limit = opts.limit;
        if (opts.reverse !== undefined)
            args.reverse = opts.reverse;
        const ok = await this.action('history', args);
        const offset = uint(ok.offset);
        const epoch = str(ok.epoch);
        if (offset === undefined || epoch === undefined) {
            throw new TidingsError(ErrorCode.BadResponse, 'history: answer without offset and epoch', true);
        }
        return { publications: decodePublications(ok.publications, channel), offset, epoch };
    }
    /** Reads a channel's whole presence, page by page. */
    async presence(channel) {
        const out = {};
        let cursor;
        for (let page = 0; page < 1000; page++) {
            const args = { channel, limit: 1000 };
            if (cursor)
                args.cursor = cursor;
            const ok = await this.action('presence', args);
            Object.assign(out, decodePresenceMap(ok.clients) ?? {});
            cursor = str(ok.next_cursor);
            if (!cursor)
                break;
        }
        return out;
    }
    /** Counts a channel's connections and distinct users. */
    async presenceStats(channel) {
        const ok = await this.action('presence_stats', { channel });
        return { clients: uint(ok.clients) ?? 0, users: uint(ok.users) ?? 0 };
    }
    /** When users were last seen (ms since the Unix epoch, null: never). */
    async lastSeen(users) {
        const ok = await this.action('last_seen', { users });
        const out = {};
        if (isObj(ok.users))
            for (const [u, t] of Object.entries(ok.users))
                out[u] = uint(t) ?? null;
        return out;
    }
    /** @internal */
    resubscribe(sub, serverEnded) {
        const s = this.session;
        if (this._state !== 'connected' || !s)
            return; // the next connection subscribes it
        if (s.transport === 'websocket' && !serverEnded)
            s.unsubscribe(sub.channel);
        s.subscribe(sub.request());
    }
    /** @internal */
    removeSubscription(sub) {
        if (this.subs.get(sub.channel) !== sub)
            return;
        this.subs.delete(sub.channel);
        if (this._state === 'connected')
            this.session?.unsubscribe(sub.channel);
    }
    // ---- connecting ----------------------------------------------------
    async attempt() {
        this.clearTimers();
        if (!this.wanted)
            return;
        const id = ++this.attemptId;
        const name = this.transports[this.current % this.transports.length];
        this.setState('connecting', name);
        let token;
        try {
            token = await this.currentToken();
        }
        catch (e) {
            if (id !== this.attemptId)
                return;
            this.emit('error', e instanceof TidingsError ? e
                : new TidingsError(ErrorCode.Disconnected, `getToken failed: ${e?.message ?? e}`));
            this.retryLater(this.backoff.next());
            return;
        }
        if (id !== this.attemptId || !this.wanted)
            return;
        await this.lookUpPositions([...this.subs.values()], name !== 'websocket', token);
        if (id !== this.attemptId || !this.wanted)
            return;
        const session = this.makeSession(name, id);
        this.session = session;
        session.start(token, this.subscribeRequests());
    }
    makeSession(name, id) {
        const h = {
            onOpen: (r) => { if (id === this.attemptId)
                this.opened(r); },
            onSubscribed: (channel, ok, err) => { if (id === this.attemptId)
                this.subscribedReply(channel, ok, err); },
            onPush: (push) => { if (id === this.attemptId)
                this.onPush(push); },
            onClose: (info) => { if (id === this.attemptId)
                this.closed(info); },
        };
        if (name === 'websocket') {
            return new WsSession({
                url: this.url,
                WebSocket: this.WebSocketImpl,
                connectTimeout: this.connectTimeout,
                commandTimeout: this.commandTimeout,
                version: VERSION,
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
    subscribeRequests() {
        return [...this.subs.values()].map((s) => s.request());
    }
    opened(r) {
        this.sticky = this.current % this.transports.length;
        this.triedInCycle = 0;
        this.backoff.reset();
        const transport = this.session?.transport ?? 'websocket';
        this.clientId = r.client ?? null;
        this.user = r.user ?? null;
        this.setState('connected', transport);
        const answered = new Set();
        for (const s of r.subscribed) {
            answered.add(s.channel);
            this.subscribedReply(s.channel, s.ok ?? null, s.error ?? null);
        }
        const ev = { transport };
        if (r.client)
            ev.client = r.client;
        if (r.user)
            ev.user = r.user;
        this.emit('connected', ev);
        // Channels subscribed while the connection was opening.
        const session = this.session;
        if (session) {
            for (const sub of this.subs.values()) {
                if (!answered.has(sub.channel) && sub.state === 'subscribing')
                    void this.subscribeNow(sub, session);
            }
        }
        // WebSocket says when the token expires; over SSE and long-poll read it
        // from the token, since their requests and actions need a live one.
        const exp = r.expiresIn ?? (this.token ? secondsLeft(this.token) : null);
        if (exp !== null)
            this.scheduleRefresh(exp);
        this.flush();
    }
    subscribedReply(channel, ok, err) {
        const sub = this.subs.get(channel);
        if (!sub)
            return;
        if (err) {
            sub.handleError(err);
            return;
        }
        // SSE/poll restarts announce every channel; only the waiting ones care.
        if (sub.state === 'subscribed')
            return;
        sub.handleSubscribed(ok ?? {}, this.session?.transport ?? 'websocket');
    }
    onPush(push) {
        const channel = str(push.channel);
        if (channel === undefined)
            return;
        this.subs.get(channel)?.handlePush(push);
    }
    closed(info) {
        this.session = null;
        this.inflight.clear();
        this.clearRefresh();
        for (const s of this.subs.values())
            s.connectionLost();
        const wasOpen = info.opened;
        if (wasOpen) {
            this.setState('disconnected', null);
            const ev = { code: info.code, reason: info.reason, reconnect: info.reconnect && this.wanted };
            if (info.delayMs !== undefined)
                ev.delayMs = info.delayMs;
            this.emit('disconnected', ev);
        }
        if (!this.wanted)
            return;
        if (info.error?.code === ErrorCode.TokenExpired || info.code === 3005)
            this.tokenStale = true;
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
     * A transport could not be opened. If the server answers plain HTTP, the
     * transport itself is blocked (a proxy that refuses WebSockets, one that
     * buffers streams): try the next one at once. If not, the network or the
     * server is down: keep the transport and back off, so that an outage does
     * not push the client off a transport that works.
     */
    async openFailed() {
        const id = this.attemptId;
        this.setState('connecting', this._transport);
        const reachable = this.transports.length > 1 && await this.reachable();
        if (id !== this.attemptId || !this.wanted)
            return;
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
     * Whether the server answers a plain HTTP request (any status). `GET
     * /v1/poll` without a channel is answered at once with 400, and carries
     * CORS headers, so it works from pages on other origins too.
     */
    async reachable() {
        const ctrl = new AbortController();
        const timer = setTimeout(() => ctrl.abort(), this.connectTimeout);
        try {
            const res = await this.fetchFn(`${this.url.replace(/\/+$/, '')}/v1/poll`, {
                cache: 'no-store',
                signal: ctrl.signal,
            });
            await res.text().catch(() => '');
            return true;
        }
        catch {
            return false;
        }
        finally {
            clearTimeout(timer);
        }
    }
    stop(err) {
        this.wanted = false;
        this.setState('disconnected', null);
        this.emit('error', err);
    }
    retryLater(delay) {
        this.clearTimers();
        if (!this.wanted)
            return;
        if (this._state !== 'disconnected')
            this.setState('disconnected', null);
        const transport = this.transports[this.current % this.transports.length];
        this.emit('reconnecting', { delay, transport });
        this.timer = setTimeout(() => {
            this.timer = null;
            void this.attempt();
        }, delay);
    }
    /** The browser is back online: try now rather than at the end of the backoff. */
    wake() {
        if (!this.wanted || this._state === 'connected')
            return;
        if (this._state === 'connecting' && this.session)
            return;
        this.triedInCycle = 0;
        this.current = this.sticky;
        void this.attempt();
    }
    /** The browser went offline: drop the connection now rather than after a timeout. */
    goneOffline() {
        if (!this.wanted || !this.session)
            return;
        const wasOpen = this._state === 'connected';
        this.attemptId += 1;
        this.dropSession();
        this.inflight.clear();
        this.clearRefresh();
        for (const s of this.subs.values())
            s.connectionLost();
        this.setState('disconnected', null);
        if (wasOpen)
            this.emit('disconnected', { code: 0, reason: 'offline', reconnect: true });
        // The `online` event wakes us; this is the fallback if it never comes.
        this.retryLater(this.backoff.next());
    }
    dropSession() {
        const s = this.session;
        this.session = null;
        s?.close();
    }
    setState(state, transport) {
        if (this._state === state && this._transport === transport)
            return;
        this._state = state;
        this._transport = transport;
        this.emit('state', { state, transport });
    }
    clearTimers() {
        if (this.timer)
            clearTimeout(this.timer);
        this.timer = null;
        this.clearRefresh();
    }
    clearRefresh() {
        if (this.refreshTimer)
            clearTimeout(this.refreshTimer);
        this.refreshTimer = null;
    }
    // ---- subscriptions -------------------------------------------------
    async subscribeNow(sub, session) {
        const token = this.token;
        await this.lookUpPositions([sub], session.transport !== 'websocket', token);
        if (this.session !== session || this.subs.get(sub.channel) !== sub)
            return;
        session.subscribe(sub.request());
    }
    /**
     * Finds a starting position where the transport needs one: `since:
     * 'start'` (offset 0 of the current epoch) and, over SSE and long-polling,
     * fresh subscriptions (their top), so that they have a `subscribed` with a
     * position and resume exactly on any later transport. A failed lookup
     * (ephemeral channel, history closed) leaves the channel live-only.
     */
    async lookUpPositions(subs, http, token) {
        await Promise.all(subs.map(async (sub) => {
            if (sub.position && !sub.startPending)
                return;
            if (!sub.startPending && !http)
                return;
            try {
                const ok = await httpAction(this.fetchFn, this.url, token, 'history', { channel: sub.channel, limit: 1, reverse: true }, this.commandTimeout);
                const offset = uint(ok.offset);
                const epoch = str(ok.epoch);
                if (offset === undefined || epoch === undefined)
                    return;
                if (sub.startPending) {
                    sub.startPending = false;
                    sub.setLookedUpPosition({ offset: 0, epoch }, false);
                }
                else if (!sub.position) {
                    sub.setLookedUpPosition({ offset, epoch }, true);
                }
            }
            catch (e) {
                if (e instanceof TidingsError && !e.temporary)
                    sub.startPending = false;
            }
        }));
    }
    // ---- tokens --------------------------------------------------------
    async currentToken() {
        if (!this.getToken)
            return this.token;
        if (this.tokenStale || !this.token || expiresWithin(this.token, 10)) {
            this.token = (await this.getToken()) ?? null;
            this.tokenStale = false;
        }
        return this.token;
    }
    scheduleRefresh(expiresIn) {
        this.clearRefresh();
        if (!this.getToken)
            return;
        // Refresh ahead of expiry: a fifth of the lifetime, at most a minute.
        const margin = Math.min(60, expiresIn / 5);
        // setTimeout cannot wait more than 2^31-1 ms (about 24 days).
        const ms = Math.min(2 ** 31 - 1, Math.max(1, expiresIn - margin) * 1000);
        this.refreshTimer = setTimeout(() => void this.refreshNow(), ms);
    }
    async refreshNow() {
        const session = this.session;
        if (!session || !this.getToken)
            return;
        try {
            const token = (await this.getToken()) ?? null;
            if (!token || this.session !== session)
                return;
            this.token = token;
            await session.refresh(token);
            const exp = jwtExp(token);
            if (exp !== null)
                this.scheduleRefresh(Math.max(1, exp - Date.now() / 1000));
        }
        catch (e) {
            // The connection keeps its old expiry; if it runs out the server
            // disconnects with 3005 and the reconnect fetches a new token.
            this.emit('error', e instanceof TidingsError ? e
                : new TidingsError(ErrorCode.Disconnected, `token refresh failed: ${e?.message ?? e}`));
        }
    }
    // ---- actions and the outbox ----------------------------------------
    async action(op, args) {
        const s = this.session;
        if (s && this._state === 'connected')
            return s.call(op, args);
        const token = this.getToken ? await this.currentToken() : this.token;
        return httpAction(this.fetchFn, this.url, token, op, args, this.commandTimeout);
    }
    async loadOutbox() {
        if (!this.store) {
            this.loaded = true;
            return;
        }
        let stored = [];
        try {
            stored = await this.store.load();
        }
        catch (e) {
            console.warn('tidings: could not read the outbox', e);
        }
        const known = new Set(this.queue.map((e) => e.key));
        const restored = stored.filter((e) => !known.has(e.key));
        this.queue.push(...restored);
        this.queue.sort((a, b) => a.seq - b.seq);
        for (const e of this.queue)
            this.lastSeq = Math.max(this.lastSeq, e.seq);
        this.loaded = true;
        if (restored.length)
            this.emit('outboxRestored', restored.map((e) => ({ ...e })));
        this.flush();
    }
    /** Sends what the outbox holds, in order, when connected. */
    flush() {
        const s = this.session;
        if (!this.loaded || !s || this._state !== 'connected')
            return;
        if (s.transport === 'websocket') {
            // Commands on one socket are answered in order: send them all.
            for (const e of this.queue)
                if (!this.inflight.has(e.key))
                    this.send(e, s);
            return;
        }
        // HTTP requests may overtake each other: one at a time.
        if (this.httpFlushing)
            return;
        this.httpFlushing = true;
        void (async () => {
            try {
                while (this.queue.length && this.session === s && this._state === 'connected') {
                    const ok = await this.send(this.queue[0], s);
                    if (!ok) {
                        // A network failure: the session is probably going away; if not,
                        // try again shortly.
                        await new Promise((r) => setTimeout(r, 1000));
                    }
                }
            }
            finally {
                this.httpFlushing = false;
            }
        })();
    }
    /** Sends one entry; resolves false when it must be sent again. */
    async send(e, s) {
        this.inflight.add(e.key);
        try {
            const ok = await s.call('publish', publishArgs(e));
            this.settle(e, toPublishResult(ok), null);
            return true;
        }
        catch (err) {
            const te = err instanceof TidingsError ? err : new TidingsError(ErrorCode.BadResponse, String(err), true);
            if (te.code < 100) {
                // Lost with the connection: resend later under the same key.
                this.inflight.delete(e.key);
                return false;
            }
            if (te.code === ErrorCode.TokenExpired && this.getToken) {
                // A client action over HTTP with a token that just expired: not the
                // message's fault. Get a new token and send it again.
                this.inflight.delete(e.key);
                this.tokenStale = true;
                try {
                    const token = await this.currentToken();
                    if (token && this.session === s)
                        await s.refresh(token);
                }
                catch {
                    // Retried after the pause of the HTTP flush loop.
                }
                return false;
            }
            this.settle(e, null, te);
            return true;
        }
    }
    settle(e, result, err) {
        this.inflight.delete(e.key);
        const i = this.queue.findIndex((x) => x.key === e.key);
        if (i < 0)
            return;
        this.queue.splice(i, 1);
        this.store?.delete(e.key).catch((x) => console.warn('tidings: could not delete an outbox entry', x));
        const w = this.waiters.get(e.key);
        this.waiters.delete(e.key);
        if (result) {
            w?.resolve(result);
            this.emit('published', { entry: { ...e }, result });
        }
        else if (err) {
            w?.reject(err);
            this.emit('publishFailed', { entry: { ...e }, error: err });
        }
    }
}
function publishArgs(e) {
    const a = { channel: e.channel, data: e.data, idempotency_key: e.key };
    if (e.tags)
        a.tags = e.tags;
    return a;
}
function toPublishResult(ok) {
    const r = {};
    const offset = uint(ok.offset);
    if (offset !== undefined)
        r.offset = offset;
    const epoch = str(ok.epoch);
    if (epoch !== undefined)
        r.epoch = epoch;
    return r;
}
/** The `exp` claim of a JWT, or null (unreadable or none). Never throws. */
export function jwtExp(token) {
    try {
        const part = token.split('.')[1];
        if (!part)
            return null;
        const json = atob(part.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((part.length + 3) % 4));
        const claims = JSON.parse(json);
        return typeof claims?.exp === 'number' ? claims.exp : null;
    }
    catch {
        return null;
    }
}
/** Seconds until the token's `exp`, or null when it has none. */
function secondsLeft(token) {
    const exp = jwtExp(token);
    return exp === null ? null : Math.max(1, exp - Date.now() / 1000);
}
function expiresWithin(token, seconds) {
    const exp = jwtExp(token);
    return exp !== null && exp - Date.now() / 1000 < seconds;
}
