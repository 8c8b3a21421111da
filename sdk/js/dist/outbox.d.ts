import type { Priority } from './subscription.js';
/**
 * The offline outbox: publishes wait here until the server acknowledges or
 * refuses them. Entries are stored (IndexedDB in browsers) so that messages
 * written while offline survive a page reload, and are sent again in order
 * with their original idempotency keys, so a resend after a lost
 * acknowledgement publishes nothing twice.
 */
/** A publish waiting for its acknowledgement. */
export interface OutboxEntry {
    /** The idempotency key; also the entry's identity. */
    key: string;
    /** The channel to publish into. */
    channel: string;
    /** The payload. */
    data: unknown;
    /** Tags to publish with. */
    tags?: Record<string, string>;
    /** What it is the latest value of (`latest` delivery conflates by it). */
    conflationKey?: string;
    /** Its priority on the way to subscribers. */
    priority?: Priority;
    /** Sending order: increasing, also across reloads. */
    seq: number;
    /** When the app published it, ms since the Unix epoch. */
    createdAt: number;
}
/** Where outbox entries are kept. Implement it to store them elsewhere. */
export interface OutboxStore {
    /** Every stored entry, in any order. */
    load(): Promise<OutboxEntry[]>;
    /** Stores (or replaces) an entry. */
    put(entry: OutboxEntry): Promise<void>;
    /** Removes an entry by key; no error if absent. */
    delete(key: string): Promise<void>;
}
/** Keeps entries in memory: nothing survives the process (Node, tests). */
export declare class MemoryOutboxStore implements OutboxStore {
    private readonly entries;
    /** Every stored entry (copies). */
    load(): Promise<OutboxEntry[]>;
    /** Stores a copy of `entry`. */
    put(entry: OutboxEntry): Promise<void>;
    /** Removes the entry with `key`. */
    delete(key: string): Promise<void>;
    /** The number of stored entries. */
    get size(): number;
}
/**
 * Keeps entries in IndexedDB, one database per outbox name (use the user id,
 * so that one user's queued messages are never sent as another's).
 */
export declare class IndexedDbOutboxStore implements OutboxStore {
    private readonly name;
    private db;
    /** @param name the outbox name; the database is `tidings-outbox:<name>` */
    constructor(name: string);
    private open;
    private tx;
    /** Every stored entry; malformed records are skipped. */
    load(): Promise<OutboxEntry[]>;
    /** Stores `entry`, resolving once the transaction is committed. */
    put(entry: OutboxEntry): Promise<void>;
    /** Removes the entry with `key`. */
    delete(key: string): Promise<void>;
}
/** IndexedDB where the platform has it, otherwise memory. */
export declare function defaultOutboxStore(name: string): OutboxStore;
/**
 * An increasing sequence number that stays increasing across reloads: the
 * clock in microseconds plus a counter for calls within one millisecond.
 */
export declare function nextSeq(last: number): number;
/** A new random idempotency key. */
export declare function newKey(): string;
