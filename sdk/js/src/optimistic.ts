/**
 * Optimistic updates over a subscription. The state is a fold of the
 * channel's publications (idempotent by offset, so history, recovery and
 * live pushes can overlap) with the app's own pending publishes applied on
 * top. A pending publish carries a client-generated id in its data (the
 * idempotency key): when the server's publication with that id arrives it
 * replaces the pending one — never applied twice — and a publish the server
 * refuses is rolled back, kept aside as `failed` with its data so the app
 * can give the user's input back.
 */
import { Emitter } from './emitter.js';
import { ErrorCode, TidingsError } from './errors.js';
import { newKey, type OutboxEntry } from './outbox.js';
import type { Subscription } from './subscription.js';
import type { Publication, PublishResult } from './types.js';
import type { TidingsClient } from './client.js';

/** Status of a pending publish. */
export type PendingStatus = 'sending' | 'sent' | 'failed';

/** One of the app's publishes, not yet seen in the channel. */
export interface PendingItem<D> {
  /** Idempotency key, also the id in `data[idField]`. */
  key: string;
  /** The data as published (with the id). */
  data: D;
  /** `sending`: no answer yet; `sent`: acknowledged, its publication not seen yet; `failed`: refused, rolled back. */
  status: PendingStatus;
  /** The offset from the acknowledgement. */
  offset?: number;
  /** Why it failed. */
  error?: TidingsError;
}

/** Options of {@link Optimistic}. */
export interface OptimisticOptions<S, D> {
  /** The state before any publication. */
  initial: () => S;
  /**
   * Folds one publication into the state and returns the new state; must not
   * modify `state` (pending items are re-applied on each change). `pub` is
   * null for a pending (local) item.
   */
  apply: (state: S, data: D, pub: Publication<D> | null) => S;
  /** Field of object data holding the client-generated id. Default `cid`. */
  idField?: string;
  /** On `reset`, reload the retained history by itself. Default true. */
  reloadOnReset?: boolean;
}

/** Events of {@link Optimistic}. */
export interface OptimisticEvents<S, D> {
  /** The visible state changed. */
  change: S;
  /** A publish was refused and rolled back; give `item.data` back to the user. */
  rejected: { item: PendingItem<D>; error: TidingsError };
  /** A pending publish was matched by its publication. */
  confirmed: { item: PendingItem<D>; publication: Publication<D> };
}

/** Optimistic state over one subscription. */
export class Optimistic<S, D = unknown> extends Emitter<OptimisticEvents<S, D>> {
  private confirmedState: S;
  private visible: S;
  private readonly applied = new Set<number>();
  private readonly items: PendingItem<D>[] = [];
  private readonly idField: string;
  private readonly offs: Array<() => void> = [];
  private loading: Promise<void> | null = null;
  /** Bumped by each load; a reset starts a new one and the old one stops. */
  private loadGen = 0;
  /** Live publications received while a load runs, applied after its history. */
  private buffered: Publication<D>[] | null = null;

  /**
   * @param client the client (for restored outbox entries and their answers)
   * @param sub the subscription whose publications make the state
   */
  constructor(
    client: TidingsClient,
    private readonly sub: Subscription,
    private readonly opts: OptimisticOptions<S, D>,
  ) {
    super();
    this.idField = opts.idField ?? 'cid';
    this.confirmedState = opts.initial();
    this.visible = this.confirmedState;
    this.offs.push(
      sub.on('publication', (p) => this.onPublication(p as Publication<D>)),
      // A snapshot is folded like a publication: `apply` gets its data (the
      // app's fold knows its shape) and merges or replaces.
      sub.on('snapshot', (p) => this.onPublication(p as Publication<D>)),
      sub.on('reset', () => this.onReset()),
      client.on('published', ({ entry, result }) => this.onAck(entry.key, result)),
      client.on('publishFailed', ({ entry, error }) => this.onFail(entry.key, error)),
      client.on('outboxRestored', (entries) => this.adopt(entries)),
    );
    this.adopt(client.pendingPublishes(sub.channel));
  }

  /** The visible state: confirmed publications plus pending ones. */
  get state(): S {
    return this.visible;
  }

  /** The state from confirmed publications only. */
  get confirmed(): S {
    return this.confirmedState;
  }

  /** The app's publishes not yet seen in the channel, failed ones included. */
  get pending(): ReadonlyArray<Readonly<PendingItem<D>>> {
    return this.items;
  }

  /**
   * Applies `data` at once and publishes it. Resolves with the offset on
   * acknowledgement; rejects when refused (the item is then rolled back and
   * listed as `failed`). The returned promise is already handled: ignoring it
   * is safe.
   */
  send(data: D): Promise<PublishResult> {
    const key = newKey();
    const withId = (isRecord(data) ? { ...data, [this.idField]: key } : data) as D;
    this.items.push({ key, data: withId, status: 'sending' });
    this.recompute();
    const p = this.sub.publish(withId, { idempotencyKey: key });
    // Through the outbox, answers also come as the client's published /
    // publishFailed events (which entries restored after a reload have
    // only); without one (`outbox: false`) only this promise tells. Both
    // handlers ignore an item already settled.
    p.then((r) => this.onAck(key, r), (e) => this.onFail(key, e instanceof TidingsError ? e
      : new TidingsError(ErrorCode.BadResponse, String(e))));
    return p;
  }

  /** Sends a failed item again (a new publish, with a new key). */
  retry(key: string): Promise<PublishResult> | null {
    const item = this.dismiss(key);
    if (!item) return null;
    const data = isRecord(item.data) ? { ...item.data } : item.data;
    if (isRecord(data)) delete (data as Record<string, unknown>)[this.idField];
    return this.send(data as D);
  }

  /** Removes a failed item; returns it. */
  dismiss(key: string): PendingItem<D> | null {
    const i = this.items.findIndex((x) => x.key === key && x.status === 'failed');
    if (i < 0) return null;
    const [item] = this.items.splice(i, 1);
    this.recompute();
    return item;
  }

  /**
   * Loads the retained history into the state (idempotent: publications
   * already folded are skipped). Runs by itself after a `reset`. Live
   * publications that come during the load are kept and applied after the
   * history (those it held already are skipped, by offset), so the state is
   * folded in offset order. A `reset` during a load starts it over; the
   * promise resolves when the last one has finished.
   */
  load(): Promise<void> {
    return this.loading ?? this.startLoad();
  }

  private startLoad(): Promise<void> {
    const gen = ++this.loadGen;
    this.buffered = [];
    const run = async (): Promise<void> => {
      let since: { offset: number; epoch: string } | undefined;
      for (let page = 0; page < 1000; page++) {
        const r = await this.sub.history(since ? { since, limit: 1000 } : { limit: 1000 });
        if (gen !== this.loadGen) return;
        for (const p of r.publications) this.fold(p as Publication<D>);
        this.recompute();
        const last = r.publications[r.publications.length - 1];
        if (!last || last.offset === undefined || last.offset >= r.offset) break;
        since = { offset: last.offset, epoch: r.epoch };
      }
    };
    const p = (async () => {
      try {
        await run();
      } catch (e) {
        if (gen === this.loadGen) throw e; // a superseded load's failure does not matter
      } finally {
        if (gen === this.loadGen) {
          this.loading = null;
          const live = this.buffered ?? [];
          this.buffered = null;
          for (const pub of live) this.fold(pub);
          if (live.length) this.recompute();
        }
      }
      // Superseded by a reset: resolve when the load that replaced it ends.
      if (gen !== this.loadGen && this.loading) await this.loading;
    })();
    this.loading = p;
    return p;
  }

  /** Stops listening. */
  destroy(): void {
    for (const off of this.offs.splice(0)) off();
  }

  private adopt(entries: OutboxEntry[]): void {
    let changed = false;
    for (const e of entries) {
      if (e.channel !== this.sub.channel || this.items.some((x) => x.key === e.key)) continue;
      if (isRecord(e.data) && e.data[this.idField] !== e.key) continue;
      this.items.push({ key: e.key, data: e.data as D, status: 'sending' });
      changed = true;
    }
    if (changed) this.recompute();
  }

  private onPublication(p: Publication<D>): void {
    if (this.buffered) {
      this.buffered.push(p);
      return;
    }
    this.fold(p);
    this.recompute();
  }

  private fold(p: Publication<D>): void {
    if (p.offset !== undefined) {
      if (this.applied.has(p.offset)) return;
      this.applied.add(p.offset);
    }
    this.confirmedState = this.opts.apply(this.confirmedState, p.data, p);
    const id = isRecord(p.data) ? p.data[this.idField] : undefined;
    const i = this.items.findIndex((x) => (id !== undefined && x.key === id)
      || (p.offset !== undefined && x.offset === p.offset && x.status === 'sent'));
    if (i >= 0) {
      const [item] = this.items.splice(i, 1);
      this.emit('confirmed', { item, publication: p });
    }
  }

  private onReset(): void {
    this.applied.clear();
    this.confirmedState = this.opts.initial();
    // A load in progress folded into the state just cleared: start it over.
    const reload = (this.opts.reloadOnReset ?? true) || this.loading !== null;
    this.loading = null;
    this.loadGen += 1;
    this.buffered = null;
    this.recompute();
    if (reload) this.startLoad().catch(() => undefined);
  }

  private onAck(key: string, result: PublishResult): void {
    const item = this.items.find((x) => x.key === key);
    if (!item || item.status !== 'sending') return;
    item.status = 'sent';
    if (result.offset !== undefined) {
      item.offset = result.offset;
      if (this.applied.has(result.offset)) {
        // Its publication was folded already (matched by offset).
        this.items.splice(this.items.indexOf(item), 1);
      }
    } else {
      // Ephemeral: no publication to wait for.
      this.items.splice(this.items.indexOf(item), 1);
    }
    this.recompute();
  }

  private onFail(key: string, error: TidingsError): void {
    const item = this.items.find((x) => x.key === key);
    if (!item || item.status !== 'sending') return;
    item.status = 'failed';
    item.error = error;
    this.recompute();
    this.emit('rejected', { item, error });
  }

  private recompute(): void {
    let s = this.confirmedState;
    for (const item of this.items) if (item.status !== 'failed') s = this.opts.apply(s, item.data, null);
    this.visible = s;
    this.emit('change', s);
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
