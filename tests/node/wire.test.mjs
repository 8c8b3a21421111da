// Fewer bytes on the wire, through the TypeScript SDK against a real
// binary: MessagePack gives the same publications as JSON; Fossil deltas applied by the SDK's own decoder (against the
// server's encoder) over WebSocket, SSE and long-poll reproduce every
// payload; snapshots replace a lost position; a gap in deltas makes the
// SDK subscribe again (with `snapshot`) and nothing is lost or repeated.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { applyDelta } from '../../sdk/js/dist/delta.js';
import { decodeMulti, encode } from '../../sdk/js/dist/msgpack.js';
import { apiPublishBody, startTidings, until } from './harness.mjs';
import { client, collect, connected, next, rng } from './sdk_helpers.mjs';

const CONFIG = `listen = "127.0.0.1:0"
cors_origins = ["*"]
shutdown_spread = "1s"
[auth]
api_keys = ["node-test-api-key"]
[channels]
history_size = 1000
history_ttl = "1h"
anonymous = true
[namespaces.small]
history_size = 3
history_ttl = "1h"
anonymous = true
`;

let server;
before(async () => {
  server = await startTidings(CONFIG);
});
after(async () => {
  await server?.stop();
});

let seq = 0;
const fresh = (ns = '') => `${ns ? `${ns}:` : ''}d${process.pid}x${++seq}`;

/** A random JSON value (non-ASCII strings included). */
function value(r, depth = 0) {
  const k = Math.floor(r() * (depth > 2 ? 4 : 6));
  const chars = Array.from('aé€😀"\\x\n');
  const text = () => Array.from({ length: Math.floor(r() * 8) }, () => chars[Math.floor(r() * chars.length)]).join('');
  switch (k) {
    case 0: return null;
    case 1: return Math.floor(r() * 2000) - 1000;
    case 2: return r() < 0.5;
    case 3: return text();
    case 4: return Array.from({ length: Math.floor(r() * 5) }, () => value(r, depth + 1));
    default: return Object.fromEntries(Array.from({ length: Math.floor(r() * 5) }, (_, i) => [`k${i}${text()}`, value(r, depth + 1)]));
  }
}

/** Payloads like an order book that changes 1 % at a time, mixed with unrelated values. */
function payloads(seed, n) {
  const r = rng(seed);
  const book = { bids: Array.from({ length: 40 }, (_, i) => [100 - i, i * 3]), asks: Array.from({ length: 40 }, (_, i) => [101 + i, i * 2]) };
  const out = [];
  for (let i = 0; i < n; i++) {
    if (r() < 0.8) {
      const side = r() < 0.5 ? book.bids : book.asks;
      side[Math.floor(r() * side.length)][1] = Math.floor(r() * 100);
      out.push(structuredClone(book));
    } else {
      out.push(value(r));
    }
  }
  return out;
}

/** fetch that counts `"delta":true` pushes in SSE and poll bodies. */
function countingFetch(seen) {
  return async (url, init) => {
    const res = await fetch(url, init);
    if (!/\/v1\/(sse|poll)/.test(String(url)) || !res.body) return res;
    const [mine, theirs] = res.body.tee();
    (async () => {
      const reader = mine.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value: chunk, done } = await reader.read().catch(() => ({ done: true }));
        if (done) break;
        buf += dec.decode(chunk, { stream: true });
        const parts = buf.split('\n');
        buf = parts.pop();
        for (const line of parts) if (line.includes('"delta":true')) seen.deltas += 1;
      }
    })();
    return new Response(theirs, { status: res.status, statusText: res.statusText, headers: res.headers });
  };
}

/** The `ws` WebSocket, counting delta pushes and optionally dropping the `dropNth` one. */
function countingWebSocket(seen, dropNth = 0) {
  return class Counting extends WebSocket {
    send(data) {
      const m = JSON.parse(data);
      if (m.op === 'subscribe') seen.subscribes.push(m);
      if (m.op === 'connect') seen.subscribes.push(...(m.subscribe ?? []));
      super.send(data);
    }

    set onmessage(fn) {
      super.onmessage = fn && ((ev) => {
        if (typeof ev.data !== 'string') return fn(ev);
        const lines = ev.data.split('\n').filter((line) => {
          if (!line.includes('"delta":true')) return true;
          seen.deltas += 1;
          return seen.deltas !== dropNth; // a frame lost in between: a gap
        });
        if (lines.length) fn({ data: lines.join('\n') });
      });
    }

    get onmessage() {
      return super.onmessage;
    }
  };
}

describe('Fossil deltas through the SDK', () => {
  for (const transport of ['websocket', 'sse', 'poll']) {
    test(`applying the server's deltas reproduces every payload (${transport})`, { timeout: 60_000 }, async (t) => {
      for (const seed of [1, 2, 3]) {
        const ch = fresh();
        const sent = payloads(seed * 7919, 30);
        const seen = { deltas: 0, subscribes: [] };
        const c = client(t, server.addr, {
          transports: [transport], WebSocket: countingWebSocket(seen), fetch: countingFetch(seen),
        });
        const sub = c.subscribe(ch, { delta: 'fossil' });
        const got = collect(sub);
        const subscribed = next(sub, 'subscribed');
        c.connect();
        await subscribed;
        for (const data of sent) await apiPublishBody(server.addr, { channel: ch, data });
        await until(() => got.pubs.length >= sent.length, 20_000, `${sent.length} publications (seed ${seed})`);
        assert.deepEqual(got.pubs, sent, `seed ${seed}`);
        assert.deepEqual(got.offsets, sent.map((_, i) => i + 1));
        // A long-poll holds its subscriptions only while a poll is open: each
        // poll starts in full, deltas come only within one answer.
        if (transport !== 'poll') assert.ok(seen.deltas > 0, `no delta reached the ${transport} client (seed ${seed})`);
        assert.equal(got.resets.length, 0);
        c.disconnect();
      }
    });
  }

  test("the SDK's decoder refuses what does not apply, never throws", () => {
    assert.equal(applyDelta('abc', 'garbage'), null);
    assert.equal(applyDelta('abc', '3\n3@0,'), null); // no checksum
    assert.equal(applyDelta('abc', '9\n9@0,0;'), null); // copies past the source
    assert.equal(applyDelta('', ''), null);
  });

  test('a lost delta is a gap: the SDK subscribes again, with snapshot, and nothing is lost or repeated', { timeout: 30_000 }, async (t) => {
    const ch = fresh();
    const seen = { deltas: 0, subscribes: [] };
    const c = client(t, server.addr, { transports: ['websocket'], WebSocket: countingWebSocket(seen, 3) });
    const sub = c.subscribe(ch, { delta: 'fossil', snapshot: true });
    const got = collect(sub);
    const subscribed = next(sub, 'subscribed');
    c.connect();
    await subscribed;
    const sent = payloads(42, 12).map((p, i) => ({ i, p }));
    for (const data of sent) await apiPublishBody(server.addr, { channel: ch, data });
    await until(() => got.pubs.length >= sent.length, 20_000, 'every publication');
    assert.deepEqual(got.pubs, sent);
    assert.deepEqual(got.offsets, sent.map((_, i) => i + 1));
    assert.ok(seen.subscribes.length >= 2, 'subscribed again after the gap');
    const again = seen.subscribes.at(-1);
    assert.equal(again.snapshot, true);
    assert.equal(again.delta, 'fossil');
    assert.ok(again.since, 'from its position');
  });
});

describe('Snapshots through the SDK', () => {
  for (const transport of ['websocket', 'sse']) {
    test(`a position lost beyond history gets the snapshot and what follows, once, in order (${transport})`, { timeout: 30_000 }, async (t) => {
      const ch = fresh('small');
      const c = client(t, server.addr, { transports: [transport] });
      const sub = c.subscribe(ch, { delta: 'fossil' });
      const got = collect(sub);
      const snapshots = [];
      sub.on('snapshot', (p) => snapshots.push([p.offset, p.data]));
      const subscribed = next(sub, 'subscribed');
      c.connect();
      await subscribed;
      await apiPublishBody(server.addr, { channel: ch, data: { votes: { a: 0, b: 0 } }, snapshot: true });
      await apiPublishBody(server.addr, { channel: ch, data: { vote: 'a' } });
      await until(() => got.pubs.length === 1, 10_000, 'the first vote');
      // Offline while history (3) loses what it missed.
      c.disconnect();
      await apiPublishBody(server.addr, { channel: ch, data: { vote: 'b' } });
      await apiPublishBody(server.addr, { channel: ch, data: { vote: 'b' } });
      await apiPublishBody(server.addr, { channel: ch, data: { votes: { a: 1, b: 2 } }, snapshot: true });
      await apiPublishBody(server.addr, { channel: ch, data: { vote: 'a' } });
      await apiPublishBody(server.addr, { channel: ch, data: { vote: 'a' } });
      await apiPublishBody(server.addr, { channel: ch, data: { vote: 'b' } });
      c.connect();
      await connected(c, transport);
      await until(() => got.pubs.length === 4, 10_000, 'the votes after the new snapshot');
      assert.deepEqual(snapshots, [[1, { votes: { a: 0, b: 0 } }], [5, { votes: { a: 1, b: 2 } }]]);
      assert.deepEqual(got.offsets, [2, 6, 7, 8]);
      assert.deepEqual(got.pubs.slice(1), [{ vote: 'a' }, { vote: 'a' }, { vote: 'b' }]);
      assert.equal(got.resets.length, 0, 'a snapshot, not a reset');
      // And live ones continue.
      await apiPublishBody(server.addr, { channel: ch, data: { vote: 'a' } });
      await until(() => got.offsets.at(-1) === 9, 10_000, 'a live vote');
    });
  }
});

describe('MessagePack through the SDK', () => {
  test('the codec round-trips JSON values and never throws on garbage', () => {
    const r = rng(7);
    for (let i = 0; i < 300; i++) {
      const v = value(r);
      assert.deepEqual(decodeMulti(encode(v)), [JSON.parse(JSON.stringify(v))]);
    }
    const two = new Uint8Array([...encode({ a: 1 }), ...encode([2, 'x'])]);
    assert.deepEqual(decodeMulti(two), [{ a: 1 }, [2, 'x']]);
    for (let i = 0; i < 300; i++) {
      const junk = Uint8Array.from({ length: Math.floor(r() * 40) }, () => Math.floor(r() * 256));
      decodeMulti(junk);
    }
    assert.deepEqual(decodeMulti(new Uint8Array([0x92, 0x01])), [], 'truncated: nothing');
  });

  test('JSON and MessagePack clients see the same (channel, offset, data); deltas apply over both', { timeout: 30_000 }, async (t) => {
    const ch = fresh();
    const frames = { binary: 0, text: 0 };
    class Watching extends WebSocket {
      set onmessage(fn) {
        super.onmessage = fn && ((ev) => {
          frames[typeof ev.data === 'string' ? 'text' : 'binary'] += 1;
          fn(ev);
        });
      }

      get onmessage() {
        return super.onmessage;
      }
    }
    const j = client(t, server.addr, { transports: ['websocket'] });
    const m = client(t, server.addr, { transports: ['websocket'], encoding: 'msgpack', WebSocket: Watching });
    const subJ = j.subscribe(ch);
    const subM = m.subscribe(ch, { delta: 'fossil' });
    const seen = { j: [], m: [] };
    subJ.on('publication', (p) => seen.j.push([p.channel, p.offset, p.data]));
    subM.on('publication', (p) => seen.m.push([p.channel, p.offset, p.data]));
    const ready = Promise.all([next(subJ, 'subscribed'), next(subM, 'subscribed')]);
    j.connect();
    m.connect();
    await ready;
    const sent = payloads(99, 20);
    for (const [i, data] of sent.entries()) {
      if (i % 2) await m.publish(ch, data);
      else await apiPublishBody(server.addr, { channel: ch, data });
    }
    await until(() => seen.j.length === sent.length && seen.m.length === sent.length, 10_000, 'every publication on both');
    assert.deepEqual(seen.m, seen.j);
    assert.deepEqual(seen.j.map(([, , d]) => d), sent);
    assert.ok(frames.binary > 0 && frames.text === 0, `binary frames only: ${JSON.stringify(frames)}`);
  });
});

describe('permessage-deflate in Chromium', () => {
  test("Chromium's own WebSocket negotiates permessage-deflate and the demo chat works over it", { timeout: 90_000 }, async (t) => {
    const { launchChromium } = await import('./harness.mjs');
    // Dev mode with the demo; a namespace with a small threshold makes
    // every frame over 64 bytes compressed.
    const demo = await startTidings(`listen = "127.0.0.1:0"
demo = true
[namespaces.tiny]
compress_min_size = 64
`);
    t.after(() => demo.stop());
    const browser = await launchChromium();
    t.after(() => browser.close());
    const people = [];
    for (const name of [`Ada${process.pid}`, `Bo${process.pid}`]) {
      const context = await browser.newContext();
      const page = await context.newPage();
      const errors = [];
      page.on('pageerror', (e) => errors.push(e.message));
      t.after(() => assert.deepEqual(errors, []));
      const cdp = await context.newCDPSession(page);
      await cdp.send('Network.enable');
      const agreed = [];
      cdp.on('Network.webSocketHandshakeResponseReceived', (e) => {
        const h = Object.fromEntries(Object.entries(e.response.headers).map(([k, v]) => [k.toLowerCase(), v]));
        agreed.push(h['sec-websocket-extensions'] ?? '');
      });
      await page.goto(`http://${demo.addr}/`);
      await page.getByTestId('join-name').fill(name);
      await page.getByTestId('join-button').click();
      await page.locator('[data-testid=conn-state][data-state=connected]').waitFor({ timeout: 15_000 });
      people.push({ page, agreed });
    }
    for (const p of people) {
      assert.ok(p.agreed.length > 0 && p.agreed.every((e) => e.startsWith('permessage-deflate')), JSON.stringify(p.agreed));
    }
    const [ada, bo] = people;
    const text = `a long enough message to be compressed on its way to everyone ${'·'.repeat(40)}`;
    await ada.page.getByTestId('composer-input').fill(text);
    await ada.page.getByTestId('composer-send').click();
    await bo.page.getByTestId('message-text').filter({ hasText: text }).waitFor({ timeout: 15_000 });
    await bo.page.getByTestId('composer-input').fill('got it');
    await bo.page.getByTestId('composer-send').click();
    await ada.page.getByTestId('message-text').filter({ hasText: 'got it' }).waitFor({ timeout: 15_000 });
  });
});

describe('the demo poll on snapshots', () => {
  test('a page that opens after history moved on shows every vote, from the snapshot (SSE dashboard)', { timeout: 90_000 }, async (t) => {
    const { launchChromium } = await import('./harness.mjs');
    // The demo's namespace with a history of 5: twelve votes do not fit.
    const demo = await startTidings(`listen = "127.0.0.1:0"
demo = true
[namespaces.demo]
history_size = 5
history_ttl = "1h"
presence = true
join_leave = true
presence_per_user = true
max_message_size = 4096
`);
    t.after(() => demo.stop());
    const options = ['slow', 'right', 'fast'];
    for (let i = 0; i < 12; i++) {
      const res = await fetch(`http://${demo.addr}/v1/dev/token`, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: `voter${i}` }),
      });
      const { token } = await res.json();
      const c = client(t, demo.addr, { token, transports: ['websocket'] });
      const sub = c.subscribe('demo:poll');
      const subscribed = next(sub, 'subscribed');
      c.connect();
      await subscribed;
      await c.publish('demo:poll', { type: 'vote', option: options[i % 3] });
      c.disconnect();
    }
    // The server folds them into a snapshot (it looks every second).
    const { token } = await (await fetch(`http://${demo.addr}/v1/dev/token`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'observer' }),
    })).json();
    const history = async () => {
      const res = await fetch(`http://${demo.addr}/v1/client/history`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
        body: JSON.stringify({ channel: 'demo:poll' }),
      });
      const body = await res.json();
      assert.ok(res.ok, JSON.stringify(body));
      return body.publications ?? [];
    };
    const end = Date.now() + 10_000;
    while (!(await history()).some((p) => p.snapshot)) {
      assert.ok(Date.now() < end, 'a snapshot of the poll within 10 s');
      await new Promise((r) => setTimeout(r, 200));
    }
    const kept = await history();
    assert.ok(kept.length <= 5 && kept.filter((p) => !p.snapshot).length < 12, 'history no longer holds every vote');
    const browser = await launchChromium();
    t.after(() => browser.close());
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`http://${demo.addr}/dashboard.html`);
    for (const o of options) {
      try {
        await page.locator(`[data-testid=dash-result-${o}]`).filter({ hasText: /^4 · 33%$/ }).waitFor({ timeout: 15_000 });
      } catch (e) {
        const got = await page.locator('[data-testid^=dash-result-]').allTextContents();
        throw new Error(`${e.message}; the dashboard shows ${JSON.stringify(got)}; history ${JSON.stringify(await history())}`);
      }
    }
    assert.deepEqual(errors, []);
  });
});
