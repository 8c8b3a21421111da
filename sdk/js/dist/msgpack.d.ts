/**
 * MessagePack for the `tidings.v1.msgpack` subprotocol: the same messages
 * as JSON, with JSON's types (plus `Uint8Array` as bin). Several values
 * come back to back in one frame. Decoding never throws: a frame that is
 * not MessagePack yields the values before the damage.
 */
/** Encodes a JSON-like value (undefined object members are left out, as JSON.stringify does). */
export declare function encode(value: unknown): Uint8Array;
/** Decodes every value of a frame (stopping at the first damaged one). */
export declare function decodeMulti(frame: Uint8Array): unknown[];
