/**
 * Typing indicators: publications of `{typing: true|false}` into a channel of
 * an ephemeral namespace with a publish rate limit (the demo's
 * `demo_typing`). Signals are worth nothing later, so they bypass the outbox,
 * and a refused one (105, rate limited) is simply dropped.
 */
import type { TidingsClient } from './client.js';
/** Options of {@link Typing}. */
export interface TypingOptions {
    /** At most one `true` per this many ms (default 1500; keep it above the namespace's rate limit). */
    interval?: number;
    /** Send `false` after this many ms without a keystroke (default 3000). */
    idle?: number;
}
/** Publishes typing signals for the local user. */
export declare class Typing {
    private readonly client;
    private readonly channel;
    private lastTrue;
    private idleTimer;
    private typing;
    private readonly interval;
    private readonly idle;
    /**
     * @param client the client to publish with
     * @param channel the typing channel, e.g. `demo_typing:lobby`
     */
    constructor(client: TidingsClient, channel: string, opts?: TypingOptions);
    /** Call on every keystroke: sends `true`, throttled. */
    keystroke(): void;
    /** The user stopped (sent the message, left the field): sends `false`. */
    stop(): void;
    private send;
}
/**
 * Watches a typing channel and tells who is typing now. A `true` not renewed
 * within `ttl` ms counts as `false` (delivery is at most once).
 */
export declare class TypingWatcher {
    private readonly onChange;
    private readonly ttl;
    private readonly typing;
    private timer;
    private readonly off;
    /**
     * @param client the client
     * @param channel the typing channel
     * @param onChange called with the names of who is typing, the local user excluded
     * @param ttl ms after which a silent typist is dropped (default 4000)
     */
    constructor(client: TidingsClient, channel: string, onChange: (names: string[]) => void, ttl?: number);
    /** Stops watching. */
    destroy(): void;
    private expire;
    private report;
}
