/**
 * One channel subscription. It keeps the position (offset + epoch) of the
 * last publication delivered, so that every reconnect, on any transport,
 * resumes exactly there: each publication reaches the app once, in offset
 * order, or the app gets a `reset` telling it to reload.
 */
import { type Cursors, type DeliveryState, type MembersPage, type PageOptions, type ReceiptEvent } from './chat.js';
import { type Obj } from './codec.js';
import { type E2ee } from './e2ee.js';
import { Emitter } from './emitter.js';
import { TidingsError } from './errors.js';
import type { SubscribeRequest } from './transport.js';
import type { Position, PresenceEntry, Publication, PublishResult, TransportName } from './types.js';
/** State of a subscription. */
export type SubscriptionState = 'subscribing' | 'subscribed' | 'unsubscribed';
/** Payload of the `subscribed` event. */
export interface SubscribedEvent {
    /**
     * True when the subscription resumed from a position and nothing was
     * missed (the missed publications follow as `publication` events). False
     * for a first subscription without `since`, and when the position could
     * not be recovered (a `reset` event comes too: reload the state).
     */
    recovered: boolean;
    /** The channel's top offset now (absent in ephemeral channels). */
    offset?: number;
    /** The channel's epoch (absent in ephemeral channels). */
    epoch?: string;
    /** The transport in use. */
    transport: TransportName;
    /** Presence entries by client id, when the namespace has presence and the transport gives them (WebSocket). */
    presence?: Record<string, PresenceEntry>;
}
/** Payload of the `reset` event: the state the app holds is not continued; reload it. */
export interface ResetEvent {
    /** The channel's position now; publications after it follow. */
    offset: number;
    /** The channel's epoch now. */
    epoch: string;
    /** `unrecoverable`: the position was lost (trimmed, too far behind); `epoch`: the channel started over. */
    reason: 'unrecoverable' | 'epoch';
}
/** Events of a {@link Subscription}. */
export interface SubscriptionEvents {
    /** A publication, once, in offset order. */
    publication: Publication;
    /**
     * The channel's whole state (a publication made with `snapshot`): replace
     * what the app holds; `publication`s after it apply to it. Comes in
     * offset order like publications, also instead of a `reset` when the
     * position was lost but the channel has a snapshot.
     */
    snapshot: Publication;
    /** The subscription is (again) in place. */
    subscribed: SubscribedEvent;
    /** The app must reload its state for this channel. */
    reset: ResetEvent;
    /** A connection entered the channel's presence. */
    join: PresenceEntry;
    /** A connection left the channel's presence. */
    leave: PresenceEntry;
    /** The subscription failed or the server ended it for good. */
    error: TidingsError;
    /** The state changed. */
    state: SubscriptionState;
    /** A `receipt` push: a member's cursors moved (or, in large channels, a summary). */
    receipt: ReceiptEvent;
    /** What {@link Subscription.deliveryState} answers may have changed (receipts, members, new publications): re-render ticks. */
    delivery: {
        channel: string;
    };
    /**
     * An E2EE publication could not be opened (not sealed for this device, no
     * key for its sender, tampered with). It is delivered as a `publication`
     * too, with `data: null`, `encrypted: true` and `undecryptable` saying why.
     */
    undecryptable: Publication;
}
/** How urgently a publication reaches subscribers with a backlog. */
export type Priority = 'critical' | 'high' | 'normal' | 'low';
/** Options of {@link Subscription.publish}. */
export interface PublishOptions {
    /** The idempotency key; a random one is made when absent. */
    idempotencyKey?: string;
    /** Tags passed to subscribers. */
    tags?: Record<string, string>;
    /**
     * What the publication is the latest value of within its channel (a
     * ticker's symbol, a driver's id): in `latest` namespaces a subscriber
     * that falls behind gets the newest value per key.
     */
    key?: string;
    /** Its priority on the way to subscribers (the namespace's default when absent). */
    priority?: Priority;
    /**
     * Queue in the outbox while disconnected (default true). False: fail at
     * once with {@link ErrorCode.Disconnected} when not connected, and do not
     * store it (for signals such as typing that are worthless later).
     */
    queue?: boolean;
    /**
     * Seal the data end-to-end for the channel's members' devices before
     * publishing (see `E2ee`). Default: the subscription's `encrypt` option
     * (through `sub.publish`), else false.
     */
    encrypt?: boolean;
}
/** Options of history reads. */
export interface HistoryOptions {
    /** Only publications after this position. */
    since?: Position;
    /** At most this many publications. */
    limit?: number;
    /** Newest first. */
    reverse?: boolean;
}
/** A history answer. */
export interface HistoryResult {
    /** The publications, in the order asked. */
    publications: Publication[];
    /** The channel's top offset. */
    offset: number;
    /** The channel's epoch. */
    epoch: string;
}
/** What a subscription needs from its client. */
export interface SubscriptionHost {
    /** Publish into a channel (see `TidingsClient.publish`). */
    publish(channel: string, data: unknown, opts?: PublishOptions): Promise<PublishResult>;
    /** Read a channel's history. */
    history(channel: string, opts?: HistoryOptions): Promise<HistoryResult>;
    /** Read a channel's presence. */
    presence(channel: string): Promise<Record<string, PresenceEntry>>;
    /** Count a channel's connections and users. */
    presenceStats(channel: string): Promise<{
        clients: number;
        users: number;
    }>;
    /** Subscribe again from the current position (after a gap or an `unsub` 3000-3499). */
    resubscribe(sub: Subscription, serverEnded: boolean): void;
    /** Forget the subscription. */
    removeSubscription(sub: Subscription): void;
    /** The local user (null: anonymous, or not known yet). */
    readonly user: string | null;
    /** A page of a channel's members. */
    members(channel: string, opts?: PageOptions): Promise<MembersPage>;
    /** Coalesced delivered cursor update. */
    markDelivered(channel: string, offset: number): Promise<Cursors>;
    /** Coalesced read cursor update. */
    markRead(channel: string, offset: number): Promise<Cursors>;
    /** Sends a waiting cursor update of the channel now. */
    flushCursors(channel: string): void;
    /** The server holds at least these cursors of the local user (own receipts). */
    cursorsKnown(channel: string, c: Cursors): void;
    /** The E2EE to open envelopes with: `create` makes the client's default one if it has none. */
    e2eeFor(create: boolean): E2ee | null;
}
/** Options of a subscription, as given to `client.subscribe` (see `SubscribeOptions`). */
export interface SubscriptionOptions {
    /** Start from the channel's latest snapshot. */
    snapshot?: boolean;
    /** Receive payloads as Fossil deltas. */
    delta?: 'fossil';
    /** Mark what arrives as delivered, by itself (members channels). */
    receipts?: boolean;
    /** Seal `publish` data end to end by default. */
    encrypt?: boolean;
}
/** A subscription to one channel; get one with `client.subscribe()`. */
export declare class Subscription extends Emitter<SubscriptionEvents> {
    private readonly host;
    private readonly opts;
    /** The channel name. */
    readonly channel: string;
    private _state;
    private pos;
    /**
     * `since: 'start'` not resolved yet: cleared once a subscribe reply is
     * handled (the position is then known).
     */
    startPending: boolean;
    /** A position lookup was refused for good (ephemeral channel, history closed): do not look up again. */
    noLookup: boolean;
    /** The position was looked up for a fresh subscription (SSE/poll): not a recovery. */
    freshLookup: boolean;
    /** The last payload's JSON text, which the next delta applies to. */
    private deltaBase;
    /** Events waiting for envelopes before them to be opened (delivery stays in order). */
    private queued;
    private chain;
    /** Members' cursors: from receipts, and each publisher's own publications. */
    private readonly cursors;
    private summary;
    private memberList;
    private membersLoading;
    /** Publisher of each offset seen (bounded). */
    private readonly senders;
    /** @internal Use `client.subscribe()`. */
    constructor(host: SubscriptionHost, channel: string, since: Position | 'start' | undefined, opts?: SubscriptionOptions);
    /** The current state. */
    get state(): SubscriptionState;
    /** The position of the last publication delivered (null before any is known). */
    get position(): Position | null;
    /**
     * Publishes into this channel; see `client.publish`. With the `encrypt`
     * option (or `opts.encrypt`) the data is sealed end to end first.
     */
    publish(data: unknown, opts?: PublishOptions): Promise<PublishResult>;
    /**
     * Reads this channel's history; E2EE envelopes come opened (when the
     * client has E2EE), as publications do.
     */
    history(opts?: HistoryOptions): Promise<HistoryResult>;
    /**
     * Marks the channel read up to `offset` (the local user saw it): sent
     * coalesced (at most one `cursor` command per ~500 ms), never lower than
     * what was sent. Resolves with the stored cursors once sent; rejects when
     * the server refuses (101 beyond the top, 103 not a member). Ignoring the
     * promise is safe.
     */
    markRead(offset: number): Promise<Cursors>;
    /** Marks the channel delivered up to `offset`; with `receipts: true` the subscription does it by itself. */
    markDelivered(offset: number): Promise<Cursors>;
    /**
     * The channel's members (every page; cached, `refresh` reads them again).
     * Members namespaces only.
     */
    members(refresh?: boolean): Promise<string[]>;
    /**
     * Delivery state of the message at `offset`, from the receipts seen so
     * far: in a 1:1 conversation `'sent'`, `'delivered'` or `'read'` (the
     * other member's cursors); in a group `{members, delivered, read}`
     * counting the members other than the publisher. Members are read once
     * (a `delivery` event follows); until then the answer is `'sent'`.
     * Cursors are learned from `receipt` pushes (which come as members' cursors move)
     * and from each member's own publications (what you write, you have read).
     */
    deliveryState(offset: number): DeliveryState;
    /** A member's cursors as learned so far (receipts, own publications). */
    cursorsOf(user: string): Cursors | undefined;
    /** Reads this channel's presence (every page). */
    presence(): Promise<Record<string, PresenceEntry>>;
    /** Counts this channel's connections and users. */
    presenceStats(): Promise<{
        clients: number;
        users: number;
    }>;
    /** Ends the subscription; no event follows. A cursor update waiting to be sent is sent now. */
    unsubscribe(): void;
    /** @internal Whether it asked to start from the channel's snapshot. */
    get wantsSnapshot(): boolean;
    /** @internal What to send to (re)subscribe. */
    request(): SubscribeRequest;
    /** @internal Sets the position found by a lookup before subscribing. */
    setLookedUpPosition(pos: Position, fresh: boolean): void;
    /** @internal The connection is gone: resubscribe on the next one. */
    connectionLost(): void;
    /** @internal A subscribe reply (WebSocket) or its SSE/poll equivalent. */
    handleSubscribed(ok: Obj, transport: TransportName): void;
    /**
     * @internal The server said 107 (already subscribed, e.g. through the
     * token's `channels` claim): the channel's pushes flow already. The
     * position is kept; a gap after it is recovered on the next publication.
     */
    handleAlreadySubscribed(transport: TransportName): void;
    /** @internal Subscribing failed for good. */
    handleError(err: TidingsError): void;
    /** @internal A push for this channel. */
    handlePush(push: Obj): void;
    /**
     * Turns a delta subscription's `data` (the payload's text, or a delta
     * against the previous one) into the payload. A delta without its base
     * (a gap) or that does not apply subscribes again from the position:
     * the server then sends the missed publications, or the snapshot, in full.
     */
    private fromText;
    /** `latest`: the channel's pushes may skip values (an offset jump is no loss). */
    private handlePub;
    /**
     * Emits a publication: at once, or, when it is an E2EE envelope to open
     * (or events wait before it), once opened and after those before it.
     * Opening runs at once; only the emitting waits, so order is kept.
     */
    private deliver;
    /** Runs `fn` now, or after the events waiting for envelopes to be opened. */
    private ordered;
    private emitPub;
    /** Remembers who published `p`: their cursors are at least at its offset. */
    private notePublication;
    private noteSender;
    private raiseCursors;
    private handleReceipt;
    private setState;
}
