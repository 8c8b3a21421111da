/**
 * Fossil delta decoding (the format of `delta: "fossil"` subscriptions):
 * a delta turns the previous payload's JSON text into the next one's.
 * Works on UTF-8 bytes, as the server's encoder does; never throws.
 */
const DIGITS = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~';
const VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < DIGITS.length; i++)
    VALUE[DIGITS.charCodeAt(i)] = i;
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder('utf-8', { fatal: true });
/** The 32-bit sum of big-endian words, the last padded with zeros. */
function checksum(b) {
    let sum = 0;
    let i = 0;
    for (; i + 4 <= b.length; i += 4) {
        sum = (sum + ((b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3])) >>> 0;
    }
    let last = 0;
    for (let k = 0; k < 4; k++)
        last = (last << 8) | (i + k < b.length ? b[i + k] : 0);
    return (sum + (last >>> 0)) >>> 0;
}
/** The largest output a delta may declare: no payload is larger. */
const MAX_OUTPUT = 64 * 1024 * 1024;
/** Applies a Fossil delta to `source`; null when the delta is malformed or does not match. */
export function applyDeltaBytes(source, delta) {
    let pos = 0;
    const int = () => {
        let v = 0;
        let n = 0;
        while (pos < delta.length) {
            const c = delta[pos];
            const d = c < 128 ? VALUE[c] : -1;
            if (d < 0)
                break;
            v = v * 64 + d;
            pos++;
            n++;
        }
        return n > 0 ? v : -1;
    };
    const size = int();
    if (size < 0 || size > MAX_OUTPUT || delta[pos] !== 0x0a)
        return null;
    pos++;
    const out = new Uint8Array(size);
    let len = 0;
    while (pos < delta.length) {
        const cnt = int();
        if (cnt < 0)
            return null;
        const op = delta[pos++];
        if (op === 0x40 /* @ */) {
            const offset = int();
            if (offset < 0 || delta[pos++] !== 0x2c /* , */)
                return null;
            if (len + cnt > size || offset + cnt > source.length)
                return null;
            out.set(source.subarray(offset, offset + cnt), len);
            len += cnt;
        }
        else if (op === 0x3a /* : */) {
            if (len + cnt > size || pos + cnt > delta.length)
                return null;
            out.set(delta.subarray(pos, pos + cnt), len);
            len += cnt;
            pos += cnt;
        }
        else if (op === 0x3b /* ; */) {
            if (len !== size || cnt !== checksum(out))
                return null;
            return out;
        }
        else {
            return null;
        }
    }
    return null;
}
/** Applies a Fossil delta (as the server sends it: a string) to a payload's JSON text. */
export function applyDelta(base, delta) {
    const out = applyDeltaBytes(utf8.encode(base), utf8.encode(delta));
    if (!out)
        return null;
    try {
        return fromUtf8.decode(out);
    }
    catch {
        return null;
    }
}
