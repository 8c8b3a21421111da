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
import { TidingsError } from './errors.js';
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
    rejected: {
        item: PendingItem<D>;
        error: TidingsError;
    };
    /** A pending publish was matched by its publication. */
    confirmed: {
        item: PendingItem<D>;
        publication: Publication<D>;
    };
}
/** Optimistic state over one subscription. */
export declare class Optimistic<S, D = unknown> extends Emitter<OptimisticEvents<S, D>> {
    private readonly sub;
    private readonly opts;
    private confirmedState;
    private visible;
    private readonly applied;
    private readonly items;
    private readonly idField;
    private readonly offs;
    private loading;
    /** Bumped by each load; a reset starts a new one and the old one stops. */
    private loadGen;
    /** Live publications received while a load runs, applied after its history. */
    private buffered;
    /**
     * @param client the client (for restored outbox entries and their answers)
     * @param sub the subscription whose publications make the state
     */
    constructor(client: TidingsClient, sub: Subscription, opts: OptimisticOptions<S, D>);
    /** The visible state: confirmed publications plus pending ones. */
    get state(): S;
    /** The state from confirmed publications only. */
    get confirmed(): S;
    /** The app's publishes not yet seen in the channel, failed ones included. */
    get pending(): ReadonlyArray<Readonly<PendingItem<D>>>;
    /**
     * Applies `data` at once and publishes it. Resolves with the offset on
     * acknowledgement; rejects when refused (the item is then rolled back and
     * listed as `failed`). The returned promise is already handled: ignoring it
     * is safe.
     */
    send(data: D): Promise<PublishResult>;
    /** Sends a failed item again (a new publish, with a new key). */
    retry(key: string): Promise<PublishResult> | null;
    /** Removes a failed item; returns it. */
    dismiss(key: string): PendingItem<D> | null;
    /**
     * Loads the retained history into the state (idempotent: publications
     * already folded are skipped). Runs by itself after a `reset`. Live
     * publications that come during the load are kept and applied after the
     * history (those it held already are skipped, by offset), so the state is
     * folded in offset order. A `reset` during a load starts it over; the
     * promise resolves when the last one has finished.
     */
    load(): Promise<void>;
    private startLoad;
    /** Stops listening. */
    destroy(): void;
    private adopt;
    private onPublication;
    private fold;
    private onReset;
    private onAck;
    private onFail;
    private recompute;
}
