/** Keeps entries in memory: nothing survives the process (Node, tests). */
export class MemoryOutboxStore {
    constructor() {
        this.entries = new Map();
    }
    /** Every stored entry (copies). */
    async load() {
        return [...this.entries.values()].map((e) => ({ ...e }));
    }
    /** Stores a copy of `entry`. */
    async put(entry) {
        this.entries.set(entry.key, { ...entry });
    }
    /** Removes the entry with `key`. */
    async delete(key) {
        this.entries.delete(key);
    }
    /** The number of stored entries. */
    get size() {
        return this.entries.size;
    }
}
/**
 * Keeps entries in IndexedDB, one database per outbox name (use the user id,
 * so that one user's queued messages are never sent as another's).
 */
export class IndexedDbOutboxStore {
    /** @param name the outbox name; the database is `tidings-outbox:<name>` */
    constructor(name) {
        this.name = name;
        this.db = null;
    }
    open() {
        if (!this.db) {
            this.db = new Promise((resolve, reject) => {
                const req = indexedDB.open(`tidings-outbox:${this.name}`, 1);
                req.onupgradeneeded = () => {
                    req.result.createObjectStore('entries', { keyPath: 'key' });
                };
                req.onsuccess = () => resolve(req.result);
                req.onerror = () => reject(req.error);
            });
            // A failed open is retried next time rather than cached.
            this.db.catch(() => {
                this.db = null;
            });
        }
        return this.db;
    }
    async tx(mode, fn) {
        const db = await this.open();
        return new Promise((resolve, reject) => {
            const t = db.transaction('entries', mode);
            const req = fn(t.objectStore('entries'));
            // Resolve once the transaction is durable, not just when the request is done.
            t.oncomplete = () => resolve(req.result);
            t.onerror = () => reject(t.error);
            t.onabort = () => reject(t.error);
        });
    }
    /** Every stored entry; malformed records are skipped. */
    async load() {
        const all = await this.tx('readonly', (s) => s.getAll());
        return all.filter((e) => e && typeof e.key === 'string' && typeof e.channel === 'string');
    }
    /** Stores `entry`, resolving once the transaction is committed. */
    async put(entry) {
        await this.tx('readwrite', (s) => s.put(entry));
    }
    /** Removes the entry with `key`. */
    async delete(key) {
        await this.tx('readwrite', (s) => s.delete(key));
    }
}
/** IndexedDB where the platform has it, otherwise memory. */
export function defaultOutboxStore(name) {
    return typeof indexedDB !== 'undefined' ? new IndexedDbOutboxStore(name) : new MemoryOutboxStore();
}
let counter = 0;
/**
 * An increasing sequence number that stays increasing across reloads: the
 * clock in microseconds plus a counter for calls within one millisecond.
 */
export function nextSeq(last) {
    counter = (counter + 1) % 1000;
    return Math.max(last + 1, Date.now() * 1000 + counter);
}
/** A new random idempotency key. */
export function newKey() {
    const c = globalThis.crypto;
    if (c && typeof c.randomUUID === 'function')
        return c.randomUUID();
    // Older platforms: 128 random bits from Math.random are enough to be unique
    // within one channel's idempotency window.
    let s = '';
    for (let i = 0; i < 32; i++)
        s += Math.floor(Math.random() * 16).toString(16);
    return s;
}
