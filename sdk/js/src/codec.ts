/**
 * Decoding of what the server sends. Nothing here throws: a message that is
 * not what the protocol says is dropped (returns null) so that one bad byte
 * from a proxy or a newer server cannot break the client.
 */
import type { PresenceEntry, Publication, PublicationInfo } from './types.js';

/** A JSON object. */
export type Obj = Record<string, unknown>;

/** Parses JSON, returning undefined instead of throwing. */
export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Whether `v` is a plain JSON object. */
export function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Splits a WebSocket frame into its messages (one JSON object per line). */
export function decodeFrame(text: string): Obj[] {
  const out: Obj[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const v = parseJson(line);
    if (isObj(v)) out.push(v);
  }
  return out;
}

/** A non-negative safe integer, or undefined. */
export function uint(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : undefined;
}

/** A string, or undefined. */
export function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

function decodeInfo(v: unknown): PublicationInfo | undefined {
  if (!isObj(v)) return undefined;
  const info: PublicationInfo = { client: str(v.client) ?? '', user: str(v.user) ?? '' };
  if ('info' in v) info.info = v.info;
  return info;
}

function decodeTags(v: unknown): Record<string, string> | undefined {
  if (!isObj(v)) return undefined;
  const tags: Record<string, string> = {};
  for (const [k, val] of Object.entries(v)) if (typeof val === 'string') tags[k] = val;
  return tags;
}

/**
 * Decodes a publication (a `pub` push, or an entry of `publications` with
 * the channel given separately). Null when it has no `data` or no channel.
 */
export function decodePublication(v: unknown, channel?: string): Publication | null {
  if (!isObj(v) || !('data' in v)) return null;
  const ch = channel ?? str(v.channel);
  if (ch === undefined) return null;
  const p: Publication = { channel: ch, data: v.data };
  const offset = uint(v.offset);
  if (offset !== undefined) p.offset = offset;
  const epoch = str(v.epoch);
  if (epoch !== undefined) p.epoch = epoch;
  const info = decodeInfo(v.info);
  if (info) p.info = info;
  const tags = decodeTags(v.tags);
  if (tags) p.tags = tags;
  const time = uint(v.time);
  if (time !== undefined) p.time = time;
  const key = str(v.key);
  if (key !== undefined) p.key = key;
  if (v.snapshot === true) p.snapshot = true;
  return p;
}

/** Decodes a presence entry (a `join`/`leave` push or a `presence` value). */
export function decodePresenceEntry(v: unknown): PresenceEntry | null {
  if (!isObj(v)) return null;
  const client = str(v.client);
  const user = str(v.user);
  if (client === undefined || user === undefined) return null;
  const e: PresenceEntry = { client, user };
  if ('info' in v) e.info = v.info;
  return e;
}

/** Decodes a presence map (client id → entry), skipping bad entries. */
export function decodePresenceMap(v: unknown): Record<string, PresenceEntry> | undefined {
  if (!isObj(v)) return undefined;
  const out: Record<string, PresenceEntry> = {};
  for (const [k, e] of Object.entries(v)) {
    const d = decodePresenceEntry(e);
    if (d) out[k] = d;
  }
  return out;
}

/** Decodes a list of publications of one channel, skipping bad entries. */
export function decodePublications(v: unknown, channel: string): Publication[] {
  if (!Array.isArray(v)) return [];
  const out: Publication[] = [];
  for (const e of v) {
    const p = decodePublication(e, channel);
    if (p) out.push(p);
  }
  return out;
}
