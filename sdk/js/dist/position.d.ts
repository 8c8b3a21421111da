/**
 * The position vector of SSE and long-polling (docs/protocol.md, "Position
 * vector"), built from the per-channel positions the client tracks. The SDK
 * builds it itself rather than replaying the server's opaque string so that
 * one source of truth (offset + epoch per channel) resumes any transport
 * after any other: WebSocket → SSE → long-poll and back.
 */
import type { Position } from './types.js';
/** FNV-1a 32-bit hash of the UTF-8 bytes of `s`. */
export declare function fnv1a32(s: string): number;
/**
 * Encodes the vector for `channels` in request order; channels without a
 * position (ephemeral, or not known yet) are left out, as the server does.
 */
export declare function encodePositionVector(channels: Array<[string, Position | null]>): string;
