/** The WebSocket transport: `GET /v1/ws`, subprotocol `tidings.v1.json` or `tidings.v1.msgpack`. */
import { type Obj } from './codec.js';
import type { Session, SessionHandlers, SubscribeRequest, WebSocketCtor } from './transport.js';
/** Options of a WebSocket session. */
export interface WsSessionOptions {
    /** The server's base URL, `http(s)://host:port`. */
    url: string;
    /** The WebSocket implementation. */
    WebSocket: WebSocketCtor;
    /** Give up opening after this long (ms): a proxy may hold an upgrade forever. */
    connectTimeout: number;
    /** Reject a command after this long without an answer (ms). */
    commandTimeout: number;
    /** The SDK's version, sent in `connect`. */
    version: string;
    /** `msgpack`: speak `tidings.v1.msgpack` (binary frames). Default `json`. */
    encoding?: 'json' | 'msgpack';
}
/** Turns `http(s)://host` into `ws(s)://host/v1/ws`. */
export declare function wsUrl(base: string): string;
/** One WebSocket connection. */
export declare class WsSession implements Session {
    private readonly opts;
    private readonly h;
    readonly transport: "websocket";
    private ws;
    private nextId;
    private readonly pending;
    /** Channel of each in-flight `subscribe` command, by id. */
    private readonly subscribing;
    private opened;
    private done;
    private disconnectPush;
    private connectError;
    private watchdog;
    private silenceMs;
    constructor(opts: WsSessionOptions, h: SessionHandlers);
    start(token: string | null, subs: SubscribeRequest[]): void;
    call(op: string, args: Obj): Promise<Obj>;
    subscribe(req: SubscribeRequest): void;
    unsubscribe(channel: string): void;
    refresh(token: string): Promise<void>;
    close(): void;
    private id;
    private get msgpack();
    private sendRaw;
    /** (Re)starts the silence watchdog: a server that says nothing is gone. */
    private arm;
    private onFrame;
    private onPush;
    private onReply;
    private cleanup;
    private finish;
}
