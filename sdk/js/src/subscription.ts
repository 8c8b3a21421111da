/**
 * One channel subscription. It keeps the position (offset + epoch) of the
 * last publication delivered, so that every reconnect, on any transport,
 * resumes exactly there: each publication reaches the app once, in offset
 * order, or the app gets a `reset` telling it to reload.
 */
import {
  computeDeliveryState, decodeReceipt, type Cursors, type DeliveryState, type MembersPage, type PageOptions, type ReceiptEvent,
  type ReceiptSummary,
} from './chat.js';
import { decodePresenceEntry, decodePresenceMap, decodePublication, decodePublications, parseJson, str, uint, type Obj } from './codec.js';
import { applyDelta } from './delta.js';
import { isEnvelope, type E2ee } from './e2ee.js';
import { Emitter } from './emitter.js';
import { ErrorCode, TidingsError } from './errors.js';
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
  delivery: { channel: string };
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
  presenceStats(channel: string): Promise<{ clients: number; users: number }>;
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

/** Senders remembered per subscription, for delivery state. */
const MAX_SENDERS = 10_000;

/** A subscription to one channel; get one with `client.subscribe()`. */
export class Subscription extends Emitter<SubscriptionEvents> {
  /** The channel name. */
  readonly channel: string;
  private _state: SubscriptionState = 'subscribing';
  private pos: Position | null;
  /**
   * `since: 'start'` not resolved yet: cleared once a subscribe reply is
   * handled (the position is then known).
   */
  startPending: boolean;
  /** A position lookup was refused for good (ephemeral channel, history closed): do not look up again. */
  noLookup = false;
  /** The position was looked up for a fresh subscription (SSE/poll): not a recovery. */
  freshLookup = false;
  /** The last payload's JSON text, which the next delta applies to. */
  private deltaBase: string | null = null;
  /** Events waiting for envelopes before them to be opened (delivery stays in order). */
  private queued = 0;
  private chain: Promise<void> = Promise.resolve();
  /** Members' cursors: from receipts, and each publisher's own publications. */
  private readonly cursors = new Map<string, Cursors>();
  private summary: ReceiptSummary | null = null;
  private memberList: string[] | null = null;
  private membersLoading: Promise<string[]> | null = null;
  /** Publisher of each offset seen (bounded). */
  private readonly senders = new Map<number, string>();

  /** @internal Use `client.subscribe()`. */
  constructor(
    private readonly host: SubscriptionHost,
    channel: string,
    since: Position | 'start' | undefined,
    private readonly opts: SubscriptionOptions = {},
  ) {
    super();
    this.channel = channel;
    this.startPending = since === 'start';
    this.pos = since && since !== 'start' ? { offset: since.offset, epoch: since.epoch } : null;
    if (opts.encrypt) host.e2eeFor(true);
  }

  /** The current state. */
  get state(): SubscriptionState {
    return this._state;
  }

  /** The position of the last publication delivered (null before any is known). */
  get position(): Position | null {
    return this.pos ? { ...this.pos } : null;
  }

  /**
   * Publishes into this channel; see `client.publish`. With the `encrypt`
   * option (or `opts.encrypt`) the data is sealed end to end first.
   */
  publish(data: unknown, opts: PublishOptions = {}): Promise<PublishResult> {
    const o: PublishOptions = this.opts.encrypt && opts.encrypt === undefined ? { ...opts, encrypt: true } : opts;
    const p = this.host.publish(this.channel, data, o);
    const me = this.host.user;
    if (me !== null) {
      p.then((r) => {
        if (r.offset !== undefined) this.noteSender(r.offset, me);
      }, () => undefined);
    }
    return p;
  }

  /**
   * Reads this channel's history; E2EE envelopes come opened (when the
   * client has E2EE), as publications do.
   */
  async history(opts?: HistoryOptions): Promise<HistoryResult> {
    const r = await this.host.history(this.channel, opts);
    for (const p of r.publications) this.notePublication(p);
    const e2ee = this.host.e2eeFor(this.opts.encrypt === true);
    if (e2ee && r.publications.some((p) => isEnvelope(p.data))) {
      r.publications = await Promise.all(r.publications.map((p) => e2ee.open(p)));
    }
    return r;
  }

  /**
   * Marks the channel read up to `offset` (the local user saw it): sent
   * coalesced (at most one `cursor` command per ~500 ms), never lower than
   * what was sent. Resolves with the stored cursors once sent; rejects when
   * the server refuses (101 beyond the top, 103 not a member). Ignoring the
   * promise is safe.
   */
  markRead(offset: number): Promise<Cursors> {
    return this.host.markRead(this.channel, offset);
  }

  /** Marks the channel delivered up to `offset`; with `receipts: true` the subscription does it by itself. */
  markDelivered(offset: number): Promise<Cursors> {
    return this.host.markDelivered(this.channel, offset);
  }

  /**
   * The channel's members (every page; cached, `refresh` reads them again).
   * Members namespaces only.
   */
  members(refresh = false): Promise<string[]> {
    if (this.memberList && !refresh) return Promise.resolve([...this.memberList]);
    if (this.membersLoading) return this.membersLoading.then((m) => [...m]);
    const p = (async () => {
      const users: string[] = [];
      let cursor: string | undefined;
      for (let page = 0; page < 1000; page++) {
        const ans = await this.host.members(this.channel, cursor ? { limit: 1000, cursor } : { limit: 1000 });
        users.push(...ans.users);
        cursor = ans.nextCursor;
        if (!cursor) break;
      }
      this.memberList = users;
      this.emit('delivery', { channel: this.channel });
      return users;
    })();
    this.membersLoading = p;
    p.then(() => { this.membersLoading = null; }, () => { this.membersLoading = null; });
    return p.then((m) => [...m]);
  }

  /**
   * Delivery state of the message at `offset`, from the receipts seen so
   * far: in a 1:1 conversation `'sent'`, `'delivered'` or `'read'` (the
   * other member's cursors); in a group `{members, delivered, read}`
   * counting the members other than the publisher. Members are read once
   * (a `delivery` event follows); until then the answer is `'sent'`.
   * Cursors are learned from `receipt` pushes (which come as members' cursors move)
   * and from each member's own publications (what you write, you have read).
   */
  deliveryState(offset: number): DeliveryState {
    if (!this.memberList && !this.membersLoading) this.members().catch(() => undefined);
    return computeDeliveryState(offset, {
      me: this.host.user,
      members: this.memberList,
      cursors: this.cursors,
      summary: this.summary,
      sender: this.senders.get(offset),
    });
  }

  /** A member's cursors as learned so far (receipts, own publications). */
  cursorsOf(user: string): Cursors | undefined {
    const c = this.cursors.get(user);
    return c ? { ...c } : undefined;
  }

  /** Reads this channel's presence (every page). */
  presence(): Promise<Record<string, PresenceEntry>> {
    return this.host.presence(this.channel);
  }

  /** Counts this channel's connections and users. */
  presenceStats(): Promise<{ clients: number; users: number }> {
    return this.host.presenceStats(this.channel);
  }

  /** Ends the subscription; no event follows. A cursor update waiting to be sent is sent now. */
  unsubscribe(): void {
    if (this._state === 'unsubscribed') return;
    this.setState('unsubscribed');
    this.host.flushCursors(this.channel);
    this.host.removeSubscription(this);
  }

  /** @internal Whether it asked to start from the channel's snapshot. */
  get wantsSnapshot(): boolean {
    return this.opts.snapshot === true;
  }

  /** @internal What to send to (re)subscribe. */
  request(): SubscribeRequest {
    const r: SubscribeRequest = { channel: this.channel, since: this.pos ? { ...this.pos } : null };
    if (this.opts.snapshot) r.snapshot = true;
    if (this.opts.delta) r.delta = this.opts.delta;
    return r;
  }

  /** @internal Sets the position found by a lookup before subscribing. */
  setLookedUpPosition(pos: Position, fresh: boolean): void {
    this.pos = pos;
    this.freshLookup = fresh;
  }

  /** @internal The connection is gone: resubscribe on the next one. */
  connectionLost(): void {
    if (this._state === 'subscribed') this.setState('subscribing');
  }

  /** @internal A subscribe reply (WebSocket) or its SSE/poll equivalent. */
  handleSubscribed(ok: Obj, transport: TransportName): void {
    if (this._state === 'unsubscribed') return;
    const offset = uint(ok.offset);
    const epoch = str(ok.epoch);
    const presence = decodePresenceMap(ok.presence);
    const hadPos = this.pos !== null && !this.freshLookup;
    this.freshLookup = false;
    this.startPending = false;
    this.setState('subscribed');
    const ev: SubscribedEvent = { recovered: false, transport };
    if (offset !== undefined) ev.offset = offset;
    if (epoch !== undefined) ev.epoch = epoch;
    if (presence) ev.presence = presence;
    // A new subscription: the first delta builds on what this reply holds.
    this.deltaBase = null;
    const pubs = decodePublications(ok.publications, this.channel);
    // A reply's publications are of the reply's epoch.
    if (epoch !== undefined) for (const p of pubs) p.epoch ??= epoch;
    if (ok.delta === true) {
      for (const p of pubs) if (!this.fromText(p, p.data, false)) return;
    }
    const restart = pubs.length > 0 && (pubs[0]!.snapshot === true || !hadPos);
    if (restart && ok.recovered !== true && epoch !== undefined && pubs[0]!.offset !== undefined) {
      // The position is lost (or none was given) but the channel has a
      // snapshot (or, asked with `snapshot`, holds everything from its
      // start): it and everything after it follow, instead of a reset.
      this.pos = { offset: pubs[0].offset - 1, epoch };
      this.ordered(() => this.emit('subscribed', ev));
      for (const p of pubs) this.handlePub(p);
      return;
    }
    if (ok.recovered === true && hadPos) {
      ev.recovered = true;
      this.ordered(() => this.emit('subscribed', ev));
      for (const p of pubs) this.handlePub(p);
      // Nothing missed: the top is where we are (WebSocket); over SSE/poll
      // the reply stands for `since`, and the stream brings the rest.
      if (offset !== undefined && epoch !== undefined && this.pos && this.pos.epoch === epoch
        && offset > this.pos.offset && Array.isArray(ok.publications)) {
        this.pos = { offset, epoch };
      }
      return;
    }
    this.pos = offset !== undefined && epoch !== undefined ? { offset, epoch } : null;
    this.ordered(() => this.emit('subscribed', ev));
    if (ok.recovered === false && hadPos && this.pos) {
      const reset: ResetEvent = { offset: this.pos.offset, epoch: this.pos.epoch, reason: 'unrecoverable' };
      this.ordered(() => this.emit('reset', reset));
    }
    if (this.opts.receipts && !this.memberList) this.members().catch(() => undefined);
  }

  /**
   * @internal The server said 107 (already subscribed, e.g. through the
   * token's `channels` claim): the channel's pushes flow already. The
   * position is kept; a gap after it is recovered on the next publication.
   */
  handleAlreadySubscribed(transport: TransportName): void {
    if (this._state === 'unsubscribed') return;
    this.freshLookup = false;
    this.startPending = false;
    this.setState('subscribed');
    const ev: SubscribedEvent = { recovered: false, transport };
    if (this.pos) {
      ev.offset = this.pos.offset;
      ev.epoch = this.pos.epoch;
    }
    this.emit('subscribed', ev);
  }

  /** @internal Subscribing failed for good. */
  handleError(err: TidingsError): void {
    if (this._state === 'unsubscribed') return;
    this.setState('unsubscribed');
    this.host.removeSubscription(this);
    this.emit('error', err);
  }

  /** @internal A push for this channel. */
  handlePush(push: Obj): void {
    if (push.push === 'receipt') {
      if (this._state !== 'unsubscribed') this.handleReceipt(push);
      return;
    }
    if (this._state !== 'subscribed') return;
    switch (push.push) {
      case 'pub': {
        const p = decodePublication(push);
        if (!p) return;
        // Already delivered (e.g. queued before a resubscribe's reply): dropped
        // before it can touch the delta base.
        if (p.offset !== undefined && this.pos && p.epoch === this.pos.epoch && p.offset <= this.pos.offset) return;
        // In a delta subscription `data` is text: the payload's, or a delta.
        if (typeof push.delta === 'boolean' && !this.fromText(p, push.data, push.delta)) return;
        this.handlePub(p, push.latest === true);
        return;
      }
      case 'gap': {
        // The server skipped publications for this slow connection: recover
        // them from history by subscribing again from our position.
        this.setState('subscribing');
        this.host.resubscribe(this, false);
        return;
      }
      case 'reset': {
        const offset = uint(push.offset);
        const epoch = str(push.epoch);
        if (offset === undefined || epoch === undefined) return;
        this.pos = { offset, epoch };
        this.ordered(() => this.emit('reset', { offset, epoch, reason: 'unrecoverable' }));
        return;
      }
      case 'join':
      case 'leave': {
        const e = decodePresenceEntry(push);
        if (e) this.emit(push.push, e);
        return;
      }
      case 'unsub': {
        const code = uint(push.code) ?? 0;
        if (code >= 3000 && code < 3500) {
          // e.g. 3003 insufficient state: subscribe again from where we are.
          this.setState('subscribing');
          this.host.resubscribe(this, true);
        } else {
          this.handleError(new TidingsError(code || ErrorCode.PermissionDenied,
            str(push.reason) ?? 'unsubscribed by the server', false));
        }
        return;
      }
      default:
    }
  }

  /**
   * Turns a delta subscription's `data` (the payload's text, or a delta
   * against the previous one) into the payload. A delta without its base
   * (a gap) or that does not apply subscribes again from the position:
   * the server then sends the missed publications, or the snapshot, in full.
   */
  private fromText(p: Publication, data: unknown, isDelta: boolean): boolean {
    if (typeof data !== 'string') return true; // the server sent the value itself
    const text = isDelta ? (this.deltaBase === null ? null : applyDelta(this.deltaBase, data)) : data;
    const value = text === null ? undefined : parseJson(text);
    if (text === null || value === undefined) {
      this.deltaBase = null;
      this.setState('subscribing');
      this.host.resubscribe(this, false);
      return false;
    }
    this.deltaBase = text;
    p.data = value;
    return true;
  }

  /** `latest`: the channel's pushes may skip values (an offset jump is no loss). */
  private handlePub(p: Publication, latest = false): void {
    const event = p.snapshot ? 'snapshot' : 'publication';
    if (p.offset === undefined || p.epoch === undefined) {
      // Ephemeral: no position, at most once.
      this.deliver(event, p);
      return;
    }
    if (this.pos && this.pos.epoch !== p.epoch) {
      // The channel started over while we stayed subscribed: what the app
      // holds no longer matches. Reload, then continue from this one.
      this.pos = { offset: p.offset - 1, epoch: p.epoch };
      const reset: ResetEvent = { offset: p.offset - 1, epoch: p.epoch, reason: 'epoch' };
      this.ordered(() => this.emit('reset', reset));
    }
    if (this.pos) {
      if (p.offset <= this.pos.offset) return; // already delivered
      // A snapshot stands alone: what came before it no longer matters.
      if (p.offset > this.pos.offset + 1 && !latest && !p.snapshot) {
        // A gap should not happen; do not deliver out of order, recover it.
        this.setState('subscribing');
        this.host.resubscribe(this, false);
        return;
      }
    }
    this.pos = { offset: p.offset, epoch: p.epoch };
    this.deliver(event, p);
  }

  /**
   * Emits a publication: at once, or, when it is an E2EE envelope to open
   * (or events wait before it), once opened and after those before it.
   * Opening runs at once; only the emitting waits, so order is kept.
   */
  private deliver(event: 'publication' | 'snapshot', p: Publication): void {
    this.notePublication(p);
    const e2ee = isEnvelope(p.data) ? this.host.e2eeFor(this.opts.encrypt === true) : null;
    if (!e2ee) {
      this.ordered(() => this.emitPub(event, p));
      return;
    }
    const opening = e2ee.open(p);
    this.queued += 1;
    this.chain = this.chain.then(() => opening).then((q) => {
      this.queued -= 1;
      if (this._state !== 'unsubscribed') this.emitPub(event, q);
    }, () => {
      this.queued -= 1; // open() never rejects
    });
  }

  /** Runs `fn` now, or after the events waiting for envelopes to be opened. */
  private ordered(fn: () => void): void {
    if (this.queued === 0) {
      fn();
      return;
    }
    this.queued += 1;
    this.chain = this.chain.then(() => {
      this.queued -= 1;
      if (this._state !== 'unsubscribed') fn();
    });
  }

  private emitPub(event: 'publication' | 'snapshot', p: Publication): void {
    this.emit(event, p);
    if (p.undecryptable !== undefined) this.emit('undecryptable', p);
    if (this.opts.receipts && p.offset !== undefined && p.info?.user !== this.host.user) {
      this.host.markDelivered(this.channel, p.offset).catch(() => undefined);
    }
  }

  /** Remembers who published `p`: their cursors are at least at its offset. */
  private notePublication(p: Publication): void {
    if (p.offset === undefined || !p.info) return;
    this.noteSender(p.offset, p.info.user);
  }

  private noteSender(offset: number, user: string): void {
    if (!this.senders.has(offset)) {
      this.senders.set(offset, user);
      if (this.senders.size > MAX_SENDERS) this.senders.delete(this.senders.keys().next().value as number);
    }
    // A user's own publication moves their cursors to its offset.
    if (this.raiseCursors(user, offset, offset)) this.emit('delivery', { channel: this.channel });
  }

  private raiseCursors(user: string, delivered: number, read: number): boolean {
    const c = this.cursors.get(user);
    const d = Math.max(delivered, read);
    if (c && c.delivered >= d && c.read >= read) return false;
    this.cursors.set(user, { delivered: Math.max(c?.delivered ?? 0, d), read: Math.max(c?.read ?? 0, read) });
    return true;
  }

  private handleReceipt(push: Obj): void {
    const r = decodeReceipt(push);
    if (!r || r.channel !== this.channel) return;
    if ('user' in r) {
      this.raiseCursors(r.user, r.delivered, r.read);
      if (r.user === this.host.user) this.host.cursorsKnown(this.channel, { delivered: r.delivered, read: r.read });
    } else {
      this.summary = r;
    }
    this.emit('receipt', r);
    this.emit('delivery', { channel: this.channel });
  }

  private setState(s: SubscriptionState): void {
    if (this._state === s) return;
    this._state = s;
    this.emit('state', s);
  }
}
