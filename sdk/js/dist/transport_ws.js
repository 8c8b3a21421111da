/** The WebSocket transport: `GET /v1/ws`, subprotocol `tidings.v1.json` or `tidings.v1.msgpack`. */
import { decodeFrame, isObj, str, uint } from './codec.js';
import { decodeMulti, encode } from './msgpack.js';
import { ErrorCode, TidingsError, isTerminalCloseCode } from './errors.js';
/** Turns `http(s)://host` into `ws(s)://host/v1/ws`. */
export function wsUrl(base) {
    const u = base.replace(/\/+$/, '');
    if (u.startsWith('https://'))
        return `wss://${u.slice(8)}/v1/ws`;
    if (u.startsWith('http://'))
        return `ws://${u.slice(7)}/v1/ws`;
    return `${u}/v1/ws`;
}
/** Pong timeout assumed when watching for a silent server (the server's default). */
const PONG_TIMEOUT_MS = 10000;
/** One WebSocket connection. */
export class WsSession {
    constructor(opts, h) {
        this.opts = opts;
        this.h = h;
        this.transport = 'websocket';
        this.ws = null;
        this.nextId = 1;
        this.pending = new Map();
        /** Channel of each in-flight `subscribe` command, by id. */
        this.subscribing = new Map();
        this.opened = false;
        this.done = false;
        this.disconnectPush = null;
        this.connectError = null;
        this.watchdog = null;
        this.silenceMs = 0;
    }
    start(token, subs) {
        let ws;
        try {
            ws = new this.opts.WebSocket(wsUrl(this.opts.url), this.msgpack ? 'tidings.v1.msgpack' : 'tidings.v1.json');
            ws.binaryType = 'arraybuffer';
        }
        catch (e) {
            // A bad URL or a blocked scheme: this transport cannot open here.
            queueMicrotask(() => this.finish({ opened: false, code: 0, reason: String(e), reconnect: true }));
            return;
        }
        this.ws = ws;
        this.arm(this.opts.connectTimeout);
        ws.onopen = () => {
            const connect = { id: 0, op: 'connect', name: 'tidings-js', version: this.opts.version };
            if (token)
                connect.token = token;
            if (subs.length)
                connect.subscribe = subs.map(subscribeArgs);
            this.sendRaw(connect);
        };
        ws.onmessage = (ev) => {
            if (typeof ev.data === 'string')
                this.onFrame(decodeFrame(ev.data));
            else if (ev.data instanceof ArrayBuffer && this.msgpack)
                this.onFrame(decodeMulti(new Uint8Array(ev.data)).filter(isObj));
            else if (ev.data instanceof ArrayBuffer)
                this.onFrame(decodeFrame(new TextDecoder().decode(ev.data)));
        };
        ws.onerror = () => {
            // The close event that always follows carries what we need.
        };
        ws.onclose = (ev) => {
            const info = this.disconnectPush ?? {
                opened: this.opened,
                code: ev.code,
                reason: ev.reason || (this.opened ? 'connection lost' : 'WebSocket could not be opened'),
                reconnect: !isTerminalCloseCode(ev.code),
            };
            info.opened = this.opened;
            if (this.connectError)
                info.error = this.connectError;
            this.finish(info);
        };
    }
    call(op, args) {
        return new Promise((resolve, reject) => {
            if (!this.opened || this.done || !this.ws) {
                reject(new TidingsError(ErrorCode.Disconnected, `${op}: not connected`));
                return;
            }
            const id = this.id();
            const timer = setTimeout(() => {
                this.pending.delete(id);
                reject(new TidingsError(ErrorCode.Timeout, `${op}: no answer in time`));
            }, this.opts.commandTimeout);
            this.pending.set(id, { resolve, reject, timer });
            this.sendRaw({ ...args, id, op });
        });
    }
    subscribe(req) {
        if (!this.opened || this.done)
            return; // the next session subscribes it
        const id = this.id();
        this.subscribing.set(id, req.channel);
        this.sendRaw({ id, op: 'subscribe', ...subscribeArgs(req) });
    }
    unsubscribe(channel) {
        if (!this.opened || this.done)
            return;
        // The answer does not matter: 108 only says it was already gone.
        this.call('unsubscribe', { channel }).catch(() => undefined);
    }
    async refresh(token) {
        await this.call('refresh', { token });
    }
    close() {
        if (this.done)
            return;
        this.done = true;
        this.cleanup(new TidingsError(ErrorCode.Disconnected, 'connection closed'));
        try {
            this.ws?.close(1000);
        }
        catch {
            // Already closing.
        }
    }
    id() {
        this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
        return this.nextId;
    }
    get msgpack() {
        return this.opts.encoding === 'msgpack';
    }
    sendRaw(msg) {
        try {
            this.ws?.send(this.msgpack ? encode(msg) : JSON.stringify(msg));
        }
        catch {
            // The socket is closing; its close event ends the session.
        }
    }
    /** (Re)starts the silence watchdog: a server that says nothing is gone. */
    arm(ms) {
        if (this.watchdog)
            clearTimeout(this.watchdog);
        this.watchdog = setTimeout(() => {
            const opened = this.opened;
            try {
                this.ws?.close(4000, 'server silent');
            }
            catch {
                // ignore
            }
            this.finish({
                opened,
                code: 0,
                reason: opened ? 'no message from the server in time' : 'WebSocket did not open in time',
                reconnect: true,
            });
        }, ms);
    }
    onFrame(messages) {
        if (this.done)
            return;
        if (this.opened)
            this.arm(this.silenceMs);
        for (const msg of messages) {
            if (this.done)
                return;
            if (typeof msg.push === 'string')
                this.onPush(msg);
            else if (typeof msg.id === 'number')
                this.onReply(msg);
        }
    }
    onPush(msg) {
        switch (msg.push) {
            case 'ping':
                this.sendRaw({ op: 'pong' });
                return;
            case 'disconnect': {
                const code = uint(msg.code) ?? 0;
                const info = {
                    opened: this.opened,
                    code,
                    reason: str(msg.reason) ?? '',
                    reconnect: typeof msg.reconnect === 'boolean' ? msg.reconnect : !isTerminalCloseCode(code),
                };
                const delay = uint(msg.delay_ms);
                if (delay !== undefined)
                    info.delayMs = delay;
                this.disconnectPush = info;
                return;
            }
            default:
                if (this.opened)
                    this.h.onPush(msg);
        }
    }
    onReply(msg) {
        const id = msg.id;
        const error = isObj(msg.error) ? TidingsError.fromBody(msg.error) : null;
        const ok = isObj(msg.ok) ? msg.ok : null;
        if (id === 0 && !this.opened) {
            // The connect reply.
            if (error || !ok) {
                // 103 or 106: the server disconnects next; remember why.
                this.connectError = error ?? new TidingsError(ErrorCode.BadResponse, 'bad connect reply');
                return;
            }
            this.opened = true;
            const ping = uint(ok.ping_interval) ?? 25;
            this.silenceMs = (ping * 1000 + PONG_TIMEOUT_MS) * 1.5;
            this.arm(this.silenceMs);
            const result = {
                client: str(ok.client),
                user: str(ok.user),
                expiresIn: uint(ok.expires_in),
                data: ok.data,
                subscribed: [],
            };
            if (Array.isArray(ok.subscribed)) {
                for (const e of ok.subscribed) {
                    if (!isObj(e) || typeof e.channel !== 'string')
                        continue;
                    if (isObj(e.ok))
                        result.subscribed.push({ channel: e.channel, ok: e.ok });
                    else
                        result.subscribed.push({ channel: e.channel, error: TidingsError.fromBody(e.error) });
                }
            }
            this.h.onOpen(result);
            return;
        }
        const channel = this.subscribing.get(id);
        if (channel !== undefined) {
            this.subscribing.delete(id);
            this.h.onSubscribed(channel, error ? null : ok ?? {}, error);
            return;
        }
        const p = this.pending.get(id);
        if (!p)
            return;
        this.pending.delete(id);
        clearTimeout(p.timer);
        if (error)
            p.reject(error);
        else
            p.resolve(ok ?? {});
    }
    cleanup(err) {
        if (this.watchdog)
            clearTimeout(this.watchdog);
        this.watchdog = null;
        for (const p of this.pending.values()) {
            clearTimeout(p.timer);
            p.reject(err);
        }
        this.pending.clear();
        this.subscribing.clear();
        if (this.ws) {
            this.ws.onopen = null;
            this.ws.onmessage = null;
            this.ws.onclose = null;
            // Keep a listener: closing a socket still connecting makes the `ws`
            // package emit `error` on a later tick, and an EventEmitter `error`
            // without a listener is an uncaught exception in Node.
            this.ws.onerror = ignoreError;
        }
    }
    finish(info) {
        if (this.done)
            return;
        this.done = true;
        this.cleanup(new TidingsError(ErrorCode.Disconnected, `connection lost: ${info.reason}`));
        this.h.onClose(info);
    }
}
function ignoreError() {
    // Nothing to do: the session has already ended.
}
function subscribeArgs(req) {
    const a = { channel: req.channel };
    if (req.since)
        a.since = { offset: req.since.offset, epoch: req.since.epoch };
    if (req.snapshot)
        a.snapshot = true;
    if (req.delta)
        a.delta = req.delta;
    return a;
}
