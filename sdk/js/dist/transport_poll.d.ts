import { HttpSession, type OpenOutcome } from './transport_http.js';
import type { SubscribeRequest } from './transport.js';
/** A long-polling loop (restarted when the channel set changes). */
export declare class PollSession extends HttpSession {
    readonly transport: "poll";
    protected openStream(subs: SubscribeRequest[], gen: number): Promise<OpenOutcome>;
    private loop;
    /** One poll; pushes go to the client before it returns. */
    private poll;
}
