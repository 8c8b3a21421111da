/**
 * Fossil delta decoding (the format of `delta: "fossil"` subscriptions):
 * a delta turns the previous payload's JSON text into the next one's.
 * Works on UTF-8 bytes, as the server's encoder does; never throws.
 */
/** Applies a Fossil delta to `source`; null when the delta is malformed or does not match. */
export declare function applyDeltaBytes(source: Uint8Array, delta: Uint8Array): Uint8Array | null;
/** Applies a Fossil delta (as the server sends it: a string) to a payload's JSON text. */
export declare function applyDelta(base: string, delta: string): string | null;
