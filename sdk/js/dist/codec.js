/** Parses JSON, returning undefined instead of throwing. */
export function parseJson(text) {
    try {
        return JSON.parse(text);
    }
    catch {
        return undefined;
    }
}
/** Whether `v` is a plain JSON object. */
export function isObj(v) {
    return typeof v === 'object' && v !== null && !Array.isArray(v);
}
/** Splits a WebSocket frame into its messages (one JSON object per line). */
export function decodeFrame(text) {
    const out = [];
    for (const line of text.split('\n')) {
        if (line.trim() === '')
            continue;
        const v = parseJson(line);
        if (isObj(v))
            out.push(v);
    }
    return out;
}
/** A non-negative safe integer, or undefined. */
export function uint(v) {
    return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : undefined;
}
/** A string, or undefined. */
export function str(v) {
    return typeof v === 'string' ? v : undefined;
}
function decodeInfo(v) {
    if (!isObj(v))
        return undefined;
    const info = { client: str(v.client) ?? '', user: str(v.user) ?? '' };
    if ('info' in v)
        info.info = v.info;
    return info;
}
function decodeTags(v) {
    if (!isObj(v))
        return undefined;
    const tags = {};
    for (const [k, val] of Object.entries(v))
        if (typeof val === 'string')
            tags[k] = val;
    return tags;
}
/**
 * Decodes a publication (a `pub` push, or an entry of `publications` with
 * the channel given separately). Null when it has no `data` or no channel.
 */
export function decodePublication(v, channel) {
    if (!isObj(v) || !('data' in v))
        return null;
    const ch = channel ?? str(v.channel);
    if (ch === undefined)
        return null;
    const p = { channel: ch, data: v.data };
    const offset = uint(v.offset);
    if (offset !== undefined)
        p.offset = offset;
    const epoch = str(v.epoch);
    if (epoch !== undefined)
        p.epoch = epoch;
    const info = decodeInfo(v.info);
    if (info)
        p.info = info;
    const tags = decodeTags(v.tags);
    if (tags)
        p.tags = tags;
    const time = uint(v.time);
    if (time !== undefined)
        p.time = time;
    const key = str(v.key);
    if (key !== undefined)
        p.key = key;
    if (v.snapshot === true)
        p.snapshot = true;
    return p;
}
/** Decodes a presence entry (a `join`/`leave` push or a `presence` value). */
export function decodePresenceEntry(v) {
    if (!isObj(v))
        return null;
    const client = str(v.client);
    const user = str(v.user);
    if (client === undefined || user === undefined)
        return null;
    const e = { client, user };
    if ('info' in v)
        e.info = v.info;
    return e;
}
/** Decodes a presence map (client id → entry), skipping bad entries. */
export function decodePresenceMap(v) {
    if (!isObj(v))
        return undefined;
    const out = {};
    for (const [k, e] of Object.entries(v)) {
        const d = decodePresenceEntry(e);
        if (d)
            out[k] = d;
    }
    return out;
}
/** Decodes a list of publications of one channel, skipping bad entries. */
export function decodePublications(v, channel) {
    if (!Array.isArray(v))
        return [];
    const out = [];
    for (const e of v) {
        const p = decodePublication(e, channel);
        if (p)
            out.push(p);
    }
    return out;
}
