import { HttpSession, type OpenOutcome } from './transport_http.js';
import type { SubscribeRequest } from './transport.js';
/** One SSE stream (restarted when the channel set changes). */
export declare class SseSession extends HttpSession {
    readonly transport: "sse";
    protected openStream(subs: SubscribeRequest[], gen: number): Promise<OpenOutcome>;
    private read;
    /** Handles one event; returns the disconnect it announces, if any. */
    private dispatch;
}
