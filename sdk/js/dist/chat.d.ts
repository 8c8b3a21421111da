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
import { type Obj } from './codec.js';
import { Emitter } from './emitter.js';
import { TidingsError } from './errors.js';
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
export declare function mergeConversation(held: Conversation | undefined, next: Conversation): Conversation;
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
export type InboxEvent = (Conversation & {
    removed?: undefined;
}) | {
    channel: string;
    removed: true;
};
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
/** Decodes a conversation (an `inbox` entry or push); null when malformed. */
export declare function decodeConversation(v: unknown): Conversation | null;
/** Decodes an `inbox` push; null when malformed. */
export declare function decodeInboxEvent(v: unknown): InboxEvent | null;
/** Decodes a `receipt` push (per user, or a summary); null when malformed. */
export declare function decodeReceipt(v: unknown): ReceiptEvent | null;
/** Decodes a `members` answer. */
export declare function decodeMembersPage(ok: Obj): MembersPage;
/** Decodes an `inbox` answer, skipping malformed entries. */
export declare function decodeInboxPage(ok: Obj): InboxPage;
/** Decodes a `keys` lookup answer: devices by user. */
export declare function decodeKeys(ok: Obj): Record<string, DeviceKey[]>;
/** Decodes a `cursor` answer. */
export declare function decodeCursors(ok: Obj): Cursors;
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
export declare function computeDeliveryState(offset: number, x: DeliveryInputs): DeliveryState;
/** What {@link CursorSync} needs from the client. */
export interface CursorSyncHost {
    /** Sends a `cursor` command. */
    send(args: Obj): Promise<Obj>;
    /** Whether sending makes sense now (the app wants a connection). */
    active(): boolean;
    /** Uniform random numbers for retry jitter. */
    random?: () => number;
}
/**
 * Coalesces cursor updates: at most one `cursor` command per channel per
 * `interval` ms (and one at a time), carrying the highest offsets asked for
 * since the last one; a value at or below what the server holds is never
 * sent. A temporary failure (connection lost, 100, 105) is retried with a
 * widening delay and after reconnecting; a refusal (101 beyond the top, 103
 * not a member) rejects the promises of that update and drops it.
 */
export declare class CursorSync {
    private readonly host;
    private readonly interval;
    private readonly channels;
    constructor(host: CursorSyncHost, interval?: number);
    /** Asks for the channel's cursors to reach these offsets; resolves with the stored cursors once sent. */
    want(channel: string, w: {
        delivered?: number;
        read?: number;
    }): Promise<Cursors>;
    /** The server holds at least these cursors (an answer, own receipt or inbox push). */
    known(channel: string, c: Cursors): void;
    /** What the server is known to hold for `channel` (0 when nothing is known). */
    knownCursors(channel: string): Cursors;
    /** Whether an update for `channel` waits to be sent. */
    pending(channel: string): boolean;
    /** Sends what waits for `channel` now, without waiting for the interval. */
    flush(channel: string): void;
    /** Sends what waits for every channel now (reconnected, or closing). */
    flushAll(): void;
    /** Stops the timers (the client was disconnected); pending updates stay for {@link flushAll}. */
    pause(): void;
    private state;
    /** The update to send, or null when the server holds all of it. */
    private unsent;
    private schedule;
    private sendNow;
    /** Resolves the waiters the server's cursors now cover. */
    private settle;
}
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
export declare class Inbox extends Emitter<InboxEvents> {
    private readonly host;
    private readonly opts;
    private readonly byChannel;
    /** Bumped by each push per channel: a load started before a push does not overwrite it. */
    private readonly pushSeq;
    private seq;
    private readonly offs;
    private loading;
    private again;
    private readonly pageSize;
    private readonly maxPages;
    constructor(host: InboxHost, opts?: InboxOptions);
    /** Every conversation, newest activity first, then by channel. */
    get conversations(): Conversation[];
    /** One conversation. */
    get(channel: string): Conversation | undefined;
    /** Unread publications over every conversation. */
    get unreadTotal(): number;
    /** Reads the whole inbox again; resolves once read (a load asked during one runs after it). */
    load(): Promise<void>;
    /** Stops following the client's events. */
    destroy(): void;
    private loadOnce;
    private apply;
    private deliver;
}
