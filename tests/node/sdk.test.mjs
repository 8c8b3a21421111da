// The TypeScript SDK (sdk/js/dist) against a real Tidings binary: transports,
// fallback, recovery, acknowledged and idempotent publishes, the outbox, the
// optimistic helper, token refresh, terminal codes and shutdown.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import {
  Backoff, ErrorCode, MemoryOutboxStore, Optimistic, TidingsError, encodePositionVector,
} from '../../sdk/js/dist/index.js';
import { decodeFrame, decodePublication, decodePresenceMap } from '../../sdk/js/dist/codec.js';
import {
  API_KEY, apiPublish, mintToken, startSilentServer, startSwitchProxy, startTidings, until,
} from './harness.mjs';
import { client, collect, connected, next } from './sdk_helpers.mjs';

const SECRET = 'sdk-test-secret';
const CONFIG = `listen = "127.0.0.1:0"
demo = true
cors_origins = ["*"]
shutdown_spread = "2s"
[auth]
token_secret = "${SECRET}"
api_keys = ["${API_KEY}"]
[channels]
history_size = 1000
history_ttl = "1h"
anonymous = true
[namespaces.small]
history_size = 3
history_ttl = "1h"
anonymous = true
max_message_size = 64
`;

let server;
before(async () => {
  server = await startTidings(CONFIG);
});
after(async () => {
  await server?.stop();
});

let chanSeq = 0;
/** A channel name no other test uses. */
const fresh = (ns = '') => `${ns ? `${ns}:` : ''}t${process.pid}x${++chanSeq}`;

const token = (user, ttlS = 3600, extra = {}) =>
  mintToken(SECRET, { sub: user, exp: Math.floor(Date.now() / 1000) + ttlS, info: { name: user }, ...extra });

/** Resolves with `p`, or rejects once `ms` passed without an answer. */
function within(p, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** The `exp` claim of a JWT. */
const expOf = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString()).exp;

/**
 * The `ws` WebSocket with faults injected on the client side of a real
 * connection: `refuseSubscribe` answers the first `subscribe` command to a
 * channel itself with an error (the server never sees it), `dropReply` drops
 * the server's answer to the first `publish` command.
 */
function faultyWebSocket({ refuseSubscribe = null, dropReply = false } = {}) {
  const state = { refused: 0, dropped: 0 };
  class Faulty extends WebSocket {
    constructor(...args) {
      super(...args);
      this.dropId = null;
    }

    send(data) {
      const msg = JSON.parse(data);
      if (refuseSubscribe && msg.op === 'subscribe' && msg.channel === refuseSubscribe.channel && state.refused === 0) {
        state.refused += 1;
        const reply = JSON.stringify({ id: msg.id, error: refuseSubscribe.error });
        setImmediate(() => this.onmessage?.({ data: reply }));
        return;
      }
      if (dropReply && msg.op === 'publish' && state.dropped === 0 && this.dropId === null) this.dropId = msg.id;
      super.send(data);
    }

    get onmessage() {
      return this.appOnMessage ?? null;
    }

    set onmessage(fn) {
      this.appOnMessage = fn;
      super.onmessage = fn && ((ev) => {
        if (this.dropId === null || typeof ev.data !== 'string') return fn(ev);
        const lines = ev.data.split('\n').filter((line) => {
          try {
            const m = JSON.parse(line);
            if (m.id === this.dropId && m.push === undefined) {
              state.dropped += 1;
              this.dropId = null;
              return false;
            }
          } catch {
            // not JSON: keep
          }
          return true;
        });
        if (lines.length) fn({ data: lines.join('\n') });
      });
    }
  }
  return { WebSocket: Faulty, state };
}

describe('WebSocket', () => {
  test('connect, subscribe, publish: the ack carries the offset the subscriber sees', { timeout: 20_000 }, async (t) => {
    const ch = fresh();
    const a = client(t, server.addr, { token: token('alice') });
    const b = client(t, server.addr, { token: token('bob') });
    const subA = a.subscribe(ch);
    const subB = b.subscribe(ch);
    const gotB = collect(subB);
    const subscribedA = next(subA, 'subscribed');
    const subscribedB = next(subB, 'subscribed');
    a.connect();
    b.connect();
    const s = await subscribedA;
    await subscribedB;
    assert.equal(s.transport, 'websocket');
    assert.equal(s.recovered, false);
    assert.equal(a.transport, 'websocket');
    assert.equal(a.user, 'alice');
    const r1 = await subA.publish({ text: 'one' });
    const r2 = await subA.publish({ text: 'two' });
    assert.equal(r2.offset, r1.offset + 1);
    assert.equal(typeof r1.epoch, 'string');
    await until(() => gotB.pubs.length === 2, 10_000, 'both publications at b');
    assert.deepEqual(gotB.pubs, [{ text: 'one' }, { text: 'two' }]);
    assert.deepEqual(gotB.offsets, [r1.offset, r2.offset]);
  });

  test('a refused publish rejects with a typed error carrying the protocol code', { timeout: 20_000 }, async (t) => {
    const c = client(t, server.addr);
    const sub = c.subscribe(fresh('small'));
    const ready = next(sub, 'subscribed');
    c.connect();
    await ready;
    const big = 'x'.repeat(200); // small: max_message_size = 64
    await assert.rejects(sub.publish({ big }), (e) => {
      assert.ok(e instanceof TidingsError);
      assert.equal(e.code, ErrorCode.LimitExceeded);
      assert.equal(e.code, 104);
      assert.equal(e.temporary, false);
      return true;
    });
    await assert.rejects(c.publish('nosuchns:x', 1), (e) => e instanceof TidingsError && e.code === 102);
    // The outbox dropped both: nothing is left to resend.
    assert.equal(c.pendingPublishes().length, 0);
    // The connection is still usable.
    const ok = await sub.publish('ok');
    assert.equal(typeof ok.offset, 'number');
  });

  test('a retry after a lost acknowledgement publishes once (idempotency key)', { timeout: 30_000 }, async (t) => {
    const ch = fresh();
    const proxy = await startSwitchProxy(server.addr);
    t.after(() => proxy.close());
    const a = client(t, proxy.addr);
    const watcher = client(t, server.addr);
    const subW = watcher.subscribe(ch);
    const got = collect(subW);
    const subA = a.subscribe(ch);
    const ready = Promise.all([next(subA, 'subscribed'), next(subW, 'subscribed')]);
    a.connect();
    watcher.connect();
    await ready;
    // The server gets the publish, its answer is lost on the way back.
    proxy.flags.mute = true;
    const p = subA.publish({ n: 1 }, { idempotencyKey: 'lost-ack-1' });
    await until(() => got.pubs.length === 1, 10_000, 'the publication at the watcher');
    proxy.cut();
    proxy.flags.mute = false;
    const r = await p; // resent under the same key after reconnecting
    assert.equal(r.offset, got.offsets[0]);
    // And an explicit retry with the same key answers the same offset.
    const again = await subA.publish({ n: 1 }, { idempotencyKey: 'lost-ack-1' });
    assert.equal(again.offset, r.offset);
    await subA.publish({ n: 2 });
    await until(() => got.pubs.length === 2, 10_000, 'the second publication');
    assert.deepEqual(got.pubs, [{ n: 1 }, { n: 2 }]);
  });

  test('recovery after a cut: every missed publication once, in order, recovered: true', { timeout: 30_000 }, async (t) => {
    const ch = fresh();
    const proxy = await startSwitchProxy(server.addr);
    t.after(() => proxy.close());
    const c = client(t, proxy.addr, { transports: ['websocket'] }); // asserts the WebSocket reply: no fallback
    const sub = c.subscribe(ch);
    const got = collect(sub);
    const ready = next(sub, 'subscribed');
    c.connect();
    await ready;
    for (let i = 1; i <= 3; i++) await apiPublish(server.addr, ch, i);
    await until(() => got.pubs.length === 3, 10_000, 'live publications');
    proxy.flags.blockAll = true;
    proxy.cut();
    await next(c, 'state', (s) => s.state === 'disconnected');
    for (let i = 4; i <= 10; i++) await apiPublish(server.addr, ch, i);
    const resubscribed = next(sub, 'subscribed');
    proxy.flags.blockAll = false;
    const s = await resubscribed;
    assert.equal(s.recovered, true);
    await until(() => got.pubs.length >= 10, 10_000, 'the missed publications');
    await apiPublish(server.addr, ch, 11);
    await until(() => got.pubs.length >= 11, 10_000, 'the next live publication');
    assert.deepEqual(got.pubs, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    assert.deepEqual(got.resets, []);
  });

  test('a position history no longer holds: recovered: false and a reset event', { timeout: 30_000 }, async (t) => {
    const ch = fresh('small'); // history_size = 3
    const proxy = await startSwitchProxy(server.addr);
    t.after(() => proxy.close());
    const c = client(t, proxy.addr, { transports: ['websocket'] }); // asserts the WebSocket reply: no fallback
    const sub = c.subscribe(ch);
    const got = collect(sub);
    const ready = next(sub, 'subscribed');
    c.connect();
    await ready;
    await apiPublish(server.addr, ch, 1);
    await until(() => got.pubs.length === 1, 10_000, 'the first publication');
    proxy.flags.blockAll = true;
    proxy.cut();
    await next(c, 'state', (s) => s.state === 'disconnected');
    let last;
    for (let i = 2; i <= 8; i++) last = await apiPublish(server.addr, ch, i);
    const reset = next(sub, 'reset');
    const resubscribed = next(sub, 'subscribed');
    proxy.flags.blockAll = false;
    const s = await resubscribed;
    const r = await reset;
    assert.equal(s.recovered, false);
    assert.equal(r.reason, 'unrecoverable');
    assert.equal(r.offset, last.offset);
    assert.deepEqual(sub.position, { offset: last.offset, epoch: last.epoch });
    // Live publications continue after the reset position.
    await apiPublish(server.addr, ch, 9);
    await until(() => got.pubs.length === 2, 10_000, 'the live publication after the reset');
    assert.deepEqual(got.pubs, [1, 9]);
  });

  test("since: 'start' delivers the retained history, then live publications", { timeout: 20_000 }, async (t) => {
    const ch = fresh();
    for (let i = 1; i <= 4; i++) await apiPublish(server.addr, ch, i);
    const c = client(t, server.addr);
    const sub = c.subscribe(ch, { since: 'start' });
    const got = collect(sub);
    c.connect();
    await until(() => got.pubs.length === 4, 10_000, 'the history');
    assert.equal(got.subscribed[0].recovered, true);
    await apiPublish(server.addr, ch, 5);
    await until(() => got.pubs.length === 5, 10_000, 'the live publication');
    assert.deepEqual(got.pubs, [1, 2, 3, 4, 5]);
  });

  test('presence: subscribed carries the list, join and leave follow', { timeout: 20_000 }, async (t) => {
    const ch = fresh('demo');
    const a = client(t, server.addr, { token: token('ann') });
    const b = client(t, server.addr, { token: token('ben') });
    const subA = a.subscribe(ch);
    const joined = next(subA, 'join', (e) => e.user === 'ben');
    const first = next(subA, 'subscribed');
    a.connect();
    const s = await first;
    assert.deepEqual(Object.values(s.presence).map((e) => e.user), ['ann']);
    b.subscribe(ch);
    b.connect();
    const j = await joined;
    assert.deepEqual(j.info, { name: 'ben' });
    const left = next(subA, 'leave', (e) => e.user === 'ben');
    b.disconnect();
    await left;
    const stats = await subA.presenceStats();
    assert.deepEqual(stats, { clients: 1, users: 1 });
  });
});

for (const transport of ['sse', 'poll']) {
  describe(`${transport} transport`, () => {
    test(`${transport}: subscribe, publish over HTTP with an ack, recover after a cut`, { timeout: 40_000 }, async (t) => {
      const ch = fresh();
      const proxy = await startSwitchProxy(server.addr);
      t.after(() => proxy.close());
      const c = client(t, proxy.addr, { transports: [transport], token: token('carol') });
      const sub = c.subscribe(ch);
      const got = collect(sub);
      const subscribed = next(sub, 'subscribed');
      c.connect();
      const s = await subscribed;
      assert.equal(s.transport, transport);
      assert.equal(c.transport, transport);
      assert.equal(typeof s.offset, 'number');
      const r = await sub.publish({ via: transport });
      assert.equal(typeof r.offset, 'number');
      await until(() => got.pubs.length === 1, 10_000, 'own publication');
      assert.deepEqual(got.offsets, [r.offset]);
      proxy.flags.blockAll = true;
      proxy.cut();
      await next(c, 'state', (x) => x.state === 'disconnected');
      for (let i = 1; i <= 5; i++) await apiPublish(server.addr, ch, i);
      proxy.flags.blockAll = false;
      await until(() => got.pubs.length === 6, 15_000, 'the missed publications');
      assert.deepEqual(got.pubs, [{ via: transport }, 1, 2, 3, 4, 5]);
      assert.deepEqual(got.resets, []);
      // History and presence through client actions.
      const h = await sub.history({ limit: 10 });
      assert.equal(h.publications.length, 6);
    });
  });
}

describe('fallback', () => {
  test('/v1/ws refused by a proxy: falls back to SSE, which works and sticks', { timeout: 30_000 }, async (t) => {
    const ch = fresh();
    const proxy = await startSwitchProxy(server.addr);
    proxy.flags.blockWs = true;
    t.after(() => proxy.close());
    const c = client(t, proxy.addr, { token: token('dave') });
    const tried = [];
    c.on('state', (s) => { if (s.state === 'connecting') tried.push(s.transport); });
    const sub = c.subscribe(ch);
    const got = collect(sub);
    c.connect();
    await connected(c);
    assert.equal(c.transport, 'sse');
    assert.deepEqual(tried, ['websocket', 'sse']);
    const r = await sub.publish('through sse');
    await until(() => got.pubs.length === 1, 10_000, 'own publication');
    assert.deepEqual(got.offsets, [r.offset]);
    // After a cut it reconnects over SSE first (sticky), not WebSocket.
    proxy.cut();
    await next(c, 'state', (s) => s.state === 'disconnected');
    await connected(c);
    assert.equal(c.transport, 'sse');
    assert.equal(tried.at(-1), 'sse');
  });

  test('switching WebSocket → SSE resumes from the same position', { timeout: 30_000 }, async (t) => {
    const ch = fresh();
    const proxy = await startSwitchProxy(server.addr);
    t.after(() => proxy.close());
    const c = client(t, proxy.addr);
    const sub = c.subscribe(ch);
    const got = collect(sub);
    c.connect();
    await connected(c, 'websocket');
    await apiPublish(server.addr, ch, 1);
    await until(() => got.pubs.length === 1, 10_000, 'first publication');
    proxy.flags.blockAll = true;
    proxy.cut();
    await next(c, 'state', (s) => s.state === 'disconnected');
    for (let i = 2; i <= 6; i++) await apiPublish(server.addr, ch, i);
    proxy.flags.blockWs = true;
    proxy.flags.blockAll = false;
    await connected(c, 'sse');
    await until(() => got.pubs.length === 6, 15_000, 'missed publications over SSE');
    assert.deepEqual(got.pubs, [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(got.resets, []);
  });
});

describe('outbox', () => {
  test('publishes made while disconnected are sent in order after reconnecting', { timeout: 30_000 }, async (t) => {
    const ch = fresh();
    const proxy = await startSwitchProxy(server.addr);
    t.after(() => proxy.close());
    const a = client(t, proxy.addr);
    const b = client(t, server.addr);
    const subA = a.subscribe(ch);
    const subB = b.subscribe(ch);
    const got = collect(subB);
    const ready = Promise.all([next(subA, 'subscribed'), next(subB, 'subscribed')]);
    a.connect();
    b.connect();
    await ready;
    proxy.flags.blockAll = true;
    proxy.cut();
    await next(a, 'state', (s) => s.state === 'disconnected');
    const sent = ['m1', 'm2', 'm3'].map((m) => subA.publish(m));
    assert.deepEqual(a.pendingPublishes(ch).map((e) => e.data), ['m1', 'm2', 'm3']);
    proxy.flags.blockAll = false;
    const results = await Promise.all(sent);
    assert.deepEqual(results.map((r) => r.offset), [results[0].offset, results[0].offset + 1, results[0].offset + 2]);
    await until(() => got.pubs.length === 3, 10_000, 'the three at b');
    assert.deepEqual(got.pubs, ['m1', 'm2', 'm3']);
    assert.equal(a.pendingPublishes().length, 0);
  });

  test('a stored outbox survives a restart of the client (reload) and is sent once', { timeout: 30_000 }, async (t) => {
    const ch = fresh();
    const proxy = await startSwitchProxy(server.addr);
    t.after(() => proxy.close());
    proxy.flags.blockAll = true;
    const store = new MemoryOutboxStore();
    const first = client(t, proxy.addr, { outbox: store });
    first.subscribe(ch);
    first.connect();
    const lost = [first.publish(ch, 'r1'), first.publish(ch, 'r2')];
    lost.forEach((p) => p.catch(() => undefined));
    await until(() => store.size === 2, 5000, 'entries stored');
    first.disconnect(); // the page goes away

    const watcher = client(t, server.addr);
    const got = collect(watcher.subscribe(ch));
    watcher.connect();
    await connected(watcher);
    proxy.flags.blockAll = false;
    const second = client(t, proxy.addr, { outbox: store });
    const published = [];
    second.on('published', (e) => published.push(e.entry.data));
    const restored = next(second, 'outboxRestored');
    second.subscribe(ch);
    second.connect();
    assert.deepEqual((await restored).map((e) => e.data), ['r1', 'r2']);
    await until(() => published.length === 2, 10_000, 'both acknowledged');
    assert.deepEqual(published, ['r1', 'r2']);
    await until(() => got.pubs.length === 2, 10_000, 'both at the watcher');
    assert.deepEqual(got.pubs, ['r1', 'r2']);
    assert.equal(store.size, 0);
  });
});

describe('optimistic', () => {
  const chat = () => ({
    initial: () => [],
    apply: (list, data) => [...list, data.text],
  });

  test('applied at once, confirmed once (no double apply), a refused one rolled back with its data', { timeout: 20_000 }, async (t) => {
    const c = client(t, server.addr);
    const sub = c.subscribe(fresh('small'));
    const ready = next(sub, 'subscribed');
    c.connect();
    await ready;
    const opt = new Optimistic(c, sub, chat());
    t.after(() => opt.destroy());
    const p = opt.send({ text: 'hi' });
    assert.deepEqual(opt.state, ['hi']); // at once
    assert.equal(opt.pending[0].status, 'sending');
    const r = await p;
    await until(() => opt.pending.length === 0, 5000, 'the publication to confirm it');
    assert.deepEqual(opt.state, ['hi']); // once, not twice
    assert.deepEqual(opt.confirmed, ['hi']);
    assert.equal(sub.position.offset, r.offset);

    const rejected = next(opt, 'rejected');
    const tooBig = opt.send({ text: 'y'.repeat(100) }); // > 64 bytes
    assert.deepEqual(opt.state, ['hi', 'y'.repeat(100)]);
    await assert.rejects(tooBig, (e) => e.code === 104);
    const { item, error } = await rejected;
    assert.equal(error.code, 104);
    assert.equal(item.data.text, 'y'.repeat(100)); // the input, to give back
    assert.deepEqual(opt.state, ['hi']); // rolled back
    assert.equal(opt.pending[0].status, 'failed');
    opt.dismiss(item.key);
    assert.equal(opt.pending.length, 0);
  });

  test('without an outbox (outbox: false) a refused send still rolls back, an accepted one confirms', { timeout: 20_000 }, async (t) => {
    const c = client(t, server.addr, { outbox: false });
    const sub = c.subscribe(fresh('small'));
    const ready = next(sub, 'subscribed');
    c.connect();
    await ready;
    const opt = new Optimistic(c, sub, chat());
    t.after(() => opt.destroy());
    const r = await opt.send({ text: 'hi' });
    assert.equal(typeof r.offset, 'number');
    await until(() => opt.pending.length === 0, 5000, 'the publication to confirm it');
    assert.deepEqual(opt.state, ['hi']);

    const rejected = next(opt, 'rejected', () => true, 5000);
    const tooBig = opt.send({ text: 'z'.repeat(100) }); // > 64 bytes: 104
    await assert.rejects(tooBig, (e) => e.code === 104);
    const { item, error } = await rejected;
    assert.equal(error.code, 104);
    assert.equal(item.data.text, 'z'.repeat(100));
    assert.deepEqual(opt.state, ['hi']); // rolled back
    assert.equal(opt.pending.length, 1);
    assert.equal(opt.pending[0].status, 'failed');
  });
});

describe('connection management', () => {
  test('backoff: full jitter within [0, min(max, min·2^n)], reset after success', () => {
    let r = 0.999999;
    const b = new Backoff(100, 1000, () => r);
    const caps = [];
    for (let i = 0; i < 8; i++) {
      caps.push(b.nextCap());
      const d = b.next();
      assert.ok(d >= 0 && d <= caps[i], `delay ${d} within [0, ${caps[i]}]`);
    }
    assert.deepEqual(caps, [100, 200, 400, 800, 1000, 1000, 1000, 1000]);
    r = 0;
    assert.equal(b.next(), 0); // the window starts at 0: full jitter
    b.reset();
    assert.equal(b.nextCap(), 100);
    const real = new Backoff(500, 20_000);
    for (let i = 0; i < 200; i++) {
      const cap = real.nextCap();
      const d = real.next();
      assert.ok(d >= 0 && d <= cap && cap <= 20_000);
    }
    const bad = new Backoff(100, 1000, () => NaN);
    assert.equal(bad.next(), 0);
  });

  test('getToken: called at connect, again after 106/3005, and to refresh before exp', { timeout: 40_000 }, async (t) => {
    let n = 0;
    let exp2 = 0;
    const c = client(t, server.addr, {
      getToken: async () => {
        n += 1;
        // 1st: already expired (beyond the 5 s leeway); 2nd: 7 s to live;
        // later: an hour.
        if (n === 1) return token('erin', -60);
        if (n === 2) {
          const tk = token('erin', 7);
          exp2 = expOf(tk);
          return tk;
        }
        return token('erin', 3600);
      },
    });
    const errors = [];
    c.on('error', (e) => errors.push(e.code));
    const disconnects = [];
    c.on('disconnected', (d) => disconnects.push(d.code));
    c.connect();
    await connected(c, 'websocket');
    assert.equal(n, 2); // expired at connect → fetched again
    // expires_in ≈ 7 → refresh at about 5.6 s, before the server would
    // close with 3005 (7 s + 5 s leeway).
    await until(() => n === 3, 15_000, 'the refresh');
    // Past the second token's exp plus the server's 5 s leeway (and its
    // one-second rounding): had the refresh not reached the server, it would
    // have closed the connection with 3005 by now.
    await until(() => Date.now() / 1000 > exp2 + 5 + 1.5, 20_000, 'exp + leeway to pass');
    assert.equal(c.state, 'connected');
    assert.deepEqual(disconnects, []);
    assert.deepEqual(errors, []);
    assert.equal(n, 3);
  });

  test('over SSE the token is refreshed before exp, so publishing keeps working', { timeout: 30_000 }, async (t) => {
    let n = 0;
    let exp1 = 0;
    const c = client(t, server.addr, {
      transports: ['sse'],
      getToken: async () => {
        n += 1;
        // The first lives 7 s; the refreshed one an hour (so no second
        // refresh comes within the test).
        const tk = token('faye', n === 1 ? 7 : 3600);
        if (n === 1) exp1 = expOf(tk);
        return tk;
      },
    });
    const errors = [];
    c.on('error', (e) => errors.push(e.code));
    const sub = c.subscribe(fresh());
    const ready = next(sub, 'subscribed');
    c.connect();
    await ready;
    assert.equal(n, 1);
    await until(() => n === 2, 15_000, 'the refresh ahead of exp');
    // Past the first token's exp plus the server's 5 s leeway: only the
    // refreshed token makes this publish pass.
    await until(() => Date.now() / 1000 > exp1 + 5 + 1.5, 20_000, 'exp + leeway to pass');
    const r = await sub.publish('still allowed');
    assert.equal(typeof r.offset, 'number');
    // Accepted at once: a 106 would have made the outbox fetch a third token
    // and send it again, hiding a refresh that did not take.
    assert.equal(n, 2);
    assert.deepEqual(errors, []);
  });

  test('a terminal code (invalid token, 103 then 3501) stops reconnecting', { timeout: 20_000 }, async (t) => {
    const c = client(t, server.addr, { token: mintToken('wrong-secret', { sub: 'mallory' }) });
    const attempts = [];
    c.on('state', (s) => { if (s.state === 'connecting') attempts.push(s.transport); });
    const err = next(c, 'error');
    c.connect();
    const e = await err;
    assert.equal(e.code, 103);
    assert.equal(e.temporary, false);
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(c.state, 'disconnected');
    assert.deepEqual(attempts, ['websocket']);
  });

  test('server shutdown (3001): the reconnect waits the delay_ms the server gave', { timeout: 40_000 }, async (t) => {
    const own = await startTidings(CONFIG);
    t.after(() => own.stop());
    const c = client(t, own.addr);
    const log = [];
    for (const ev of ['state', 'disconnected', 'reconnecting', 'error']) c.on(ev, (e) => log.push([ev, e]));
    c.subscribe(fresh());
    c.connect();
    await connected(c).catch((e) => { throw new Error(`${e.message}: ${JSON.stringify(log)}`); });
    const disconnected = next(c, 'disconnected');
    const reconnecting = next(c, 'reconnecting');
    await own.stop();
    const d = await disconnected;
    assert.equal(d.code, 3001);
    assert.equal(d.reconnect, true);
    assert.equal(typeof d.delayMs, 'number');
    const r = await reconnecting;
    assert.equal(r.delay, d.delayMs);
    c.disconnect();
  });
});

describe('ordering: subscribe before publish', () => {
  test('a publish right after subscribe() on an open WebSocket is not refused (subscribe goes first)', { timeout: 30_000 }, async (t) => {
    const c = client(t, server.addr);
    c.connect();
    await connected(c, 'websocket');
    // The default namespace: client_publish = "subscribers".
    const sub = c.subscribe(fresh());
    const got = collect(sub);
    const r = await sub.publish('hi');
    assert.equal(typeof r.offset, 'number');
    await until(() => got.pubs.length === 1, 10_000, 'own publication');
    assert.deepEqual(got.pubs, ['hi']);
    // Without the outbox (queue: false) too.
    const direct = c.subscribe(fresh());
    const d = await direct.publish('direct', { queue: false });
    assert.equal(typeof d.offset, 'number');
    // since: 'start' looks the position up first: the publish waits for it.
    const ch = fresh();
    await apiPublish(server.addr, ch, 'old');
    const fromStart = c.subscribe(ch, { since: 'start' });
    const gotStart = collect(fromStart);
    const queued = fromStart.publish('new');
    const unqueued = fromStart.publish('new, direct', { queue: false });
    const [q, u] = await Promise.all([queued, unqueued]);
    assert.equal(typeof q.offset, 'number');
    assert.equal(typeof u.offset, 'number');
    await until(() => gotStart.pubs.length === 3, 10_000, 'history then both publications');
    assert.equal(gotStart.pubs[0], 'old');
    assert.deepEqual([...gotStart.pubs.slice(1)].sort(), ['new', 'new, direct']);
  });

  test('a channel subscribed while the WebSocket opens is subscribed before its publish is sent', { timeout: 30_000 }, async (t) => {
    const proxy = await startSwitchProxy(server.addr);
    t.after(() => proxy.close());
    proxy.flags.hold = true; // the server's answers wait: the socket does not open yet
    const c = client(t, proxy.addr, { transports: ['websocket'] });
    c.connect();
    await until(() => proxy.accepted === 1, 5000, 'the connection attempt');
    // The attempt is under way (its connect command names no channel).
    const sub = c.subscribe(fresh());
    const p = sub.publish('while opening');
    const failed = [];
    c.on('publishFailed', (e) => failed.push(e.error.code));
    proxy.release();
    const r = await within(p, 10_000, 'the publish');
    assert.equal(typeof r.offset, 'number');
    assert.deepEqual(failed, []);
    assert.equal(sub.state, 'subscribed');
  });

  test('restored outbox entries wait for a subscribe made after connect() (shared store, late load)', { timeout: 40_000 }, async (t) => {
    const ch = fresh();
    await apiPublish(server.addr, ch, 'before');
    const proxy = await startSwitchProxy(server.addr);
    t.after(() => proxy.close());
    proxy.flags.blockAll = true;
    const store = new MemoryOutboxStore();
    const first = client(t, proxy.addr, { outbox: store });
    first.connect();
    const lost = [first.publish(ch, 'r1'), first.publish(ch, 'r2')];
    lost.forEach((p) => p.catch(() => undefined));
    await until(() => store.size === 2, 5000, 'entries stored');
    first.disconnect(); // the page goes away

    // The next page reads the same store, slowly (as IndexedDB may), and
    // subscribes once connected.
    let openStore;
    const gate = new Promise((resolve) => { openStore = resolve; });
    const slow = {
      load: async () => { await gate; return store.load(); },
      put: (e) => store.put(e),
      delete: (k) => store.delete(k),
    };
    const second = client(t, server.addr, { outbox: slow });
    const published = [];
    const failed = [];
    second.on('published', (e) => published.push(e.entry.data));
    second.on('publishFailed', (e) => failed.push(e.error.code));
    second.connect();
    await connected(second, 'websocket');
    const sub = second.subscribe(ch, { since: 'start' });
    const got = collect(sub);
    openStore();
    await until(() => published.length + failed.length === 2, 10_000, 'both answered');
    assert.deepEqual(failed, []);
    assert.deepEqual(published, ['r1', 'r2']);
    await until(() => got.pubs.length === 3, 10_000, 'history and both');
    assert.deepEqual(got.pubs, ['before', 'r1', 'r2']);
    assert.equal(store.size, 0);
  });
});

describe('robustness', () => {
  test('SSE: the outbox carries on after a reconnect that came while a publish was in flight', { timeout: 40_000 }, async (t) => {
    const ch = fresh();
    const proxy = await startSwitchProxy(server.addr);
    t.after(() => proxy.close());
    const c = client(t, proxy.addr, { transports: ['sse'] });
    const watcher = client(t, server.addr);
    const subW = watcher.subscribe(ch);
    const got = collect(subW);
    const sub = c.subscribe(ch);
    const ready = Promise.all([next(sub, 'subscribed'), next(subW, 'subscribed')]);
    c.connect();
    watcher.connect();
    await ready;
    // The server takes the publish; its answer is lost, then the stream drops.
    proxy.flags.mute = true;
    const p1 = sub.publish('in flight');
    await until(() => got.pubs.length === 1, 10_000, 'the publication at the watcher');
    const back = next(c, 'connected');
    proxy.cut();
    proxy.flags.mute = false;
    await back;
    const p2 = sub.publish('after the reconnect');
    const [r1, r2] = await within(Promise.all([p1, p2]), 15_000, 'both publishes answered');
    assert.equal(r1.offset, got.offsets[0]); // resent under its key: published once
    assert.equal(r2.offset, r1.offset + 1);
    await until(() => got.pubs.length === 2, 10_000, 'the second at the watcher');
    assert.deepEqual(got.pubs, ['in flight', 'after the reconnect']);
    assert.equal(c.pendingPublishes().length, 0);
  });

  test('Node + ws: closing a WebSocket that is still connecting does not crash the process', { timeout: 30_000 }, async (t) => {
    const silent = await startSilentServer(); // takes the upgrade, never answers
    t.after(() => silent.close());
    const uncaught = [];
    const onUncaught = (e) => uncaught.push(e);
    process.on('uncaughtException', onUncaught);
    t.after(() => process.off('uncaughtException', onUncaught));
    const tick = () => new Promise((r) => setImmediate(r));

    // disconnect() during the attempt.
    const c = client(t, silent.addr, { transports: ['websocket'] });
    c.connect();
    await until(() => silent.requests === 1, 5000, 'the upgrade request');
    c.disconnect();
    await tick(); // ws reports the aborted handshake on a later tick
    await tick();
    assert.equal(c.state, 'disconnected');

    // The open timeout closing it.
    const d = client(t, silent.addr, { transports: ['websocket'], connectTimeout: 300 });
    d.connect();
    await next(d, 'reconnecting');
    await tick();
    await tick();
    d.disconnect();
    await tick();
    await tick();
    assert.deepEqual(uncaught.map(String), []);
  });

  test('disconnect() then connect() on WebSocket resubscribes and recovers, each publication once', { timeout: 30_000 }, async (t) => {
    const ch = fresh();
    const c = client(t, server.addr);
    const sub = c.subscribe(ch);
    const got = collect(sub);
    const ready = next(sub, 'subscribed');
    c.connect();
    await ready;
    await apiPublish(server.addr, ch, 1);
    await until(() => got.pubs.length === 1, 10_000, 'the first publication');
    c.disconnect();
    assert.equal(sub.state, 'subscribing');
    for (let i = 2; i <= 4; i++) await apiPublish(server.addr, ch, i);
    const mine = sub.publish('mine'); // queued while disconnected
    const again = next(sub, 'subscribed');
    c.connect();
    const s = await again;
    assert.equal(s.recovered, true);
    const r = await within(mine, 10_000, 'the queued publish');
    await until(() => got.pubs.length === 5, 10_000, 'the missed ones and mine');
    assert.deepEqual(got.pubs, [1, 2, 3, 4, 'mine']);
    assert.equal(got.offsets[4], r.offset);
    assert.deepEqual(got.resets, []);
  });

  test('a subscribe refused with a temporary error (105) is retried, not dropped', { timeout: 30_000 }, async (t) => {
    const ch = fresh();
    const faulty = faultyWebSocket({
      refuseSubscribe: { channel: ch, error: { code: 105, message: 'rate limited', temporary: true } },
    });
    const c = client(t, server.addr, { WebSocket: faulty.WebSocket });
    c.connect();
    await connected(c, 'websocket');
    const sub = c.subscribe(ch);
    const got = collect(sub);
    const errors = [];
    sub.on('error', (e) => errors.push(e.code));
    await next(sub, 'subscribed');
    assert.equal(faulty.state.refused, 1);
    assert.deepEqual(errors, []);
    await apiPublish(server.addr, ch, 'after the retry');
    await until(() => got.pubs.length === 1, 10_000, 'the publication');
  });

  test('a subscribe answered 107 (already subscribed by the token\'s channels claim) counts as subscribed', { timeout: 30_000 }, async (t) => {
    // The claim subscribed the channel at connect: the app's own subscribe
    // is answered 107 and must not drop it.
    const claimed = fresh();
    const d = client(t, server.addr, { token: token('gail', 3600, { channels: [claimed] }) });
    d.connect();
    await connected(d, 'websocket');
    const subD = d.subscribe(claimed);
    const gotD = collect(subD);
    const errorsD = [];
    subD.on('error', (e) => errorsD.push(e.code));
    await next(subD, 'subscribed');
    assert.equal(subD.state, 'subscribed');
    await apiPublish(server.addr, claimed, 'claimed');
    await until(() => gotD.pubs.length === 1, 10_000, 'the publication in the claimed channel');
    assert.deepEqual(errorsD, []);
    const r = await subD.publish('from d');
    assert.equal(typeof r.offset, 'number');
  });

  test('a WebSocket publish whose answer never comes is sent again after the timeout, once', { timeout: 30_000 }, async (t) => {
    const ch = fresh();
    const faulty = faultyWebSocket({ dropReply: true });
    const c = client(t, server.addr, { WebSocket: faulty.WebSocket, commandTimeout: 1000 });
    const watcher = client(t, server.addr);
    const got = collect(watcher.subscribe(ch));
    const sub = c.subscribe(ch);
    const ready = next(sub, 'subscribed');
    c.connect();
    watcher.connect();
    await ready;
    await connected(watcher);
    const r = await within(sub.publish('once'), 15_000, 'the publish');
    assert.equal(faulty.state.dropped, 1);
    await sub.publish('twice');
    await until(() => got.pubs.length === 2, 10_000, 'both at the watcher');
    assert.deepEqual(got.pubs, ['once', 'twice']);
    assert.equal(got.offsets[0], r.offset);
  });

  test('a fixed token (no getToken) that expired stops the client with an error instead of reconnecting', { timeout: 30_000 }, async (t) => {
    // Expired at connect (beyond the 5 s leeway): 106 then 3005.
    const c = client(t, server.addr, { token: token('hal', -60) });
    const attempts = [];
    c.on('state', (s) => { if (s.state === 'connecting') attempts.push(s.transport); });
    const err = next(c, 'error');
    c.connect();
    const e = await err;
    assert.equal(e.code, ErrorCode.TokenExpired);
    assert.equal(c.state, 'disconnected');
    assert.deepEqual(attempts, ['websocket']);

    // Expiring while connected: the server closes with 3005 at exp + 5 s.
    const d = client(t, server.addr, { token: token('hal', 1) });
    const disconnects = [];
    d.on('disconnected', (x) => disconnects.push([x.code, x.reconnect]));
    d.connect();
    await connected(d, 'websocket');
    const errD = await next(d, 'error', () => true, 15_000);
    assert.equal(errD.code, ErrorCode.TokenExpired);
    assert.equal(d.state, 'disconnected');
    assert.deepEqual(disconnects, [[3005, false]]);
  });

  test('subscribe() refuses a since offset that is not a non-negative integer', (t) => {
    for (const transports of [['websocket'], ['sse']]) {
      const c = client(t, server.addr, { transports });
      for (const offset of [-1, NaN, 1.5, Infinity, '3']) {
        assert.throws(() => c.subscribe('bad-since', { since: { offset, epoch: 'e' } }), (e) => {
          assert.ok(e instanceof TidingsError);
          assert.equal(e.code, ErrorCode.BadRequest);
          return true;
        });
        assert.equal(c.getSubscription('bad-since'), undefined);
      }
      assert.throws(() => c.subscribe('bad-since', { since: { offset: 1 } }), (e) => e.code === ErrorCode.BadRequest);
      assert.equal(c.subscribe('bad-since', { since: { offset: 0, epoch: 'e' } }).channel, 'bad-since');
    }
  });
});

describe('decoding', () => {
  test('bad server input is dropped, never thrown', () => {
    assert.deepEqual(decodeFrame('not json\n{"push":"ping"}\n[1,2]\n\n  \n{"id":1'), [{ push: 'ping' }]);
    assert.equal(decodePublication({ channel: 'x' }), null); // no data
    assert.equal(decodePublication(null), null);
    assert.equal(decodePublication({ data: 1 }), null); // no channel
    const p = decodePublication({ channel: 'c', data: 1, offset: -1, epoch: 5, info: 'x', tags: { a: 1, b: 'ok' } });
    assert.deepEqual(p, { channel: 'c', data: 1, tags: { b: 'ok' } });
    assert.deepEqual(decodePresenceMap({ a: { client: 'a', user: 'u' }, b: 7 }), { a: { client: 'a', user: 'u' } });
    assert.equal(TidingsError.fromBody('garbage').code, ErrorCode.BadResponse);
  });

  test('position vector matches the protocol example', () => {
    assert.equal(encodePositionVector([['news', { offset: 17, epoch: 'p0w3ne5z' }]]), 'AUvHvEZCearVEQ');
    assert.equal(encodePositionVector([['eph', null]]), 'AQ');
  });
});
