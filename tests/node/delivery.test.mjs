// Delivery policies through the SDK, on every transport: a subscriber that
// stalls (its event loop blocked while a backlog builds) in a `skip`
// namespace ends with every publication exactly once, in order (the gap
// notice answered by recovery); in a `latest` or `conflate` namespace it
// ends with the newest value of every key, never an older one after a
// newer one; a throttled one (`max_rate`) gets at most one value per
// interval per key and always the last; a batched one (`batch_delay`)
// every publication.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, test } from 'node:test';
import { API_KEY, apiPublishBody, startTidings, until } from './harness.mjs';
import { client, next } from './sdk_helpers.mjs';

const CONFIG = `listen = "127.0.0.1:0"
cors_origins = ["*"]
[auth]
token_secret = "delivery-test-secret"
api_keys = ["${API_KEY}"]
[client]
outbox_bytes = 262144
recovery_max = 10000
recovery_max_bytes = 67108864
ping_interval = "600s"
pong_timeout = "600s"
[namespaces.feed]
anonymous = true
history_size = 10000
history_max_bytes = 67108864
max_message_size = 16384
slow_consumer = "skip"
[namespaces.ticker]
anonymous = true
history_size = 10000
history_max_bytes = 67108864
max_message_size = 16384
delivery = "latest"
[namespaces.dash]
anonymous = true
history_size = 10000
history_max_bytes = 67108864
max_message_size = 16384
slow_consumer = "conflate"
[namespaces.rated]
anonymous = true
history_size = 1000
max_rate = 5.0
[namespaces.batched]
anonymous = true
history_size = 1000
batch_delay = "20ms"
`;

let server;
before(async () => { server = await startTidings(CONFIG); });
after(() => server?.stop());

const COUNT = 1500;

/** A counter of the server's /metrics. */
async function metric(name) {
  const text = await (await fetch(`http://${server.addr}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : 0;
}

/**
 * Publishes COUNT publications of ~8 KB into `channel` from another process,
 * while this one's event loop is blocked (spawnSync): the client reads
 * nothing meanwhile, as a frozen tab would not. Keys cycle over five.
 */
function stalledBacklog(channel) {
  // Random (incompressible) blobs: the client's WebSocket negotiates
  // permessage-deflate, and a repeated letter would compress to almost
  // nothing and never fill the socket.
  const script = `
    const { randomBytes } = await import('node:crypto');
    for (let i = 0; i < ${COUNT}; i++) {
      const blob = randomBytes(6000).toString('base64');
      const res = await fetch('http://${server.addr}/v1/api/publish', {
        method: 'POST',
        headers: { authorization: 'Bearer ${API_KEY}', 'content-type': 'application/json' },
        body: JSON.stringify({ channel: '${channel}', data: { i, blob }, key: 'k' + (i % 5) }),
      });
      if (!res.ok) { console.error(await res.text()); process.exit(1); }
    }`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { stdio: 'inherit', timeout: 120_000 });
  assert.equal(r.status, 0, 'the publisher ran');
}

for (const transport of ['websocket', 'sse', 'poll']) {
  test(`${transport}: skip — a stalled subscriber ends with every offset once`, { timeout: 120_000 }, async (t) => {
    const ch = `feed:${transport}-${Date.now()}`;
    const c = client(t, server.addr, { transports: [transport] });
    const sub = c.subscribe(ch);
    const offsets = [];
    sub.on('publication', (p) => offsets.push(p.offset));
    const resets = [];
    sub.on('reset', (r) => resets.push(r));
    const subscribed = next(sub, 'subscribed');
    c.connect();
    await subscribed;
    const gaps = await metric('tidings_gaps_total');
    stalledBacklog(ch);
    await until(() => offsets.length >= COUNT, 60_000, `all ${COUNT} publications`);
    assert.deepEqual(offsets, Array.from({ length: COUNT }, (_, i) => i + 1), 'every offset once, in order');
    assert.deepEqual(resets, [], 'nothing unrecoverable');
    // A stream held open fell behind and was skipped; a long-poll holds
    // nothing between requests, so it only ever recovers.
    if (transport !== 'poll') assert.ok(await metric('tidings_gaps_total') > gaps, 'a gap notice was sent');
  });
}

for (const [ns, policy] of [['ticker', 'latest'], ['dash', 'conflate']]) {
  for (const transport of ['websocket', 'sse', 'poll']) {
    test(`${transport}: ${policy} — a stalled subscriber ends with the newest per key`, { timeout: 120_000 }, async (t) => {
      const ch = `${ns}:${transport}-${Date.now()}`;
      const c = client(t, server.addr, { transports: [transport] });
      const sub = c.subscribe(ch);
      const last = new Map();
      let received = 0;
      let subscribedTimes = 0;
      sub.on('subscribed', () => { subscribedTimes += 1; });
      sub.on('publication', (p) => {
        received += 1;
        const prev = last.get(p.key);
        assert.ok(prev === undefined || p.offset > prev, `never older after newer (${p.key})`);
        last.set(p.key, p.offset);
      });
      const subscribed = next(sub, 'subscribed');
      c.connect();
      await subscribed;
      const conflated = await metric('tidings_conflated_total');
      stalledBacklog(ch);
      // The newest of each key: offsets COUNT-4..COUNT.
      const newest = new Map(Array.from({ length: 5 }, (_, j) => {
        const offset = COUNT - 4 + j;
        return [`k${(offset - 1) % 5}`, offset];
      }));
      await until(() => [...newest].every(([k, o]) => last.get(k) === o), 60_000, 'the newest of every key');
      assert.ok(received < COUNT, `values were skipped (${received} of ${COUNT})`);
      // Each long-poll starts anew and gets the newest per key of what it
      // missed; a stream subscribes once and keeps up by conflation.
      if (transport !== 'poll') {
        assert.equal(subscribedTimes, 1, 'offset jumps did not make it resubscribe');
        assert.ok(await metric('tidings_conflated_total') > conflated, 'queued values were replaced');
      }
    });
  }
}

/** Publishes `n` publications into `channel`, `gapMs` apart, keys cycling over `keys`. */
async function paced(channel, n, gapMs, keys) {
  for (let i = 0; i < n; i++) {
    await apiPublishBody(server.addr, { channel, data: { i }, key: `k${i % keys}` });
    await new Promise((r) => setTimeout(r, gapMs));
  }
}

for (const transport of ['websocket', 'sse', 'poll']) {
  test(`${transport}: max_rate — at most one value per interval per key, and always the last`, { timeout: 60_000 }, async (t) => {
    const ch = `rated:${transport}-${Date.now()}`;
    const c = client(t, server.addr, { transports: [transport] });
    const sub = c.subscribe(ch);
    const got = [];
    sub.on('publication', (p) => got.push({ key: p.key, offset: p.offset }));
    const subscribed = next(sub, 'subscribed');
    c.connect();
    await subscribed;
    const started = Date.now();
    const N = 40;
    await paced(ch, N, 20, 2);
    // The newest of each key: offsets N-1 (k0) and N (k1).
    await until(() => got.some((g) => g.offset === N - 1) && got.some((g) => g.offset === N), 10_000, 'the trailing values');
    const elapsed = Date.now() - started;
    for (let i = 1; i < got.length; i++) assert.ok(got[i].offset > got[i - 1].offset, 'offsets only grow');
    for (const key of ['k0', 'k1']) {
      const mine = got.filter((g) => g.key === key);
      // 5 per second per key: one per 200 ms (plus the first at once).
      assert.ok(mine.length <= Math.floor(elapsed / 200) + 1, `${key}: ${mine.length} values in ${elapsed} ms`);
    }
    assert.ok(got.length < N, `values were replaced (${got.length} of ${N})`);
  });

  test(`${transport}: batch_delay — every publication once, in order`, { timeout: 60_000 }, async (t) => {
    const ch = `batched:${transport}-${Date.now()}`;
    const c = client(t, server.addr, { transports: [transport] });
    const sub = c.subscribe(ch);
    const offsets = [];
    sub.on('publication', (p) => offsets.push(p.offset));
    const subscribed = next(sub, 'subscribed');
    c.connect();
    await subscribed;
    await paced(ch, 60, 2, 1);
    await until(() => offsets.length >= 60, 10_000, 'every publication');
    assert.deepEqual(offsets, Array.from({ length: 60 }, (_, i) => i + 1));
    // A client's own publish is answered at once: its reply is not held.
    const ack = await sub.publish({ mine: true });
    assert.equal(ack.offset, 61);
  });
}
