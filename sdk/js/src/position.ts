/**
 * The position vector of SSE and long-polling (docs/protocol.md, "Position
 * vector"), built from the per-channel positions the client tracks. The SDK
 * builds it itself rather than replaying the server's opaque string so that
 * one source of truth (offset + epoch per channel) resumes any transport
 * after any other: WebSocket → SSE → long-poll and back.
 */
import type { Position } from './types.js';

const encoder = new TextEncoder();

/** FNV-1a 32-bit hash of the UTF-8 bytes of `s`. */
export function fnv1a32(s: string): number {
  let h = 0x811c9dc5;
  for (const b of encoder.encode(s)) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

function pushU32(out: number[], v: number): void {
  out.push((v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff);
}

function pushLeb128(out: number[], v: number): void {
  // Offsets are safe integers (< 2^53): divide rather than shift, as JS
  // bit operations are 32-bit.
  let n = v;
  for (;;) {
    const byte = n % 128;
    n = Math.floor(n / 128);
    if (n === 0) {
      out.push(byte);
      return;
    }
    out.push(byte | 0x80);
  }
}

function base64url(bytes: number[]): string {
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/**
 * Encodes the vector for `channels` in request order; channels without a
 * position (ephemeral, or not known yet) are left out, as the server does.
 */
export function encodePositionVector(channels: Array<[string, Position | null]>): string {
  const out: number[] = [1];
  for (const [name, pos] of channels) {
    // A bad offset (negative, fractional, NaN) would never end the LEB128
    // loop; `subscribe` refuses them, and this never encodes one.
    if (!pos || !Number.isSafeInteger(pos.offset) || pos.offset < 0) continue;
    pushU32(out, fnv1a32(name));
    pushU32(out, fnv1a32(pos.epoch));
    pushLeb128(out, pos.offset);
  }
  return base64url(out);
}
