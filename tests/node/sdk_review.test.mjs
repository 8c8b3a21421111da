// Regression tests for SDK review findings, against the real binary:
// `since: 'start'` (no duplicates, trimmed history), SSE through a buffering
// proxy, a 502-answering proxy during a restart, channel errors in a
// long-poll session, Optimistic resets during a load, backoff after
// accept-then-close, and the typing user over HTTP transports.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Optimistic, TypingWatcher } from '../../sdk/js/dist/index.js';
import { API_KEY, apiPublish, mintToken, startSwitchProxy, startTidings, until } from './harness.mjs';
import { client, collect, connected, next } from './sdk_helpers.mjs';

const SECRET = 'sdk-review-secret';
const config = (recoveryMax) => `listen = "127.0.0.1:0"
cors_origins = ["*"]
[auth]
token_secret = "${SECRET}"
api_keys = ["${API_KEY}"]
[channels]
history_size = 100
history_ttl = "1h"
anonymous = true
[namespaces.small]
history_size = 2
history_ttl = "1h"
anonymous = true
[client]
recovery_max = ${recoveryMax}
`;

let server; // recovery_max = 1000 (the default)
let tight; // recovery_max = 3
before(async () => {
  [server, tight] = await Promise.all([startTidings(config(1000)), startTidings(config(3))]);
});
after(async () => {
  await Promise.all([server?.stop(), tight?.stop()]);
});

let chanSeq = 0;
const fresh = (ns = '') => `${ns ? `${ns}:` : ''}r${process.pid}x${++chanSeq}`;

const token = (user, ttlS = 3600, extra = {}) =>
  mintToken(SECRET, { sub: user, exp: Math.floor(Date.now() / 1000) + ttlS, ...extra });

describe("since: 'start'", () => {
  test("a 'start' channel subscribed while the connection's lookups run gets its own lookup; no duplicates after a reconnect", { timeout: 30_000 }, async (t) => {
    const a = fresh();
    const b = fresh();
    await apiPublish(server.addr, a, 'a1');
    for (const i of [1, 2, 3]) await apiPublish(server.addr, b, i);
    const proxy = await startSwitchProxy(server.addr);
    t.after(() => proxy.close());
    // The first history read (the lookup of `a` in the connection attempt)
    // is held until `b` has been subscribed.
    let release;
    const gate = new Promise((r) => { release = r; });
    let held = 0;
    const fetchFn = async (url, init) => {
      if (String(url).includes('/v1/client/history') && held === 0) {
        held += 1;
        await gate;
      }
      return fetch(url, init);
    };
    const c = client(t, proxy.addr, { fetch: fetchFn });
    c.subscribe(a, { since: 'start' });
    c.connect();
    await until(() => held === 1, 10_000, 'the lookup of the first channel');
    const sub = c.subscribe(b, { since: 'start' });
    const got = collect(sub);
    release();
    await connected(c, 'websocket');
    await until(() => got.pubs.length >= 3, 10_000, 'the history of the second channel');
    await apiPublish(server.addr, b, 4);
    await apiPublish(server.addr, b, 5);
    await until(() => got.pubs.length >= 5, 10_000, 'two live publications');
    // A reconnect must resume from the position, not replay from the start.
    const gone = next(c, 'state', (s) => s.state === 'disconnected');
    proxy.cut();
    await gone;
    await connected(c, 'websocket');
    await until(() => sub.state === 'subscribed', 10_000, 'the resubscribe');
    await apiPublish(server.addr, b, 6);
    await until(() => got.pubs.includes(6), 10_000, 'the publication after the reconnect');
    assert.deepEqual(got.pubs, [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(got.resets, []);
  });

  for (const transport of ['websocket', 'poll']) {
    test(`${transport}: 'start' delivers the retained history when it is trimmed or longer than recovery_max, without a reset`, { timeout: 30_000 }, async (t) => {
      // `small` keeps 2 publications (offset 1 is gone); the default
      // namespace keeps 100, of which a subscribe recovers at most 3.
      const trimmed = fresh('small');
      const long = fresh();
      for (let i = 1; i <= 5; i++) {
        await apiPublish(tight.addr, trimmed, i);
        await apiPublish(tight.addr, long, i);
      }
      const c = client(t, tight.addr, { transports: [transport] });
      const s1 = c.subscribe(trimmed, { since: 'start' });
      const s2 = c.subscribe(long, { since: 'start' });
      const g1 = collect(s1);
      const g2 = collect(s2);
      c.connect();
      await until(() => g1.pubs.length >= 2 && g2.pubs.length >= 3, 10_000, 'the retained history');
      await apiPublish(tight.addr, trimmed, 6);
      await apiPublish(tight.addr, long, 6);
      await until(() => g1.pubs.includes(6) && g2.pubs.includes(6), 10_000, 'the live publications');
      assert.deepEqual(g1.pubs, [4, 5, 6]);
      assert.deepEqual(g2.pubs, [3, 4, 5, 6]);
      assert.deepEqual(g1.resets, []);
      assert.deepEqual(g2.resets, []);
      assert.equal(g1.subscribed[0].recovered, true);
      assert.equal(g2.subscribed[0].recovered, true);
    });
  }
});

describe('transport fallback', () => {
  test('SSE through a proxy that buffers the stream: falls back to long-poll, and a publication arrives', { timeout: 30_000 }, async (t) => {
    const ch = fresh();
    const proxy = await startSwitchProxy(server.addr);
    proxy.flags.bufferSse = true;
    t.after(() => proxy.close());
    const c = client(t, proxy.addr, { transports: ['sse', 'poll'], connectTimeout: 1500 });
    const states = [];
    c.on('state', (s) => states.push(`${s.state}/${s.transport}`));
    const sub = c.subscribe(ch);
    const got = collect(sub);
    c.connect();
    await connected(c, 'poll', 15_000);
    await until(() => sub.state === 'subscribed', 10_000, 'the subscription');
    await apiPublish(server.addr, ch, 'through poll');
    await until(() => got.pubs.length === 1, 10_000, 'the publication');
    assert.deepEqual(got.pubs, ['through poll']);
    assert.ok(!states.includes('connected/sse'), `never shown as connected over SSE: ${states.join(', ')}`);
  });

  test('a reverse proxy answering 502 while the server is away: the client stays on WebSocket and ends there', { timeout: 30_000 }, async (t) => {
    const ch = fresh();
    const proxy = await startSwitchProxy(server.addr);
    t.after(() => proxy.close());
    const c = client(t, proxy.addr);
    const sub = c.subscribe(ch);
    const got = collect(sub);
    c.connect();
    await connected(c, 'websocket');
    const tried = [];
    c.on('state', (s) => { if (s.state === 'connecting') tried.push(s.transport); });
    proxy.flags.bad502 = true;
    proxy.cut();
    // Several reconnect attempts (and reachability checks) answered 502.
    await until(() => proxy.answered502 >= 6, 15_000, 'attempts answered 502');
    proxy.flags.bad502 = false;
    await connected(c, 'websocket', 15_000);
    await until(() => sub.state === 'subscribed', 10_000, 'the resubscribe');
    await apiPublish(server.addr, ch, 'after the outage');
    await until(() => got.pubs.length === 1, 10_000, 'the publication');
    assert.equal(c.transport, 'websocket');
    assert.deepEqual([...new Set(tried)], ['websocket'], `tried: ${tried.join(', ')}`);
  });
});

describe('long-poll', () => {
  test('a channel refused in the middle of a long-poll session fails alone; the other keeps delivering', { timeout: 30_000 }, async (t) => {
    const open = fresh();
    const dm = `${fresh()}#alice`; // only alice may read it
    // The first token is alice's and short: the client refreshes it ahead
    // of expiry with getToken, which now answers bob's. The next poll then
    // carries a user the dm channel refuses (103).
    const issued = [];
    const getToken = () => {
      const tok = issued.length === 0 ? token('alice', 3) : token('bob');
      issued.push(tok);
      return tok;
    };
    const c = client(t, server.addr, { transports: ['poll'], getToken });
    const errors = [];
    c.on('error', (e) => errors.push(e));
    const subOpen = c.subscribe(open);
    const subDm = c.subscribe(dm);
    const gOpen = collect(subOpen);
    const gDm = collect(subDm);
    c.connect();
    await connected(c, 'poll');
    await until(() => subOpen.state === 'subscribed' && subDm.state === 'subscribed', 10_000, 'both subscriptions');
    await until(() => issued.length >= 2, 15_000, 'the token refresh');
    // Ends the held poll (still alice's); the next one is bob's.
    await apiPublish(server.addr, open, 1);
    await until(() => gOpen.pubs.includes(1), 10_000, 'the first publication');
    await until(() => gDm.errors.length === 1, 10_000, 'the dm channel failing');
    assert.equal(gDm.errors[0].code, 103);
    assert.equal(subDm.state, 'unsubscribed');
    await apiPublish(server.addr, open, 2);
    await until(() => gOpen.pubs.includes(2), 10_000, 'a publication after the refusal');
    assert.deepEqual(gOpen.pubs, [1, 2]);
    assert.equal(c.state, 'connected');
    assert.equal(c.transport, 'poll');
    assert.deepEqual(errors.map((e) => e.code), []);
  });
});

describe('Optimistic', () => {
  test('a reset during a load starts it over, and live publications during a load are applied after the history, in order', { timeout: 40_000 }, async (t) => {
    // On `tight` a history answer holds at most 3 publications: a load
    // takes several pages.
    const ch = fresh();
    const first = await apiPublish(tight.addr, ch, 1);
    for (let i = 2; i <= 7; i++) await apiPublish(tight.addr, ch, i);
    const proxy = await startSwitchProxy(tight.addr);
    t.after(() => proxy.close());
    const c = client(t, proxy.addr);
    // The second history read (page 2 of the first load) is held.
    const history = c.history.bind(c);
    let calls = 0;
    let held = false;
    let release;
    const gate = new Promise((r) => { release = r; });
    c.history = async (...args) => {
      calls += 1;
      if (calls === 2) {
        held = true;
        await gate;
      }
      return history(...args);
    };
    // 7 missed, more than recovery_max: recovered: false and a reset.
    const sub = c.subscribe(ch, { since: { offset: 0, epoch: first.epoch } });
    const got = collect(sub);
    const opt = new Optimistic(c, sub, { initial: () => [], apply: (list, n) => [...list, n] });
    t.after(() => opt.destroy());
    c.connect();
    await until(() => held, 10_000, 'the second page of the first load');
    // A live publication while the load runs.
    await apiPublish(tight.addr, ch, 8);
    await until(() => got.pubs.includes(8), 10_000, 'the live publication');
    // A second reset while the load still runs: 4 publications missed
    // while disconnected, more than recovery_max.
    proxy.flags.blockAll = true;
    const gone = next(c, 'state', (s) => s.state === 'disconnected');
    proxy.cut();
    await gone;
    for (let i = 9; i <= 12; i++) await apiPublish(tight.addr, ch, i);
    proxy.flags.blockAll = false;
    await until(() => got.resets.length === 2, 15_000, 'the second reset');
    release();
    await until(() => opt.state.length >= 12, 10_000, 'the reloaded history');
    await apiPublish(tight.addr, ch, 13);
    await until(() => opt.state.includes(13), 10_000, 'a live publication after the load');
    assert.deepEqual(opt.state, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
  });
});

describe('connection management', () => {
  test('a server that accepts and then closes at once gets growing reconnect delays (no backoff reset on a short open)', { timeout: 30_000 }, async (t) => {
    const proxy = await startSwitchProxy(server.addr);
    t.after(() => proxy.close());
    // random() = 1: each delay is its window's cap, 50, 100, 200, 400.
    const c = client(t, proxy.addr, { random: () => 1 });
    const delays = [];
    c.on('reconnecting', (e) => delays.push(e.delay));
    // Each connection is cut as soon as it opens.
    c.on('connected', () => setImmediate(() => proxy.cut()));
    c.connect();
    await until(() => delays.length >= 4, 15_000, 'four reconnects');
    c.disconnect();
    assert.deepEqual(delays.slice(0, 4), [50, 100, 200, 400]);
  });

  test('TypingWatcher over SSE does not show the local user typing (the user comes from the token)', { timeout: 30_000 }, async (t) => {
    const ch = fresh();
    const ann = client(t, server.addr, { transports: ['sse'], token: token('ann') });
    const ben = client(t, server.addr, { transports: ['sse'], token: token('ben') });
    const reports = [];
    const watcher = new TypingWatcher(ann, ch, (names) => reports.push(names), 60_000);
    t.after(() => watcher.destroy());
    const benSub = ben.subscribe(ch);
    ann.connect();
    ben.connect();
    await connected(ann, 'sse');
    await connected(ben, 'sse');
    await until(() => ann.getSubscription(ch).state === 'subscribed' && benSub.state === 'subscribed', 10_000, 'subscriptions');
    assert.equal(ann.user, 'ann');
    await ann.publish(ch, { typing: true }, { queue: false });
    await ben.publish(ch, { typing: true }, { queue: false });
    await until(() => reports.some((r) => r.includes('ben')), 10_000, "ben's typing");
    assert.ok(reports.every((r) => !r.includes('ann')), `reports: ${JSON.stringify(reports)}`);
  });
});
