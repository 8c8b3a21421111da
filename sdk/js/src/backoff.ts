/**
 * Exponential backoff with full jitter: the n-th delay (1-based) is drawn
 * uniformly from `[0, min(maxDelay, minDelay * 2^(n-1))]`. Full jitter
 * spreads a crowd of clients cut off at the same instant (a restart, a proxy
 * failure) over the whole window instead of letting them return in waves.
 */
export class Backoff {
  /** Lower base of the window, milliseconds. */
  readonly minDelay: number;
  /** Upper bound of any delay, milliseconds. */
  readonly maxDelay: number;
  private attempt = 0;
  private readonly random: () => number;

  /**
   * @param minDelay base window in ms (the first delay is within [0, minDelay])
   * @param maxDelay cap in ms
   * @param random source of uniform numbers in [0, 1); injectable for tests
   */
  constructor(minDelay = 500, maxDelay = 20_000, random: () => number = Math.random) {
    this.minDelay = Math.max(0, minDelay);
    this.maxDelay = Math.max(this.minDelay, maxDelay);
    this.random = random;
  }

  /** The number of delays drawn since the last {@link reset}. */
  get attempts(): number {
    return this.attempt;
  }

  /** The cap of the window the next delay is drawn from. */
  nextCap(): number {
    // 2^attempt overflows to Infinity for large attempts; min() keeps it bounded.
    return Math.min(this.maxDelay, this.minDelay * 2 ** this.attempt);
  }

  /** Draws the next delay in ms and widens the window. */
  next(): number {
    const cap = this.nextCap();
    this.attempt += 1;
    const r = this.random();
    // Clamp a misbehaving random source into [0, 1].
    const u = Number.isFinite(r) ? Math.min(1, Math.max(0, r)) : 0;
    return Math.round(u * cap);
  }

  /** Starts over from the smallest window (after a successful connection). */
  reset(): void {
    this.attempt = 0;
  }
}
