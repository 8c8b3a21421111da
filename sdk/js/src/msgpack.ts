/**
 * MessagePack for the `tidings.v1.msgpack` subprotocol: the same messages
 * as JSON, with JSON's types (plus `Uint8Array` as bin). Several values
 * come back to back in one frame. Decoding never throws: a frame that is
 * not MessagePack yields the values before the damage.
 */

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

/** Encodes a JSON-like value (undefined object members are left out, as JSON.stringify does). */
export function encode(value: unknown): Uint8Array {
  const w = new Writer();
  w.value(value);
  return w.bytes();
}

class Writer {
  private buf = new Uint8Array(256);
  private view = new DataView(this.buf.buffer);
  private len = 0;

  bytes(): Uint8Array {
    return this.buf.subarray(0, this.len);
  }

  private room(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.len + n));
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  private u8(b: number): void {
    this.room(1);
    this.buf[this.len++] = b;
  }

  private head(b: number, n: number, size: 1 | 2 | 4): void {
    this.room(1 + size);
    this.buf[this.len++] = b;
    if (size === 1) this.view.setUint8(this.len, n);
    else if (size === 2) this.view.setUint16(this.len, n);
    else this.view.setUint32(this.len, n);
    this.len += size;
  }

  private raw(b: Uint8Array): void {
    this.room(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }

  private length(n: number, fix: number, fixMax: number, b8: number | null, b16: number, b32: number): void {
    if (n <= fixMax) this.u8(fix | n);
    else if (b8 !== null && n < 0x100) this.head(b8, n, 1);
    else if (n < 0x10000) this.head(b16, n, 2);
    else this.head(b32, n, 4);
  }

  value(v: unknown): void {
    if (v === null || v === undefined) return this.u8(0xc0);
    if (v === false) return this.u8(0xc2);
    if (v === true) return this.u8(0xc3);
    if (typeof v === 'number') return this.number(v);
    if (typeof v === 'string') {
      const b = utf8.encode(v);
      this.length(b.length, 0xa0, 31, 0xd9, 0xda, 0xdb);
      return this.raw(b);
    }
    if (v instanceof Uint8Array) {
      this.length(v.length, 0xc4, -1, 0xc4, 0xc5, 0xc6);
      return this.raw(v);
    }
    if (Array.isArray(v)) {
      this.length(v.length, 0x90, 15, null, 0xdc, 0xdd);
      for (const e of v) this.value(e);
      return;
    }
    if (typeof v === 'object') {
      const entries = Object.entries(v as Record<string, unknown>).filter(([, e]) => e !== undefined);
      this.length(entries.length, 0x80, 15, null, 0xde, 0xdf);
      for (const [k, e] of entries) {
        this.value(k);
        this.value(e);
      }
      return;
    }
    this.u8(0xc0); // functions, symbols: as JSON would, nothing (null)
  }

  private number(n: number): void {
    if (Number.isSafeInteger(n)) {
      if (n >= 0) {
        if (n < 0x80) return this.u8(n);
        if (n < 0x100) return this.head(0xcc, n, 1);
        if (n < 0x10000) return this.head(0xcd, n, 2);
        if (n < 0x100000000) return this.head(0xce, n, 4);
        this.room(9);
        this.buf[this.len++] = 0xcf;
        this.view.setBigUint64(this.len, BigInt(n));
        this.len += 8;
        return;
      }
      if (n >= -32) return this.u8(n & 0xff);
      this.room(9);
      this.buf[this.len++] = 0xd3;
      this.view.setBigInt64(this.len, BigInt(n));
      this.len += 8;
      return;
    }
    if (!Number.isFinite(n)) return this.u8(0xc0); // as JSON: null
    this.room(9);
    this.buf[this.len++] = 0xcb;
    this.view.setFloat64(this.len, n);
    this.len += 8;
  }
}

/** Thrown inside the decoder only; never escapes it. */
class Truncated extends Error {}

/** How deeply a value may nest (as the server allows). */
const MAX_DEPTH = 128;

/** Decodes every value of a frame (stopping at the first damaged one). */
export function decodeMulti(frame: Uint8Array): unknown[] {
  const r = new Reader(frame);
  const out: unknown[] = [];
  while (r.pos < frame.length) {
    try {
      out.push(r.value(0));
    } catch {
      break;
    }
  }
  return out;
}

class Reader {
  pos = 0;
  private readonly view: DataView;

  constructor(private readonly b: Uint8Array) {
    this.view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  }

  private need(n: number): number {
    if (this.pos + n > this.b.length) throw new Truncated();
    const at = this.pos;
    this.pos += n;
    return at;
  }

  private str(n: number): string {
    const at = this.need(n);
    return fromUtf8.decode(this.b.subarray(at, at + n));
  }

  private bin(n: number): Uint8Array {
    const at = this.need(n);
    return this.b.slice(at, at + n);
  }

  private array(n: number, depth: number): unknown[] {
    if (depth >= MAX_DEPTH) throw new Truncated();
    const a: unknown[] = [];
    for (let i = 0; i < n; i++) a.push(this.value(depth + 1));
    return a;
  }

  private map(n: number, depth: number): Record<string, unknown> {
    if (depth >= MAX_DEPTH) throw new Truncated();
    const o: Record<string, unknown> = {};
    for (let i = 0; i < n; i++) {
      const k = this.value(depth + 1);
      const v = this.value(depth + 1);
      // As JSON.parse: `__proto__` is an own key, never the prototype.
      if (typeof k === 'string') Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
    }
    return o;
  }

  value(depth: number): unknown {
    const t = this.b[this.need(1)]!;
    if (t < 0x80) return t;
    if (t < 0x90) return this.map(t & 0x0f, depth);
    if (t < 0xa0) return this.array(t & 0x0f, depth);
    if (t < 0xc0) return this.str(t & 0x1f);
    if (t >= 0xe0) return t - 0x100;
    const v = this.view;
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.bin(v.getUint8(this.need(1)));
      case 0xc5: return this.bin(v.getUint16(this.need(2)));
      case 0xc6: return this.bin(v.getUint32(this.need(4)));
      case 0xca: return v.getFloat32(this.need(4));
      case 0xcb: return v.getFloat64(this.need(8));
      case 0xcc: return v.getUint8(this.need(1));
      case 0xcd: return v.getUint16(this.need(2));
      case 0xce: return v.getUint32(this.need(4));
      case 0xcf: return Number(v.getBigUint64(this.need(8)));
      case 0xd0: return v.getInt8(this.need(1));
      case 0xd1: return v.getInt16(this.need(2));
      case 0xd2: return v.getInt32(this.need(4));
      case 0xd3: return Number(v.getBigInt64(this.need(8)));
      case 0xd9: return this.str(v.getUint8(this.need(1)));
      case 0xda: return this.str(v.getUint16(this.need(2)));
      case 0xdb: return this.str(v.getUint32(this.need(4)));
      case 0xdc: return this.array(v.getUint16(this.need(2)), depth);
      case 0xdd: return this.array(v.getUint32(this.need(4)), depth);
      case 0xde: return this.map(v.getUint16(this.need(2)), depth);
      case 0xdf: return this.map(v.getUint32(this.need(4)), depth);
      default: throw new Truncated(); // ext types and 0xc1 are not ours
    }
  }
}
