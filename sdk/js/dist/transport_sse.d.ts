import { HttpSession, type OpenOutcome } from './transport_http.js';
import type { SubscribeRequest } from './transport.js';
/** One SSE stream (restarted when the channel set changes). */
export declare class SseSession extends HttpSession {
    readonly transport: "sse";
    /**
     * The server ends a stream when the token it opened with expires (3005):
     * reopen it with the new token first, resuming from the positions held.
     */
    refresh(token: string): Promise<void>;
    protected openStream(subs: SubscribeRequest[], gen: number): Promise<OpenOutcome>;
    private read;
    /**
     * A stream in presence stays there only while it proves its reader is
     * alive: a heartbeat every `heartbeat_ms`, under its lease. A frozen
     * tab or process sends none, and the server ends the stream (3004), so it
     * leaves presence as a frozen WebSocket client does by missing pongs.
     */
    private heartbeat;
    private startHeartbeat;
    private stopHeartbeat;
    /** Handles one event; returns the disconnect it announces, if any. */
    private dispatch;
}
