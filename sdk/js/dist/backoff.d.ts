/**
 * Exponential backoff with full jitter: the n-th delay (1-based) is drawn
 * uniformly from `[0, min(maxDelay, minDelay * 2^(n-1))]`. Full jitter
 * spreads a crowd of clients cut off at the same instant (a restart, a proxy
 * failure) over the whole window instead of letting them return in waves.
 */
export declare class Backoff {
    /** Lower base of the window, milliseconds. */
    readonly minDelay: number;
    /** Upper bound of any delay, milliseconds. */
    readonly maxDelay: number;
    private attempt;
    private readonly random;
    /**
     * @param minDelay base window in ms (the first delay is within [0, minDelay])
     * @param maxDelay cap in ms
     * @param random source of uniform numbers in [0, 1); injectable for tests
     */
    constructor(minDelay?: number, maxDelay?: number, random?: () => number);
    /** The number of delays drawn since the last {@link reset}. */
    get attempts(): number;
    /** The cap of the window the next delay is drawn from. */
    nextCap(): number;
    /** Draws the next delay in ms and widens the window. */
    next(): number;
    /** Starts over from the smallest window (after a successful connection). */
    reset(): void;
}
