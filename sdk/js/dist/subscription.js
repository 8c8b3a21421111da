/**
 * One channel subscription. It keeps the position (offset + epoch) of the
 * last publication delivered, so that every reconnect, on any transport,
 * resumes exactly there: each publication reaches the app once, in offset
 * order, or the app gets a `reset` telling it to reload.
 */
import { computeDeliveryState, decodeReceipt, } from './chat.js';
import { decodePresenceEntry, decodePresenceMap, decodePublication, decodePublications, parseJson, str, uint } from './codec.js';
import { applyDelta } from './delta.js';
import { isEnvelope } from './e2ee.js';
import { Emitter } from './emitter.js';
import { ErrorCode, TidingsError } from './errors.js';
/** Senders remembered per subscription, for delivery state. */
const MAX_SENDERS = 10000;
/** A subscription to one channel; get one with `client.subscribe()`. */
export class Subscription extends Emitter {
    /** @internal Use `client.subscribe()`. */
    constructor(host, channel, since, opts = {}) {
        super();
        this.host = host;
        this.opts = opts;
        this._state = 'subscribing';
        /** A position lookup was refused for good (ephemeral channel, history closed): do not look up again. */
        this.noLookup = false;
        /** The position was looked up for a fresh subscription (SSE/poll): not a recovery. */
        this.freshLookup = false;
        /** The last payload's JSON text, which the next delta applies to. */
        this.deltaBase = null;
        /** Events waiting for envelopes before them to be opened (delivery stays in order). */
        this.queued = 0;
        this.chain = Promise.resolve();
        /** Members' cursors: from receipts, and each publisher's own publications. */
        this.cursors = new Map();
        this.summary = null;
        this.memberList = null;
        this.membersLoading = null;
        /** Publisher of each offset seen (bounded). */
        this.senders = new Map();
        this.channel = channel;
        this.startPending = since === 'start';
        this.pos = since && since !== 'start' ? { offset: since.offset, epoch: since.epoch } : null;
        if (opts.encrypt)
            host.e2eeFor(true);
    }
    /** The current state. */
    get state() {
        return this._state;
    }
    /** The position of the last publication delivered (null before any is known). */
    get position() {
        return this.pos ? { ...this.pos } : null;
    }
    /**
     * Publishes into this channel; see `client.publish`. With the `encrypt`
     * option (or `opts.encrypt`) the data is sealed end to end first.
     */
    publish(data, opts = {}) {
        const o = this.opts.encrypt && opts.encrypt === undefined ? { ...opts, encrypt: true } : opts;
        const p = this.host.publish(this.channel, data, o);
        const me = this.host.user;
        if (me !== null) {
            p.then((r) => {
                if (r.offset !== undefined)
                    this.noteSender(r.offset, me);
            }, () => undefined);
        }
        return p;
    }
    /**
     * Reads this channel's history; E2EE envelopes come opened (when the
     * client has E2EE), as publications do.
     */
    async history(opts) {
        const r = await this.host.history(this.channel, opts);
        for (const p of r.publications)
            this.notePublication(p);
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
    markRead(offset) {
        return this.host.markRead(this.channel, offset);
    }
    /** Marks the channel delivered up to `offset`; with `receipts: true` the subscription does it by itself. */
    markDelivered(offset) {
        return this.host.markDelivered(this.channel, offset);
    }
    /**
     * The channel's members (every page; cached, `refresh` reads them again).
     * Members namespaces only.
     */
    members(refresh = false) {
        if (this.memberList && !refresh)
            return Promise.resolve([...this.memberList]);
        if (this.membersLoading)
            return this.membersLoading.then((m) => [...m]);
        const p = (async () => {
            const users = [];
            let cursor;
            for (let page = 0; page < 1000; page++) {
                const ans = await this.host.members(this.channel, cursor ? { limit: 1000, cursor } : { limit: 1000 });
                users.push(...ans.users);
                cursor = ans.nextCursor;
                if (!cursor)
                    break;
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
    deliveryState(offset) {
        if (!this.memberList && !this.membersLoading)
            this.members().catch(() => undefined);
        return computeDeliveryState(offset, {
            me: this.host.user,
            members: this.memberList,
            cursors: this.cursors,
            summary: this.summary,
            sender: this.senders.get(offset),
        });
    }
    /** A member's cursors as learned so far (receipts, own publications). */
    cursorsOf(user) {
        const c = this.cursors.get(user);
        return c ? { ...c } : undefined;
    }
    /** Reads this channel's presence (every page). */
    presence() {
        return this.host.presence(this.channel);
    }
    /** Counts this channel's connections and users. */
    presenceStats() {
        return this.host.presenceStats(this.channel);
    }
    /** Ends the subscription; no event follows. A cursor update waiting to be sent is sent now. */
    unsubscribe() {
        if (this._state === 'unsubscribed')
            return;
        this.setState('unsubscribed');
        this.host.flushCursors(this.channel);
        this.host.removeSubscription(this);
    }
    /** @internal Whether it asked to start from the channel's snapshot. */
    get wantsSnapshot() {
        return this.opts.snapshot === true;
    }
    /** @internal What to send to (re)subscribe. */
    request() {
        const r = { channel: this.channel, since: this.pos ? { ...this.pos } : null };
        if (this.opts.snapshot)
            r.snapshot = true;
        if (this.opts.delta)
            r.delta = this.opts.delta;
        return r;
    }
    /** @internal Sets the position found by a lookup before subscribing. */
    setLookedUpPosition(pos, fresh) {
        this.pos = pos;
        this.freshLookup = fresh;
    }
    /** @internal The connection is gone: resubscribe on the next one. */
    connectionLost() {
        if (this._state === 'subscribed')
            this.setState('subscribing');
    }
    /** @internal A subscribe reply (WebSocket) or its SSE/poll equivalent. */
    handleSubscribed(ok, transport) {
        if (this._state === 'unsubscribed')
            return;
        const offset = uint(ok.offset);
        const epoch = str(ok.epoch);
        const presence = decodePresenceMap(ok.presence);
        const hadPos = this.pos !== null && !this.freshLookup;
        this.freshLookup = false;
        this.startPending = false;
        this.setState('subscribed');
        const ev = { recovered: false, transport };
        if (offset !== undefined)
            ev.offset = offset;
        if (epoch !== undefined)
            ev.epoch = epoch;
        if (presence)
            ev.presence = presence;
        // A new subscription: the first delta builds on what this reply holds.
        this.deltaBase = null;
        const pubs = decodePublications(ok.publications, this.channel);
        // A reply's publications are of the reply's epoch.
        if (epoch !== undefined)
            for (const p of pubs)
                p.epoch ?? (p.epoch = epoch);
        if (ok.delta === true) {
            for (const p of pubs)
                if (!this.fromText(p, p.data, false))
                    return;
        }
        const restart = pubs.length > 0 && (pubs[0].snapshot === true || !hadPos);
        if (restart && ok.recovered !== true && epoch !== undefined && pubs[0].offset !== undefined) {
            // The position is lost (or none was given) but the channel has a
            // snapshot (or, asked with `snapshot`, holds everything from its
            // start): it and everything after it follow, instead of a reset.
            this.pos = { offset: pubs[0].offset - 1, epoch };
            this.ordered(() => this.emit('subscribed', ev));
            for (const p of pubs)
                this.handlePub(p);
            return;
        }
        if (ok.recovered === true && hadPos) {
            ev.recovered = true;
            this.ordered(() => this.emit('subscribed', ev));
            for (const p of pubs)
                this.handlePub(p);
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
            const reset = { offset: this.pos.offset, epoch: this.pos.epoch, reason: 'unrecoverable' };
            this.ordered(() => this.emit('reset', reset));
        }
        if (this.opts.receipts && !this.memberList)
            this.members().catch(() => undefined);
    }
    /**
     * @internal The server said 107 (already subscribed, e.g. through the
     * token's `channels` claim): the channel's pushes flow already. The
     * position is kept; a gap after it is recovered on the next publication.
     */
    handleAlreadySubscribed(transport) {
        if (this._state === 'unsubscribed')
            return;
        this.freshLookup = false;
        this.startPending = false;
        this.setState('subscribed');
        const ev = { recovered: false, transport };
        if (this.pos) {
            ev.offset = this.pos.offset;
            ev.epoch = this.pos.epoch;
        }
        this.emit('subscribed', ev);
    }
    /** @internal Subscribing failed for good. */
    handleError(err) {
        if (this._state === 'unsubscribed')
            return;
        this.setState('unsubscribed');
        this.host.removeSubscription(this);
        this.emit('error', err);
    }
    /** @internal A push for this channel. */
    handlePush(push) {
        if (push.push === 'receipt') {
            if (this._state !== 'unsubscribed')
                this.handleReceipt(push);
            return;
        }
        if (this._state !== 'subscribed')
            return;
        switch (push.push) {
            case 'pub': {
                const p = decodePublication(push);
                if (!p)
                    return;
                // Already delivered (e.g. queued before a resubscribe's reply): dropped
                // before it can touch the delta base.
                if (p.offset !== undefined && this.pos && p.epoch === this.pos.epoch && p.offset <= this.pos.offset)
                    return;
                // In a delta subscription `data` is text: the payload's, or a delta.
                if (typeof push.delta === 'boolean' && !this.fromText(p, push.data, push.delta))
                    return;
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
                if (offset === undefined || epoch === undefined)
                    return;
                this.pos = { offset, epoch };
                this.ordered(() => this.emit('reset', { offset, epoch, reason: 'unrecoverable' }));
                return;
            }
            case 'join':
            case 'leave': {
                const e = decodePresenceEntry(push);
                if (e)
                    this.emit(push.push, e);
                return;
            }
            case 'unsub': {
                const code = uint(push.code) ?? 0;
                if (code >= 3000 && code < 3500) {
                    // e.g. 3003 insufficient state: subscribe again from where we are.
                    this.setState('subscribing');
                    this.host.resubscribe(this, true);
                }
                else {
                    this.handleError(new TidingsError(code || ErrorCode.PermissionDenied, str(push.reason) ?? 'unsubscribed by the server', false));
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
    fromText(p, data, isDelta) {
        if (typeof data !== 'string')
            return true; // the server sent the value itself
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
    handlePub(p, latest = false) {
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
            const reset = { offset: p.offset - 1, epoch: p.epoch, reason: 'epoch' };
            this.ordered(() => this.emit('reset', reset));
        }
        if (this.pos) {
            if (p.offset <= this.pos.offset)
                return; // already delivered
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
    deliver(event, p) {
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
            if (this._state !== 'unsubscribed')
                this.emitPub(event, q);
        }, () => {
            this.queued -= 1; // open() never rejects
        });
    }
    /** Runs `fn` now, or after the events waiting for envelopes to be opened. */
    ordered(fn) {
        if (this.queued === 0) {
            fn();
            return;
        }
        this.queued += 1;
        this.chain = this.chain.then(() => {
            this.queued -= 1;
            if (this._state !== 'unsubscribed')
                fn();
        });
    }
    emitPub(event, p) {
        this.emit(event, p);
        if (p.undecryptable !== undefined)
            this.emit('undecryptable', p);
        if (this.opts.receipts && p.offset !== undefined && p.info?.user !== this.host.user) {
            this.host.markDelivered(this.channel, p.offset).catch(() => undefined);
        }
    }
    /** Remembers who published `p`: their cursors are at least at its offset. */
    notePublication(p) {
        if (p.offset === undefined || !p.info)
            return;
        this.noteSender(p.offset, p.info.user);
    }
    noteSender(offset, user) {
        if (!this.senders.has(offset)) {
            this.senders.set(offset, user);
            if (this.senders.size > MAX_SENDERS)
                this.senders.delete(this.senders.keys().next().value);
        }
        // A user's own publication moves their cursors to its offset.
        if (this.raiseCursors(user, offset, offset))
            this.emit('delivery', { channel: this.channel });
    }
    raiseCursors(user, delivered, read) {
        const c = this.cursors.get(user);
        const d = Math.max(delivered, read);
        if (c && c.delivered >= d && c.read >= read)
            return false;
        this.cursors.set(user, { delivered: Math.max(c?.delivered ?? 0, d), read: Math.max(c?.read ?? 0, read) });
        return true;
    }
    handleReceipt(push) {
        const r = decodeReceipt(push);
        if (!r || r.channel !== this.channel)
            return;
        if ('user' in r) {
            this.raiseCursors(r.user, r.delivered, r.read);
            if (r.user === this.host.user)
                this.host.cursorsKnown(this.channel, { delivered: r.delivered, read: r.read });
        }
        else {
            this.summary = r;
        }
        this.emit('receipt', r);
        this.emit('delivery', { channel: this.channel });
    }
    setState(s) {
        if (this._state === s)
            return;
        this._state = s;
        this.emit('state', s);
    }
}
