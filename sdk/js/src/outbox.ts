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
export class MemoryOutboxStore implements OutboxStore {
  private readonly entries = new Map<string, OutboxEntry>();

  /** Every stored entry (copies). */
  async load(): Promise<OutboxEntry[]> {
    return [...this.entries.values()].map((e) => ({ ...e }));
  }

  /** Stores a copy of `entry`. */
  async put(entry: OutboxEntry): Promise<void> {
    this.entries.set(entry.key, { ...entry });
  }

  /** Removes the entry with `key`. */
  async delete(key: string): Promise<void> {
    this.entries.delete(key);
  }

  /** The number of stored entries. */
  get size(): number {
    return this.entries.size;
  }
}

/**
 * Keeps entries in IndexedDB, one database per outbox name (use the user id,
 * so that one user's queued messages are never sent as another's).
 */
export class IndexedDbOutboxStore implements OutboxStore {
  private db: Promise<IDBDatabase> | null = null;

  /** @param name the outbox name; the database is `tidings-outbox:<name>` */
  constructor(private readonly name: string) {}

  private open(): Promise<IDBDatabase> {
    if (!this.db) {
      this.db = new Promise<IDBDatabase>((resolve, reject) => {
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

  private async tx<T>(mode: IDBTransactionMode, fn: (s: IDBObjectStore) => IDBRequest<T>): Promise<T> {
    const db = await this.open();
    return new Promise<T>((resolve, reject) => {
      const t = db.transaction('entries', mode);
      const req = fn(t.objectStore('entries'));
      // Resolve once the transaction is durable, not just when the request is done.
      t.oncomplete = () => resolve(req.result);
      t.onerror = () => reject(t.error);
      t.onabort = () => reject(t.error);
    });
  }

  /** Every stored entry; malformed records are skipped. */
  async load(): Promise<OutboxEntry[]> {
    const all = await this.tx('readonly', (s) => s.getAll());
    return (all as OutboxEntry[]).filter((e) => e && typeof e.key === 'string' && typeof e.channel === 'string');
  }

  /** Stores `entry`, resolving once the transaction is committed. */
  async put(entry: OutboxEntry): Promise<void> {
    await this.tx('readwrite', (s) => s.put(entry));
  }

  /** Removes the entry with `key`. */
  async delete(key: string): Promise<void> {
    await this.tx('readwrite', (s) => s.delete(key));
  }
}

/** IndexedDB where the platform has it, otherwise memory. */
export function defaultOutboxStore(name: string): OutboxStore {
  return typeof indexedDB !== 'undefined' ? new IndexedDbOutboxStore(name) : new MemoryOutboxStore();
}

let counter = 0;

/**
 * An increasing sequence number that stays increasing across reloads: the
 * clock in microseconds plus a counter for calls within one millisecond.
 */
export function nextSeq(last: number): number {
  counter = (counter + 1) % 1000;
  return Math.max(last + 1, Date.now() * 1000 + counter);
}

/** A new random idempotency key. */
export function newKey(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  // Older platforms: 128 random bits from Math.random are enough to be unique
  // within one channel's idempotency window.
  let s = '';
  for (let i = 0; i < 32; i++) s += Math.floor(Math.random() * 16).toString(16);
  return s;
}
