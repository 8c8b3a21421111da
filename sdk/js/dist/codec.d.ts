/**
 * Decoding of what the server sends. Nothing here throws: a message that is
 * not what the protocol says is dropped (returns null) so that one bad byte
 * from a proxy or a newer server cannot break the client.
 */
import type { PresenceEntry, Publication } from './types.js';
/** A JSON object. */
export type Obj = Record<string, unknown>;
/** Parses JSON, returning undefined instead of throwing. */
export declare function parseJson(text: string): unknown;
/** Whether `v` is a plain JSON object. */
export declare function isObj(v: unknown): v is Obj;
/** Splits a WebSocket frame into its messages (one JSON object per line). */
export declare function decodeFrame(text: string): Obj[];
/** A non-negative safe integer, or undefined. */
export declare function uint(v: unknown): number | undefined;
/** A string, or undefined. */
export declare function str(v: unknown): string | undefined;
/**
 * Decodes a publication (a `pub` push, or an entry of `publications` with
 * the channel given separately). Null when it has no `data` or no channel.
 */
export declare function decodePublication(v: unknown, channel?: string): Publication | null;
/** Decodes a presence entry (a `join`/`leave` push or a `presence` value). */
export declare function decodePresenceEntry(v: unknown): PresenceEntry | null;
/** Decodes a presence map (client id → entry), skipping bad entries. */
export declare function decodePresenceMap(v: unknown): Record<string, PresenceEntry> | undefined;
/** Decodes a list of publications of one channel, skipping bad entries. */
export declare function decodePublications(v: unknown, channel: string): Publication[];
