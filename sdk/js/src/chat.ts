/**
 * Chat on members channels (`members = true` namespaces): read and delivered
 * cursors, receipts, the inbox (a user's conversations with unread counts),
 * members and per-message delivery state. See docs/protocol.md, "Chat:
 * members, cursors, receipts, inbox, keys".
 *
 * What is here: the wire types and their decoding (never throws), the
 * coalescing of cursor updates ({@link CursorSync}: at most one `cursor`
 * command per channel per interval, carrying the highest offsets), the
 * {@link Inbox} helper that keeps a user's conversation list current, and
 * {@link computeDeliveryState}.
 */
import { decodePublication, isObj, str, uint, type Obj } from './codec.js';
import { Backoff } from './backoff.js';
import { Emitter } from './emitter.js';
import { ErrorCode, TidingsError } from './errors.js';
import type { Publication } from './types.js';

/** A user's two cursors in a channel: offsets that only move forward. */
export interface Cursors {
  /** The user's devices have everything up to this offset. */
  delivered: number;
  /** The user saw everything up to this offset (`read` implies `delivered`). */
  read: number;
}

/**
 * A pushed conversation merged into the one held: pushes may arrive out of
 * order (each is made when its publication or read happens), so cursors and
 * the top only move forward, `unread` follows them, and `last` comes with
 * the higher top.
 */
export function mergeConversation(held: Conversation | undefined, next: Conversation): Conversation {
  // Another epoch: the channel started over, its offsets are not comparable.
  if (!held || held.epoch !== next.epoch) return next;
  const top = Math.max(held.top, next.top);
  const read = Math.max(held.read, next.read);
  const newer = next.top >= held.top ? next : held;
  return {
    ...newer,
    top,
    read,
    delivered: Math.max(held.delivered, next.delivered, read),
    unread: Math.max(0, top - read),
    activeAt: Math.max(held.activeAt, next.activeAt),
  };
}

/** One of the user's conversations, as the `inbox` command and push give it. */
export interface Conversation {
  /** The channel. */
  channel: string;
  /** Publications by others after `read`: `top - read`. */
  unread: number;
  /** The user's read cursor. */
  read: number;
  /** The user's delivered cursor. */
  delivered: number;
  /** The channel's top offset. */
  top: number;
  /** Its last publication (absent when it has none or it left history). Raw: an E2EE envelope is not opened here (see `E2ee.open`). */
  last?: Publication;
  /** ms since the Unix epoch of the last publication, or of when the user became a member. */
  activeAt: number;
  /** The epoch of `top` and the cursors: a channel that started over has another (its offsets begin again). */
  epoch?: string;
}

/** An `inbox` push: a conversation changed, or the user stopped being a member. */
export type InboxEvent = (Conversation & { removed?: undefined }) | { channel: string; removed: true };

/** A page of the inbox. */
export interface InboxPage {
  /** Newest activity first, then by channel. */
  conversations: Conversation[];
  /** Pass as `cursor` for the next page; absent on the last one. */
  nextCursor?: string;
}

/** A page of a channel's members. */
export interface MembersPage {
  /** User ids, sorted. */
  users: string[];
  /** Pass as `cursor` for the next page; absent on the last one. */
  nextCursor?: string;
}

/** Paging options of `inbox` and `members`. */
export interface PageOptions {
  /** Entries per page (server default 100, at most 1000). */
  limit?: number;
  /** The previous page's `nextCursor`. */
  cursor?: string;
}

/** A device's registered public key. */
export interface DeviceKey {
  /** Device id (1 to 64 of `A-Z a-z 0-9 _ -`). */
  device: string;
  /** ECDH P-256 public key: the uncompressed point, base64url without padding. */
  key: string;
}

/** A member's cursors moved (channels of up to `receipts_max_members` members). */
export interface UserReceipt {
  /** The channel. */
  channel: string;
  /** Whose cursors. */
  user: string;
  /** Their delivered cursor. */
  delivered: number;
  /** Their read cursor. */
  read: number;
}

/** Receipts of a large channel, summed up (at most once a second while cursors move). */
export interface ReceiptSummary {
  /** The channel. */
  channel: string;
  /** How many members the channel has. */
  members: number;
  /** Every member has delivered up to here. */
  delivered: number;
  /** Every member has read up to here. */
  read: number;
  /** `[offset, members with delivered ≥ offset, members with read ≥ offset]` for the newest offsets above those; the publisher counts. */
  counts: Array<[number, number, number]>;
}

/** A `receipt` push. */
export type ReceiptEvent = UserReceipt | ReceiptSummary;

/** Delivery state of a message in a group: how many of the other members have it. */
export interface GroupDeliveryState {
  /** Members other than the publisher. */
  members: number;
  /** Of those, how many have delivered it. */
  delivered: number;
  /** Of those, how many have read it. */
  read: number;
}

/**
 * Delivery state of a message: in a 1:1 conversation `sent` (published),
 * `delivered` (the other member's delivered cursor reached it) or `read`;
 * in a group, counts.
 */
export type DeliveryState = 'sent' | 'delivered' | 'read' | GroupDeliveryState;

// ---- decoding ---------------------------------------------------------------

/** Decodes a conversation (an `inbox` entry or push); null when malformed. */
export function decodeConversation(v: unknown): Conversation | null {
  if (!isObj(v)) return null;
  const channel = str(v.channel);
  const top = uint(v.top);
  const read = uint(v.read);
  if (channel === undefined || top === undefined || read === undefined) return null;
  const c: Conversation = {
    channel,
    unread: uint(v.unread) ?? Math.max(0, top - read),
    read,
    delivered: uint(v.delivered) ?? read,
    top,
    activeAt: uint(v.active_at) ?? 0,
  };
  const epoch = str(v.epoch);
  if (epoch !== undefined) c.epoch = epoch;
  const last = decodePublication(v.last, channel);
  if (last) c.last = last;
  return c;
}

/** Decodes an `inbox` push; null when malformed. */
export function decodeInboxEvent(v: unknown): InboxEvent | null {
  if (!isObj(v)) return null;
  if (v.removed === true) {
    const channel = str(v.channel);
    return channel === undefined ? null : { channel, removed: true };
  }
  return decodeConversation(v);
}

/** Decodes a `receipt` push (per user, or a summary); null when malformed. */
export function decodeReceipt(v: unknown): ReceiptEvent | null {
  if (!isObj(v)) return null;
  const channel = str(v.channel);
  const delivered = uint(v.delivered);
  const read = uint(v.read);
  if (channel === undefined || delivered === undefined || read === undefined) return null;
  const user = str(v.user);
  if (user !== undefined) return { channel, user, delivered: Math.max(delivered, read), read };
  const members = uint(v.members);
  if (members === undefined) return null;
  const counts: Array<[number, number, number]> = [];
  if (Array.isArray(v.counts)) {
    for (const e of v.counts) {
      if (!Array.isArray(e) || e.length < 3) continue;
      const [o, d, r] = [uint(e[0]), uint(e[1]), uint(e[2])];
      if (o !== undefined && d !== undefined && r !== undefined) counts.push([o, d, r]);
    }
  }
  counts.sort((a, b) => a[0] - b[0]);
  return { channel, members, delivered: Math.max(delivered, read), read, counts };
}

/** Decodes a `members` answer. */
export function decodeMembersPage(ok: Obj): MembersPage {
  const users: string[] = [];
  if (Array.isArray(ok.users)) {
    for (const u of ok.users) {
      const id = typeof u === 'string' ? u : isObj(u) ? str(u.user) : undefined;
      if (id !== undefined) users.push(id);
    }
  }
  const page: MembersPage = { users };
  const next = str(ok.next_cursor);
  if (next) page.nextCursor = next;
  return page;
}

/** Decodes an `inbox` answer, skipping malformed entries. */
export function decodeInboxPage(ok: Obj): InboxPage {
  const conversations: Conversation[] = [];
  if (Array.isArray(ok.conversations)) {
    for (const e of ok.conversations) {
      const c = decodeConversation(e);
      if (c) conversations.push(c);
    }
  }
  const page: InboxPage = { conversations };
  const next = str(ok.next_cursor);
  if (next) page.nextCursor = next;
  return page;
}

/** Decodes a `keys` lookup answer: devices by user. */
export function decodeKeys(ok: Obj): Record<string, DeviceKey[]> {
  const out: Record<string, DeviceKey[]> = {};
  if (!isObj(ok.keys)) return out;
  for (const [user, list] of Object.entries(ok.keys)) {
    if (!Array.isArray(list)) continue;
    const keys: DeviceKey[] = [];
    for (const e of list) {
      if (!isObj(e)) continue;
      const device = str(e.device);
      const key = str(e.key);
      if (device !== undefined && key !== undefined) keys.push({ device, key });
    }
    out[user] = keys;
  }
  return out;
}

/** Decodes a `cursor` answer. */
export function decodeCursors(ok: Obj): Cursors {
  const read = uint(ok.read) ?? 0;
  return { delivered: Math.max(uint(ok.delivered) ?? 0, read), read };
}

// ---- delivery state ---------------------------------------------------------

/** What {@link computeDeliveryState} looks at. */
export interface DeliveryInputs {
  /** The local user. */
  me: string | null;
  /** The channel's members, null when not known yet. */
  members: string[] | null;
  /** Cursors by user: from receipts, and from each user's own publications. */
  cursors: ReadonlyMap<string, Cursors>;
  /** The latest receipt summary (large channels), if any. */
  summary: ReceiptSummary | null;
  /** Who published the message, if known. */
  sender: string | undefined;
}

/**
 * Delivery state of the message at `offset`. 1:1 (two members, the local
 * user one of them): from the other member's cursors. Groups: from the
 * receipt summary when the channel sends summaries (its counts include the
 * publisher, who is subtracted), else from each member's cursors, the
 * publisher left out. Members not known yet: `sent`.
 */
export function computeDeliveryState(offset: number, x: DeliveryInputs): DeliveryState {
  const { me, members } = x;
  if (members && members.length === 2 && me !== null && members.includes(me)) {
    const other = members[0] === me ? members[1]! : members[0]!;
    const c = x.cursors.get(other);
    if (c && c.read >= offset) return 'read';
    if (c && c.delivered >= offset) return 'delivered';
    return 'sent';
  }
  if (x.summary) {
    const s = x.summary;
    const others = Math.max(0, s.members - 1);
    if (offset <= s.read) return { members: others, delivered: others, read: others };
    // Counts only fall as the offset grows: the nearest entry at or above
    // `offset` is a lower bound when `offset` itself is not listed.
    const entry = s.counts.find((e) => e[0] >= offset);
    const dCount = offset <= s.delivered ? s.members : entry ? entry[1] : 1;
    const rCount = entry ? entry[2] : 1;
    const delivered = Math.min(others, Math.max(0, dCount - 1));
    const read = Math.min(delivered, Math.max(0, rCount - 1));
    return { members: others, delivered, read };
  }
  if (!members) return 'sent';
  const sender = x.sender ?? me ?? undefined;
  const others = members.filter((u) => u !== sender);
  let delivered = 0;
  let read = 0;
  for (const u of others) {
    const c = x.cursors.get(u);
    if (!c) continue;
    if (c.delivered >= offset) delivered += 1;
    if (c.read >= offset) read += 1;
  }
  return { members: others.length, delivered, read };
}

// ---- cursor coalescing ------------------------------------------------------

/** What {@link CursorSync} needs from the client. */
export interface CursorSyncHost {
  /** Sends a `cursor` command. */
  send(args: Obj): Promise<Obj>;
  /** Whether sending makes sense now (the app wants a connection). */
  active(): boolean;
  /** Uniform random numbers for retry jitter. */
  random?: () => number;
}

interface Waiter {
  delivered: number;
  read: number;
  resolve: (c: Cursors) => void;
  reject: (e: TidingsError) => void;
}

interface ChannelCursor {
  /** What the server is known to hold (answers, receipts, inbox pushes). */
  known: Cursors;
  /** The highest offsets asked for. */
  want: Cursors;
  timer: ReturnType<typeof setTimeout> | null;
  inflight: boolean;
  lastSent: number;
  waiters: Waiter[];
  retry: Backoff | null;
}

/**
 * Coalesces cursor updates: at most one `cursor` command per channel per
 * `interval` ms (and one at a time), carrying the highest offsets asked for
 * since the last one; a value at or below what the server holds is never
 * sent. A temporary failure (connection lost, 100, 105) is retried with a
 * widening delay and after reconnecting; a refusal (101 beyond the top, 103
 * not a member) rejects the promises of that update and drops it.
 */
export class CursorSync {
  private readonly channels = new Map<string, ChannelCursor>();

  constructor(private readonly host: CursorSyncHost, private readonly interval = 500) {}

  /** Asks for the channel's cursors to reach these offsets; resolves with the stored cursors once sent. */
  want(channel: string, w: { delivered?: number; read?: number }): Promise<Cursors> {
    const st = this.state(channel);
    const delivered = Math.max(w.delivered ?? 0, w.read ?? 0);
    const read = w.read ?? 0;
    if (delivered <= st.known.delivered && read <= st.known.read) return Promise.resolve({ ...st.known });
    st.want.delivered = Math.max(st.want.delivered, delivered);
    st.want.read = Math.max(st.want.read, read);
    const p = new Promise<Cursors>((resolve, reject) => st.waiters.push({ delivered, read, resolve, reject }));
    this.schedule(channel, st);
    return p;
  }

  /** The server holds at least these cursors (an answer, own receipt or inbox push). */
  known(channel: string, c: Cursors): void {
    const st = this.state(channel);
    st.known.delivered = Math.max(st.known.delivered, c.delivered, c.read);
    st.known.read = Math.max(st.known.read, c.read);
    this.settle(st);
  }

  /** What the server is known to hold for `channel` (0 when nothing is known). */
  knownCursors(channel: string): Cursors {
    const st = this.channels.get(channel);
    return st ? { ...st.known } : { delivered: 0, read: 0 };
  }

  /** Whether an update for `channel` waits to be sent. */
  pending(channel: string): boolean {
    const st = this.channels.get(channel);
    return !!st && this.unsent(st) !== null;
  }

  /** Sends what waits for `channel` now, without waiting for the interval. */
  flush(channel: string): void {
    const st = this.channels.get(channel);
    if (!st || st.inflight) return;
    if (st.timer) clearTimeout(st.timer);
    st.timer = null;
    this.sendNow(channel, st);
  }

  /** Sends what waits for every channel now (reconnected, or closing). */
  flushAll(): void {
    for (const ch of this.channels.keys()) this.flush(ch);
  }

  /** Stops the timers (the client was disconnected); pending updates stay for {@link flushAll}. */
  pause(): void {
    for (const st of this.channels.values()) {
      if (st.timer) clearTimeout(st.timer);
      st.timer = null;
    }
  }

  private state(channel: string): ChannelCursor {
    let st = this.channels.get(channel);
    if (!st) {
      st = {
        known: { delivered: 0, read: 0 },
        want: { delivered: 0, read: 0 },
        timer: null,
        inflight: false,
        lastSent: 0,
        waiters: [],
        retry: null,
      };
      this.channels.set(channel, st);
    }
    return st;
  }

  /** The update to send, or null when the server holds all of it. */
  private unsent(st: ChannelCursor): { delivered?: number; read?: number } | null {
    const u: { delivered?: number; read?: number } = {};
    if (st.want.read > st.known.read) u.read = st.want.read;
    // `read` raises `delivered` on the server: no need to send both.
    if (st.want.delivered > st.known.delivered && st.want.delivered > (u.read ?? 0)) u.delivered = st.want.delivered;
    return u.read === undefined && u.delivered === undefined ? null : u;
  }

  private schedule(channel: string, st: ChannelCursor, delay?: number): void {
    if (st.timer || st.inflight || !this.host.active()) return;
    if (this.unsent(st) === null) return;
    // A burst (a recovery delivers many publications at once) becomes one
    // update: even the first waits for the current task to end.
    const wait = delay ?? Math.max(0, st.lastSent + this.interval - Date.now());
    st.timer = setTimeout(() => {
      st.timer = null;
      this.sendNow(channel, st);
    }, wait);
  }

  private sendNow(channel: string, st: ChannelCursor): void {
    if (st.inflight) return;
    const u = this.unsent(st);
    if (!u) {
      this.settle(st);
      return;
    }
    st.inflight = true;
    st.lastSent = Date.now();
    const args: Obj = { channel, ...u };
    this.host.send(args).then((ok) => {
      st.inflight = false;
      st.retry = null;
      this.known(channel, decodeCursors(ok));
      // The answer holds what was stored; what was sent is stored too (a
      // lower value than stored changes nothing).
      this.known(channel, { delivered: u.delivered ?? 0, read: u.read ?? 0 });
      this.schedule(channel, st);
    }, (e: unknown) => {
      st.inflight = false;
      const err = e instanceof TidingsError ? e : new TidingsError(ErrorCode.BadResponse, String(e), true);
      if (err.temporary || err.code < 100) {
        // Not the update's fault: send it again later (and on reconnect).
        st.retry ??= new Backoff(1000, 20_000, this.host.random);
        this.schedule(channel, st, Math.max(1, st.retry.next()));
        return;
      }
      // Refused: drop what was asked beyond what the server holds.
      st.want = { ...st.known };
      const waiters = st.waiters.splice(0);
      for (const w of waiters) {
        if (w.delivered <= st.known.delivered && w.read <= st.known.read) w.resolve({ ...st.known });
        else w.reject(err);
      }
    });
  }

  /** Resolves the waiters the server's cursors now cover. */
  private settle(st: ChannelCursor): void {
    if (st.waiters.length === 0) return;
    const keep: Waiter[] = [];
    for (const w of st.waiters) {
      if (w.delivered <= st.known.delivered && w.read <= st.known.read) w.resolve({ ...st.known });
      else keep.push(w);
    }
    st.waiters = keep;
  }
}

// ---- the inbox helper -------------------------------------------------------

/** What {@link Inbox} needs from the client. */
export interface InboxHost {
  /** Reads one page of the inbox. */
  inbox(opts?: PageOptions): Promise<InboxPage>;
  /** Coalesced delivered cursor update. */
  markDelivered(channel: string, offset: number): Promise<Cursors>;
  /** Adds a client event listener. */
  on(name: 'inbox', fn: (e: InboxEvent) => void): () => void;
  on(name: 'connected', fn: () => void): () => void;
  /** The connection state. */
  readonly state: string;
}

/** Options of {@link Inbox}. */
export interface InboxOptions {
  /** Conversations per `inbox` page (default 100). */
  pageSize?: number;
  /** At most this many pages are read per load (default 50). */
  maxPages?: number;
  /**
   * Raise the delivered cursor of each conversation to its top when this
   * device learns of it (a load or an `inbox` push): the sender then sees
   * *delivered* as soon as the recipient has a page open. Default false.
   */
  markDelivered?: boolean;
}

/** Events of {@link Inbox}. */
export interface InboxEvents {
  /** The list changed: every conversation, newest activity first. */
  change: Conversation[];
  /** A load failed (it is tried again on the next reconnect or `load()`). */
  error: TidingsError;
}

/**
 * A user's conversation list kept current: read with `inbox` (every page)
 * when created and after every reconnect (pushes missed while disconnected
 * are not replayed), then changed by `inbox` pushes.
 */
export class Inbox extends Emitter<InboxEvents> {
  private readonly byChannel = new Map<string, Conversation>();
  /** Bumped by each push per channel: a load started before a push does not overwrite it. */
  private readonly pushSeq = new Map<string, number>();
  private seq = 0;
  private readonly offs: Array<() => void> = [];
  private loading: Promise<void> | null = null;
  private again = false;
  private readonly pageSize: number;
  private readonly maxPages: number;

  constructor(private readonly host: InboxHost, private readonly opts: InboxOptions = {}) {
    super();
    this.pageSize = opts.pageSize ?? 100;
    this.maxPages = opts.maxPages ?? 50;
    this.offs.push(host.on('inbox', (e) => this.apply(e)));
    this.offs.push(host.on('connected', () => void this.load().catch(() => undefined)));
    if (host.state === 'connected') void this.load().catch(() => undefined);
  }

  /** Every conversation, newest activity first, then by channel. */
  get conversations(): Conversation[] {
    return [...this.byChannel.values()].sort((a, b) => b.activeAt - a.activeAt || (a.channel < b.channel ? -1 : a.channel > b.channel ? 1 : 0));
  }

  /** One conversation. */
  get(channel: string): Conversation | undefined {
    return this.byChannel.get(channel);
  }

  /** Unread publications over every conversation. */
  get unreadTotal(): number {
    let n = 0;
    for (const c of this.byChannel.values()) n += c.unread;
    return n;
  }

  /** Reads the whole inbox again; resolves once read (a load asked during one runs after it). */
  load(): Promise<void> {
    if (this.loading) {
      this.again = true;
      return this.loading;
    }
    this.loading = (async () => {
      try {
        do {
          this.again = false;
          await this.loadOnce();
        } while (this.again);
      } catch (e) {
        const err = e instanceof TidingsError ? e : new TidingsError(ErrorCode.BadResponse, String(e), true);
        this.emit('error', err);
        throw err;
      } finally {
        this.loading = null;
      }
    })();
    return this.loading;
  }

  /** Stops following the client's events. */
  destroy(): void {
    for (const off of this.offs.splice(0)) off();
  }

  private async loadOnce(): Promise<void> {
    const started = this.seq;
    const seen = new Set<string>();
    const list: Conversation[] = [];
    let cursor: string | undefined;
    let pages = 0;
    for (; pages < this.maxPages; pages++) {
      const ans = await this.host.inbox(cursor ? { limit: this.pageSize, cursor } : { limit: this.pageSize });
      list.push(...ans.conversations);
      cursor = ans.nextCursor;
      if (!cursor) break;
    }
    // Pages are sorted by activity when each is read: a conversation that
    // became active meanwhile moved to the front, before the pages read
    // later. The first page again has it.
    if (!cursor && pages > 0) {
      list.push(...(await this.host.inbox({ limit: this.pageSize })).conversations);
    }
    for (const c of list) {
      seen.add(c.channel);
      // A push that came after this load began is newer than its answer.
      if ((this.pushSeq.get(c.channel) ?? -1) > started) continue;
      this.byChannel.set(c.channel, c);
      this.deliver(c);
    }
    if (!cursor) {
      for (const ch of [...this.byChannel.keys()]) {
        if (!seen.has(ch) && (this.pushSeq.get(ch) ?? -1) <= started) this.byChannel.delete(ch);
      }
    }
    this.emit('change', this.conversations);
  }

  private apply(e: InboxEvent): void {
    this.seq += 1;
    this.pushSeq.set(e.channel, this.seq);
    if (e.removed) this.byChannel.delete(e.channel);
    else {
      const c = mergeConversation(this.byChannel.get(e.channel), e);
      this.byChannel.set(e.channel, c);
      this.deliver(c);
    }
    this.emit('change', this.conversations);
  }

  private deliver(c: Conversation): void {
    if (this.opts.markDelivered && c.delivered < c.top) {
      this.host.markDelivered(c.channel, c.top).catch(() => undefined);
    }
  }
}
