/**
 * What the receive-only HTTP transports (SSE and long-polling) share: client
 * actions over `POST /v1/client/<op>`, restarting the request when the set of
 * channels changes (the server keeps no session between requests), and finding
 * which channel made a whole request fail.
 */
import { type Obj } from './codec.js';
import { TidingsError } from './errors.js';
import type { CloseInfo, FetchFn, Session, SessionHandlers, SubscribeRequest } from './transport.js';
import type { TransportName } from './types.js';
/** Options of an HTTP session. */
export interface HttpSessionOptions {
    /** The server's base URL, `http(s)://host:port`. */
    url: string;
    /** The fetch implementation. */
    fetch: FetchFn;
    /** Give up opening after this long (ms). */
    connectTimeout: number;
    /** Reject an action after this long without an answer (ms). */
    commandTimeout: number;
    /** The current subscriptions with their positions, read at each (re)start. */
    subscriptions: () => SubscribeRequest[];
}
/** Result of one attempt to open the stream. */
export type OpenOutcome = {
    kind: 'open';
    afterOpen?: () => void;
} | {
    kind: 'unreachable';
    reason: string;
} | {
    kind: 'error';
    error: TidingsError;
};
/** Base of the SSE and long-poll sessions. */
export declare abstract class HttpSession implements Session {
    protected readonly opts: HttpSessionOptions;
    protected readonly h: SessionHandlers;
    abstract readonly transport: TransportName;
    protected token: string | null;
    protected opened: boolean;
    protected done: boolean;
    /** Aborts the current stream request; replaced at each restart. */
    protected ctrl: AbortController | null;
    /** Channels of the running request. */
    protected channels: SubscribeRequest[];
    private restartQueued;
    /** Bumped at each restart so that a superseded request stays quiet. */
    protected generation: number;
    constructor(opts: HttpSessionOptions, h: SessionHandlers);
    /** Opens the stream for `subs` and runs it; resolves when it has opened or failed. */
    protected abstract openStream(subs: SubscribeRequest[], generation: number): Promise<OpenOutcome>;
    start(token: string | null, subs: SubscribeRequest[]): void;
    call(op: string, args: Obj): Promise<Obj>;
    subscribe(_req: SubscribeRequest): void;
    unsubscribe(_channel: string): void;
    refresh(token: string): Promise<void>;
    close(): void;
    /** The URL of a stream request for `subs`, with their position vector. */
    protected streamUrl(path: string, subs: SubscribeRequest[], extra?: string): string;
    /** Request headers: the token goes in `Authorization`, never in the URL. */
    protected headers(accept: string): Record<string, string>;
    /** Ends the session (once) and tells the client. */
    protected finish(info: CloseInfo): void;
    /** The stream of generation `gen` ended by itself. */
    protected streamEnded(gen: number, info: Omit<CloseInfo, 'opened'>): void;
    protected queueRestart(): void;
    private run;
    /**
     * Finds the channels that fail on their own: one answer-at-once poll per
     * channel. Only run after a whole request failed, so it costs nothing
     * normally.
     */
    protected probe(subs: SubscribeRequest[]): Promise<Array<{
        channel: string;
        error: TidingsError;
    }>>;
}
/**
 * Whether an error answer to a whole request may come from one of its
 * channels (`101`, `102`, `103`, `104`): then each channel is checked alone.
 */
export declare function isChannelLevel(err: TidingsError): boolean;
/** Reads `offset` and `epoch` from an `ok` object, if both are there. */
export declare function positionOf(ok: Obj): {
    offset: number;
    epoch: string;
} | null;
