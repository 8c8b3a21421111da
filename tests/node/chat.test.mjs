// Chat on members channels through the TypeScript SDK (sdk/js/dist) against
// the real binary: receipts reach the sender and a read on one device clears
// the unread count on the user's others (JSON and MessagePack, WebSocket,
// SSE and long-poll); unread counts equal a model after random publishes,
// reads and a reconnect; summary receipts of a large group; end-to-end
// encryption between four devices, with the plaintext searched for (and not
// found) in the server's files, log and API; refusals (101, 103, 104); and
// the chat demo in Chromium: ✓ sent, ✓✓ delivered, read, and a second tab's
// badge cleared by a read in the first.
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { ErrorCode, Inbox, MemoryKeyStore, TidingsError, envelopeRecipients, isEnvelope } from '../../sdk/js/dist/index.js';
import { decodeMulti } from '../../sdk/js/dist/msgpack.js';
import { API_KEY, launchChromium, mintToken, startTidings, until } from './harness.mjs';
import { client, connected, next, rng } from './sdk_helpers.mjs';

const ARTIFACTS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'artifacts');
const SECRET = 'chat-test-secret';
const CONFIG = `listen = "127.0.0.1:0"
cors_origins = ["*"]
shutdown_spread = "1s"
[auth]
token_secret = "${SECRET}"
api_keys = ["${API_KEY}"]
[channels]
history_size = 100
history_ttl = "1h"
[namespaces.dm]
members = true
history_size = 1000
history_ttl = "1h"
receipts_max_members = 100
[namespaces.big]
members = true
history_size = 1000
history_ttl = "1h"
receipts_max_members = 2
`;

let server;
before(async () => {
  // Debug logging: the E2EE test looks for plaintext in everything the server logs.
  server = await startTidings(CONFIG, { rustLog: 'info,tidings=debug,tidings_server=debug' });
});
after(async () => {
  await server?.stop();
});

let seq = 0;
/** A channel no other test uses. */
const fresh = (ns = 'dm') => `${ns}:c${process.pid}x${++seq}`;
/** User ids no other test uses. */
const users = (...names) => {
  seq += 1;
  return names.map((n) => `${n}${process.pid}x${seq}`);
};
const token = (user) => mintToken(SECRET, { sub: user, exp: Math.floor(Date.now() / 1000) + 3600, info: { name: user } });

/** Calls the server API; resolves with its answer, throws on an error status. */
async function api(method, body) {
  const res = await fetch(`http://${server.addr}/v1/api/${method}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method}: HTTP ${res.status} ${text}`);
  return JSON.parse(text);
}

/** A connected SDK client for `user`. */
function chat(t, user, opts = {}) {
  const c = client(t, server.addr, { token: token(user), ...opts });
  c.connect();
  return c;
}

/** A `ws` WebSocket that records every command the SDK sends (JSON or MessagePack). */
function recordingWebSocket(sent) {
  return class extends WebSocket {
    send(data) {
      try {
        if (typeof data === 'string') sent.push(JSON.parse(data));
        else sent.push(...decodeMulti(new Uint8Array(data)));
      } catch {
        // not ours to judge
      }
      super.send(data);
    }
  };
}

/** The conversation of `channel` in a page, or undefined. */
const conv = (page, channel) => page.conversations.find((c) => c.channel === channel);
const counts = (c) => c && { unread: c.unread, top: c.top, read: c.read };

/** A fresh ECDH P-256 public key as the directory takes it. */
async function publicKey() {
  const pair = await crypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, true, ['deriveBits']);
  return Buffer.from(await crypto.subtle.exportKey('raw', pair.publicKey)).toString('base64url');
}

/** Rejects-with-code matcher for assert.rejects. */
const code = (c) => (e) => {
  assert.ok(e instanceof TidingsError, `a TidingsError, got ${e}`);
  assert.equal(e.code, c, `code ${c}, got ${e.code}: ${e.message}`);
  return true;
};

describe('receipts and unread counts across devices', () => {
  for (const encoding of ['json', 'msgpack']) {
    test(`${encoding}: receipts reach the sender; a read on one device clears the unread count on the user's other device`, { timeout: 60_000 }, async (t) => {
      const [alice, bob] = users('alice', 'bob');
      const ch = fresh();
      await api('members/add', { channel: ch, users: [alice, bob] });
      const sentByB1 = [];
      const A = chat(t, alice, { encoding });
      const B1 = chat(t, bob, { encoding, WebSocket: recordingWebSocket(sentByB1) });
      const B2 = chat(t, bob, { encoding });
      await Promise.all([A, B1, B2].map((c) => connected(c)));
      const inboxB2 = [];
      B2.on('inbox', (e) => inboxB2.push(e));

      const subA = A.subscribe(ch, { receipts: true });
      const receiptsA = [];
      subA.on('receipt', (r) => receiptsA.push(r));
      const subB1 = B1.subscribe(ch, { receipts: true });
      const gotB1 = [];
      subB1.on('publication', (p) => gotB1.push(p.offset));
      await Promise.all([next(subA, 'subscribed'), next(subB1, 'subscribed')]);
      assert.deepEqual(await subA.members(), [alice, bob].sort());

      // A burst of publications: B1 gets them and says so, coalesced.
      const N = 20;
      const acks = await Promise.all(Array.from({ length: N }, (_, i) => subA.publish({ text: `m${i + 1}` })));
      assert.deepEqual(acks.map((a) => a.offset), Array.from({ length: N }, (_, i) => i + 1));
      await until(() => gotB1.length === N, 10_000, 'bob\'s first device gets every publication');
      await until(() => subA.deliveryState(N) === 'delivered', 10_000, 'alice sees delivered');
      assert.ok(receiptsA.some((r) => r.user === bob && r.delivered === N && r.read === 0), JSON.stringify(receiptsA));
      const cursorCmds = () => sentByB1.filter((m) => m.op === 'cursor');
      const delivered = cursorCmds().map((m) => m.delivered);
      assert.ok(delivered.length >= 1 && delivered.length < N, `${delivered.length} cursor commands for ${N} publications`);
      assert.equal(delivered.at(-1), N, 'the last update carries the highest offset');
      for (let i = 1; i < delivered.length; i++) assert.ok(delivered[i] > delivered[i - 1], `never lower: ${delivered}`);
      assert.ok(cursorCmds().every((m) => m.read === undefined && m.channel === ch));

      // Bob's other device: the inbox call shows them unread.
      assert.deepEqual(counts(conv(await B2.inbox(), ch)), { unread: N, top: N, read: 0 });
      assert.equal(conv(await B2.inbox(), ch).delivered, N);

      // Bob reads on his first device: his second one is told, alice sees read.
      const r15 = await subB1.markRead(15);
      assert.deepEqual(r15, { delivered: N, read: 15 });
      await until(() => inboxB2.some((e) => e.channel === ch && e.read === 15 && e.unread === N - 15 && e.top === N),
        10_000, 'an inbox push at bob\'s second device');
      await until(() => subA.deliveryState(15) === 'read', 10_000, 'alice sees message 15 read');
      assert.equal(subA.deliveryState(16), 'delivered');
      assert.deepEqual(await subB1.markRead(N), { delivered: N, read: N });
      const before = cursorCmds().length;
      assert.deepEqual(await subB1.markRead(3), { delivered: N, read: N }, 'a lower read changes nothing');
      assert.equal(cursorCmds().length, before, 'and sends nothing');
      await until(() => inboxB2.some((e) => e.channel === ch && e.unread === 0 && e.read === N), 10_000,
        'bob\'s second device sees the conversation read');
      assert.deepEqual(counts(conv(await B2.inbox(), ch)), { unread: 0, top: N, read: N });
      await until(() => subA.deliveryState(N) === 'read', 10_000, 'alice sees everything read');
      // What alice wrote, she has read.
      assert.deepEqual(counts(conv(await A.inbox(), ch)), { unread: 0, top: N, read: N });
      // Bob answers: alice's unread count is 1, and bob's stays 0.
      const inboxA = [];
      A.on('inbox', (e) => inboxA.push(e));
      const { offset } = await subB1.publish({ text: 'thanks' });
      assert.equal(offset, N + 1);
      await until(() => inboxA.some((e) => e.channel === ch && e.unread === 1 && e.top === N + 1), 10_000, 'alice\'s inbox push');
      assert.deepEqual(counts(conv(await A.inbox(), ch)), { unread: 1, top: N + 1, read: N });
      assert.deepEqual(counts(conv(await B2.inbox(), ch)), { unread: 0, top: N + 1, read: N + 1 });
      await until(() => subA.deliveryState(N + 1) === 'read', 10_000, 'a member\'s own message is read by them');
    });
  }

  test('over SSE and long-poll: cursor, inbox, members and keys are client actions; receipts and inbox pushes arrive on the SSE stream', { timeout: 60_000 }, async (t) => {
    const [alice, bob] = users('alice', 'bob');
    const ch = fresh();
    await api('members/add', { channel: ch, users: [alice, bob] });
    const A = chat(t, alice);
    const sse = chat(t, bob, { transports: ['sse'] });
    const poll = chat(t, bob, { transports: ['poll'] });
    const subA = A.subscribe(ch, { receipts: true });
    const subSse = sse.subscribe(ch, { receipts: true });
    const subPoll = poll.subscribe(ch);
    const sseInbox = [];
    sse.on('inbox', (e) => sseInbox.push(e));
    const sseReceipts = [];
    subSse.on('receipt', (r) => sseReceipts.push(r));
    const got = [];
    subSse.on('publication', (p) => got.push(p.offset));
    await Promise.all([connected(A, 'websocket'), connected(sse, 'sse'), connected(poll, 'poll')]);
    await Promise.all([subA, subSse, subPoll].map((s) => (s.state === 'subscribed' ? null : next(s, 'subscribed'))));

    for (let i = 1; i <= 3; i++) await subA.publish({ text: `m${i}` });
    await until(() => got.length === 3, 10_000, 'the SSE client gets the publications');
    // The SSE client's delivered cursor went over HTTP; alice hears it.
    await until(() => subA.deliveryState(3) === 'delivered', 10_000, 'alice sees delivered (from the SSE client)');

    // Client actions from the long-poll client.
    assert.deepEqual(counts(conv(await poll.inbox(), ch)), { unread: 3, top: 3, read: 0 });
    assert.deepEqual((await poll.members(ch)).users, [alice, bob].sort());
    const key = await publicKey();
    await poll.registerDeviceKey('poll-device', key);
    assert.deepEqual((await poll.deviceKeys({ users: [bob] }))[bob], [{ device: 'poll-device', key }]);
    assert.deepEqual((await A.deviceKeys({ channel: ch }))[bob], [{ device: 'poll-device', key }]);
    assert.deepEqual(await poll.cursor(ch, { read: 2 }), { delivered: 3, read: 2 });
    await until(() => subA.deliveryState(2) === 'read', 10_000, 'alice sees read (from the long-poll client)');
    assert.equal(subA.deliveryState(3), 'delivered');

    // Pushes on the SSE stream: bob's own receipt and his inbox change.
    await until(() => sseReceipts.some((r) => r.user === bob && r.read === 2), 10_000, 'a receipt event on the SSE stream');
    await until(() => sseInbox.some((e) => e.channel === ch && e.read === 2 && e.unread === 1), 10_000,
      'an inbox event on the SSE stream');
  });
});

test('unread counts are exact: random publishes and reads of three users, a disconnect and reconnect; inbox calls and pushes equal the model', { timeout: 120_000 }, async (t) => {
  const seed = Number(process.env.CHAT_SEED ?? (Date.now() % 1_000_000));
  t.diagnostic(`seed ${seed} (CHAT_SEED=${seed} replays it)`);
  const r = rng(seed);
  const pick = (list) => list[Math.floor(r() * list.length)];
  const [alice, bob, carol] = users('alice', 'bob', 'carol');
  const chans = { [fresh()]: [alice, bob], [fresh()]: [alice, carol], [fresh()]: [alice, bob, carol] };
  for (const [ch, members] of Object.entries(chans)) await api('members/add', { channel: ch, users: members });

  // Devices: alice has two; each user's first device keeps an Inbox helper.
  const devices = { [alice]: [chat(t, alice), chat(t, alice)], [bob]: [chat(t, bob)], [carol]: [chat(t, carol)] };
  const helpers = {};
  for (const [u, devs] of Object.entries(devices)) {
    helpers[u] = new Inbox(devs[0]);
    t.after(() => helpers[u].destroy());
    // Publishing needs a subscription (client_publish = "subscribers").
    for (const d of devs) for (const [ch, members] of Object.entries(chans)) if (members.includes(u)) d.subscribe(ch);
  }
  const all = Object.values(devices).flat();
  await Promise.all(all.map((c) => connected(c)));
  await until(() => all.every((c) => [...Object.keys(chans)].every((ch) => !c.getSubscription(ch) || c.getSubscription(ch).state === 'subscribed')),
    10_000, 'every subscription made');

  // The model: each channel's top, each user's cursors.
  const top = Object.fromEntries(Object.keys(chans).map((ch) => [ch, 0]));
  const cur = {};
  for (const u of [alice, bob, carol]) cur[u] = Object.fromEntries(Object.keys(chans).map((ch) => [ch, { read: 0, delivered: 0 }]));
  const raise = (u, ch, { read = 0, delivered = 0 }) => {
    const c = cur[u][ch];
    c.read = Math.max(c.read, read);
    c.delivered = Math.max(c.delivered, delivered, c.read);
  };
  const expected = (u) => Object.entries(chans).filter(([, m]) => m.includes(u)).map(([ch]) => ({
    channel: ch, unread: top[ch] - cur[u][ch].read, top: top[ch], read: cur[u][ch].read, delivered: cur[u][ch].delivered,
  })).sort((a, b) => (a.channel < b.channel ? -1 : 1));

  const publish = async (u, ch, dev) => {
    const { offset } = await dev.publish(ch, { text: `from ${u}` });
    assert.equal(offset, top[ch] + 1, 'offsets follow one another');
    top[ch] = offset;
    raise(u, ch, { read: offset });
  };

  let ops = 0;
  const step = async () => {
    ops += 1;
    const ch = pick(Object.keys(chans));
    const u = pick(chans[ch]);
    const dev = pick(devices[u]);
    const x = Math.floor(r() * (top[ch] + 1));
    const k = r();
    if (k < 0.5) {
      await publish(u, ch, dev);
    } else if (k < 0.7) {
      assert.equal((await dev.cursor(ch, { read: x })).read, Math.max(x, cur[u][ch].read));
      raise(u, ch, { read: x });
    } else if (k < 0.85) {
      await dev.markRead(ch, x);
      raise(u, ch, { read: x });
    } else {
      await dev.markDelivered(ch, x);
      raise(u, ch, { delivered: x });
    }
  };

  for (let i = 0; i < 40; i++) await step();
  // Alice's first device (with her Inbox helper) goes away; the others write
  // in every channel and she reads on it while disconnected (sent once it is
  // back); then it reconnects and its helper reads the inbox again.
  const away = devices[alice][0];
  away.disconnect();
  for (const ch of Object.keys(chans)) {
    const u = pick(chans[ch].filter((m) => m !== alice));
    await publish(u, ch, devices[u][0]);
    await publish(u, ch, devices[u][0]);
  }
  const someCh = Object.keys(chans)[0];
  const readAway = away.markRead(someCh, top[someCh] - 1);
  raise(alice, someCh, { read: top[someCh] - 1 });
  away.connect();
  await connected(away);
  await readAway;
  for (let i = 0; i < 40; i++) await step();
  t.diagnostic(`${ops} random operations`);

  for (const u of [alice, bob, carol]) {
    for (const dev of devices[u]) {
      const page = await dev.inbox({ limit: 1000 });
      const got = page.conversations.map((c) => ({ channel: c.channel, unread: c.unread, top: c.top, read: c.read, delivered: c.delivered }))
        .sort((a, b) => (a.channel < b.channel ? -1 : 1));
      assert.deepEqual(got, expected(u), `inbox of ${u}`);
      for (let i = 1; i < page.conversations.length; i++) {
        assert.ok(page.conversations[i - 1].activeAt >= page.conversations[i].activeAt, 'newest activity first');
      }
    }
    // The helper, kept by pushes (and reloaded after the reconnect).
    const want = expected(u).map(({ channel, unread, top: tp, read }) => ({ channel, unread, top: tp, read }));
    const have = () => helpers[u].conversations.map(({ channel, unread, top: tp, read }) => ({ channel, unread, top: tp, read }))
      .sort((a, b) => (a.channel < b.channel ? -1 : 1));
    try {
      await until(() => JSON.stringify(have()) === JSON.stringify(want), 10_000, `${u}'s Inbox helper`);
    } catch (e) {
      assert.deepEqual(have(), want, `${u}'s Inbox helper: ${e.message}`);
    }
  }
});

test('a group above receipts_max_members gets summary receipts; a small group per-user ones; delivery state counts the other members', { timeout: 60_000 }, async (t) => {
  const [alice, bob, carol] = users('alice', 'bob', 'carol');
  for (const ch of [fresh('big'), fresh('dm')]) {
    await api('members/add', { channel: ch, users: [alice, bob, carol] });
    const [A, B, C] = [chat(t, alice), chat(t, bob), chat(t, carol)];
    const subA = A.subscribe(ch, { receipts: true });
    const receipts = [];
    subA.on('receipt', (r) => receipts.push(r));
    const subB = B.subscribe(ch, { receipts: true });
    const subC = C.subscribe(ch, { receipts: true });
    await Promise.all([subA, subB, subC].map((s) => next(s, 'subscribed')));
    await subA.members();
    const { offset } = await subA.publish({ text: 'hello group' });
    const state = (o) => JSON.stringify(subA.deliveryState(o));
    await until(() => state(offset) === JSON.stringify({ members: 2, delivered: 2, read: 0 }), 10_000,
      `${ch}: delivered to both (${state(offset)})`);
    await subB.markRead(offset);
    await until(() => state(offset) === JSON.stringify({ members: 2, delivered: 2, read: 1 }), 10_000,
      `${ch}: read by one (${state(offset)})`);
    await subC.markRead(offset);
    await until(() => state(offset) === JSON.stringify({ members: 2, delivered: 2, read: 2 }), 10_000,
      `${ch}: read by both (${state(offset)})`);
    if (ch.startsWith('big:')) {
      assert.ok(receipts.length > 0 && receipts.every((r) => r.user === undefined && r.members === 3), JSON.stringify(receipts));
    } else {
      assert.ok(receipts.length > 0 && receipts.every((r) => typeof r.user === 'string'), JSON.stringify(receipts));
    }
  }
});

/** Every file under `dir`, recursively. */
function filesUnder(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = path.join(dir, name);
    const st = statSync(p, { throwIfNoEntry: false });
    if (!st) continue;
    if (st.isDirectory()) out.push(...filesUnder(p));
    else if (st.isFile()) out.push(p);
  }
  return out;
}

/** The files under the server's directory (data dir, config) that hold `marker`. */
function filesHolding(marker) {
  const needle = Buffer.from(marker);
  return filesUnder(server.dir).filter((f) => {
    try {
      return readFileSync(f).includes(needle);
    } catch {
      return false; // removed meanwhile (a checkpointed WAL)
    }
  });
}

test('E2EE: two users with two devices each read every message; the plaintext is nowhere on the server; a later device gets undecryptable markers', { timeout: 90_000 }, async (t) => {
  const [alice, bob] = users('alice', 'bob');
  const ch = fresh();
  await api('members/add', { channel: ch, users: [alice, bob] });
  const MARK = `e2ee-plaintext-${process.pid}-${Date.now()}`;
  const CONTROL = `not-encrypted-${process.pid}-${Date.now()}`;
  const devs = [[alice, 'a1'], [alice, 'a2'], [bob, 'b1'], [bob, 'b2']].map(([user, device]) => {
    const c = chat(t, user, { e2ee: { device, keyStore: new MemoryKeyStore() } });
    const sub = c.subscribe(ch, { encrypt: true });
    const got = [];
    const bad = [];
    sub.on('publication', (p) => got.push(p));
    sub.on('undecryptable', (p) => bad.push(p));
    return { user, device, c, sub, got, bad };
  });
  await Promise.all(devs.map((d) => connected(d.c)));
  const ids = await Promise.all(devs.map((d) => d.c.e2ee.ready()));
  assert.deepEqual(ids.map((i) => `${i.user}/${i.device}`), devs.map((d) => `${d.user}/${d.device}`));
  const dir = await devs[0].c.deviceKeys({ channel: ch });
  assert.deepEqual(Object.fromEntries(Object.entries(dir).map(([u, l]) => [u, l.map((k) => k.device).sort()])),
    { [alice]: ['a1', 'a2'], [bob]: ['b1', 'b2'] });
  await until(() => devs.every((d) => d.sub.state === 'subscribed'), 10_000, 'subscribed');

  const texts = devs.map((d) => `${MARK} from ${d.device}`);
  for (let i = 0; i < devs.length; i++) await devs[i].sub.publish({ text: texts[i] });
  await until(() => devs.every((d) => d.got.length === devs.length), 15_000, 'every device gets every message');
  for (const d of devs) {
    assert.deepEqual(d.got.map((p) => p.data?.text), texts, `${d.user}/${d.device} reads every message, in order`);
    assert.ok(d.got.every((p) => p.encrypted === true && p.undecryptable === undefined), `${d.device}: all opened`);
    assert.deepEqual(d.bad, []);
  }

  // On the wire and in history: envelopes for the four devices, no plaintext.
  const plain = chat(t, bob); // no e2ee: envelopes come as they are
  const raw = await plain.history(ch);
  assert.equal(raw.publications.length, devs.length);
  for (const p of raw.publications) {
    assert.ok(isEnvelope(p.data), 'an envelope');
    assert.deepEqual(envelopeRecipients(p.data).map((x) => `${x.user}/${x.device}`).sort(),
      [`${alice}/a1`, `${alice}/a2`, `${bob}/b1`, `${bob}/b2`]);
  }
  assert.ok(!JSON.stringify(raw).includes(MARK));
  // A subscription's history read comes opened.
  assert.deepEqual((await devs[3].sub.history()).publications.map((p) => p.data.text), texts);

  // The control: published without encryption, it is found where we look.
  await devs[0].sub.publish({ text: CONTROL }, { encrypt: false });
  const apiHistory = JSON.stringify(await api('history', { channel: ch }));
  assert.ok(apiHistory.includes(CONTROL), 'the control is in the API history answer');
  assert.ok(!apiHistory.includes(MARK), 'the encrypted plaintext is not in the API history answer');
  await until(() => filesHolding(CONTROL).length > 0, 15_000, 'the control written to the data directory');
  const files = filesUnder(server.dir);
  assert.ok(files.some((f) => f.endsWith('history.sqlite')), `the data directory holds history.sqlite: ${files}`);
  assert.deepEqual(filesHolding(MARK), [], 'no file of the server holds the plaintext');
  assert.ok(!server.stderr().includes(MARK), 'the server log does not hold the plaintext');
  t.diagnostic(`searched ${files.length} files (${files.map((f) => path.basename(f)).join(', ')}) and ${server.stderr().length} bytes of log`);

  // A device added later: the older messages were not sealed for it.
  const late = chat(t, bob, { e2ee: { device: 'b3', keyStore: new MemoryKeyStore() } });
  await connected(late);
  await late.e2ee.ready();
  const lateSub = late.subscribe(ch, { since: 'start' });
  const lateGot = [];
  const lateBad = [];
  lateSub.on('publication', (p) => lateGot.push(p));
  lateSub.on('undecryptable', (p) => lateBad.push(p));
  await until(() => lateGot.length === devs.length + 1, 10_000, 'the later device gets the history');
  assert.deepEqual(lateGot.map((p) => p.offset), [1, 2, 3, 4, 5]);
  for (const p of lateGot.slice(0, 4)) {
    assert.equal(p.data, null);
    assert.equal(p.encrypted, true);
    assert.match(p.undecryptable, /not sealed for this device/);
  }
  assert.equal(lateBad.length, 4);
  assert.deepEqual(lateGot[4].data.text, CONTROL);
  assert.equal(lateGot[4].encrypted, undefined);
  // What is sealed once the directory is read again reaches it.
  devs[0].c.e2ee.forgetKeys(ch);
  await devs[0].sub.publish({ text: 'after b3 joined' });
  await until(() => lateGot.length === 6, 10_000, 'the new message at the later device');
  assert.equal(lateGot[5].data.text, 'after b3 joined');
  assert.equal(lateGot[5].encrypted, true);
});

test('bad input through the SDK: cursor beyond the top (101), not a member (103), a key named for another user (103), malformed keys (101), too many devices (104)', { timeout: 60_000 }, async (t) => {
  const [alice, bob, carol, dave] = users('alice', 'bob', 'carol', 'dave');
  const ch = fresh();
  await api('members/add', { channel: ch, users: [alice, bob] });
  await api('publish', { channel: ch, data: { text: 'one' } });
  const A = chat(t, alice);
  const C = chat(t, carol);
  await Promise.all([connected(A), connected(C)]);

  await assert.rejects(A.cursor(ch, { read: 5 }), code(ErrorCode.BadRequest), 'read beyond the top');
  await assert.rejects(A.cursor(ch, { delivered: 2 }), code(ErrorCode.BadRequest), 'delivered beyond the top');
  await assert.rejects(A.cursor(ch, {}), code(ErrorCode.BadRequest), 'neither cursor');
  await assert.rejects(A.markRead(ch, 5), code(ErrorCode.BadRequest), 'coalesced read beyond the top');
  assert.deepEqual(await A.markRead(ch, 1), { delivered: 1, read: 1 }, 'a refused read does not hold back the next');
  await assert.rejects(A.cursor('news', { read: 0 }), code(ErrorCode.BadRequest), 'not a members namespace');
  await assert.rejects(C.cursor(ch, { read: 1 }), code(ErrorCode.PermissionDenied), 'carol is not a member');
  await assert.rejects(C.members(ch), code(ErrorCode.PermissionDenied), 'members: not a member');
  const sub = C.subscribe(ch);
  const err = await next(sub, 'error');
  assert.equal(err.code, ErrorCode.PermissionDenied, 'subscribe: not a member');
  assert.equal((await C.inbox()).conversations.length, 0);

  // A key registered under another user's name: raw WebSocket command...
  const key = await publicKey();
  const ws = new WebSocket(`ws://${server.addr}/v1/ws`, 'tidings.v1.json');
  t.after(() => ws.close());
  const replies = [];
  ws.on('message', (d) => {
    for (const line of String(d).split('\n')) if (line.trim()) replies.push(JSON.parse(line));
  });
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  ws.send(JSON.stringify({ id: 1, op: 'connect', token: token(carol) }));
  await until(() => replies.some((m) => m.id === 1), 10_000, 'connect reply');
  assert.ok(replies.find((m) => m.id === 1).ok, JSON.stringify(replies));
  ws.send(JSON.stringify({ id: 2, op: 'keys', device: 'forged', key, user: alice }));
  ws.send(JSON.stringify({ id: 3, op: 'keys', device: 'own', key, user: carol }));
  await until(() => replies.some((m) => m.id === 2) && replies.some((m) => m.id === 3), 10_000, 'keys replies');
  assert.equal(replies.find((m) => m.id === 2).error?.code, 103, `forged over WebSocket: ${JSON.stringify(replies.find((m) => m.id === 2))}`);
  assert.deepEqual(replies.find((m) => m.id === 3).ok, {}, 'naming oneself is allowed');
  // ... and the HTTP client action.
  const res = await fetch(`http://${server.addr}/v1/client/keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token(carol)}`, 'content-type': 'application/json' },
    body: JSON.stringify({ device: 'forged2', key, user: alice }),
  });
  const body = await res.json();
  assert.equal(res.status, 403, JSON.stringify(body));
  assert.equal(body.error?.code, 103);
  assert.equal((await A.deviceKeys({ users: [alice] }))[alice], undefined, 'alice has no key');
  assert.deepEqual((await A.deviceKeys({ users: [carol] }))[carol], [{ device: 'own', key }]);

  await assert.rejects(A.registerDeviceKey('d1', 'not-a-key'), code(ErrorCode.BadRequest), 'malformed key');
  await assert.rejects(A.registerDeviceKey('d1', key.slice(0, 40)), code(ErrorCode.BadRequest), 'short key');
  await assert.rejects(A.registerDeviceKey('bad device!', key), code(ErrorCode.BadRequest), 'bad device id');
  const D = chat(t, dave);
  await connected(D);
  for (let i = 0; i < 16; i++) await D.registerDeviceKey(`d${i}`, key);
  await D.registerDeviceKey('d3', await publicKey()); // replaces, no new device
  await assert.rejects(D.registerDeviceKey('d16', key), code(ErrorCode.LimitExceeded), 'a 17th device');
  assert.equal((await D.deviceKeys({ users: [dave] }))[dave].length, 16);
});

describe('the chat demo in Chromium', () => {
  const WAIT = 15_000;
  let demo;
  let browser;
  let base;
  before(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    demo = await startTidings(null); // dev mode: the demo, /v1/dev/token and /v1/dev/dm
    base = `http://${demo.addr}`;
    browser = await launchChromium();
  });
  after(async () => {
    await browser?.close();
    await demo?.stop();
  });

  /** A page of the chat demo signed in as `name` (a second tab of a context signs in by itself). */
  async function signIn(t, context, name, { secondTab = false } = {}) {
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    t.after(() => assert.deepEqual(errors, [], `no uncaught errors in ${name}'s page`));
    await page.goto(`${base}/chat.html`);
    if (!secondTab) {
      await page.getByTestId('signin-name').fill(name);
      await page.getByTestId('signin-button').click();
    }
    // A failed sign-in shows as its uncaught error rather than a timeout.
    const failed = new Promise((_, reject) => page.once('pageerror', reject));
    failed.catch(() => undefined);
    await Promise.race([page.locator('[data-testid=conn-state][data-state=connected]').waitFor({ timeout: WAIT }), failed]);
    return page;
  }

  const stateOf = (page, offset) => page.locator(`[data-testid=message][data-mine=true][data-offset="${offset}"]`)
    .getAttribute('data-state', { timeout: WAIT });
  async function eventually(fn, want, what) {
    const end = Date.now() + WAIT;
    let got;
    for (;;) {
      got = await fn();
      if (JSON.stringify(got) === JSON.stringify(want)) return;
      if (Date.now() > end) throw new Error(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  test('sent, then delivered when bob opens the page, then read when he opens the conversation; his other tab\'s badge clears', { timeout: 120_000 }, async (t) => {
    const run = `${process.pid}${Date.now() % 10000}`;
    const aliceName = `Alice${run}`;
    const bobName = `Bob${run}`;
    const ctxA = await browser.newContext({ viewport: { width: 1200, height: 800 } });
    const ctxB = await browser.newContext({ viewport: { width: 1200, height: 800 } });
    t.after(() => ctxA.close());
    t.after(() => ctxB.close());

    const A = await signIn(t, ctxA, aliceName);
    await A.getByTestId('new-chat-name').fill(bobName);
    await A.getByTestId('new-chat-button').click();
    const view = A.getByTestId('conversation-view');
    await eventually(async () => ((await view.getAttribute('data-channel')) ?? '').startsWith('dm:'), true, 'the conversation opens');
    const channel = await view.getAttribute('data-channel');
    await A.getByTestId('composer-input').fill('Hello Bob, are you there?');
    await A.getByTestId('composer-send').click();
    // Bob has no page open: sent, not delivered.
    await eventually(() => stateOf(A, 1), 'sent', 'alice sees ✓');
    assert.equal(await A.locator('[data-testid=message][data-offset="1"] [data-testid=message-ticks]').textContent(), '✓');
    await A.screenshot({ path: path.join(ARTIFACTS, 'chat-sent.png') });

    // Bob opens the page: his inbox lists the conversation, unread, and
    // marks it delivered.
    const B = await signIn(t, ctxB, bobName);
    const row = (page) => page.locator(`[data-testid=conversation][data-channel="${channel}"]`);
    await row(B).waitFor({ timeout: WAIT });
    await eventually(() => row(B).getByTestId('unread-badge').getAttribute('data-count'), '1', 'bob\'s badge');
    await eventually(() => stateOf(A, 1), 'delivered', 'alice sees ✓✓');
    assert.equal(await A.locator('[data-testid=message][data-offset="1"] [data-testid=message-ticks]').textContent(), '✓✓');

    // A second tab of bob's, open before he reads.
    const B2 = await signIn(t, ctxB, bobName, { secondTab: true });
    await eventually(() => row(B2).getByTestId('unread-badge').getAttribute('data-count'), '1', 'bob\'s second tab badge');
    await eventually(() => stateOf(A, 1), 'delivered', 'still delivered, not read');

    // Bob opens the conversation: read at alice, the badge clears in both tabs.
    await row(B).click();
    await eventually(() => B.getByTestId('message-text').allTextContents(), ['Hello Bob, are you there?'], 'bob sees the message');
    await eventually(() => stateOf(A, 1), 'read', 'alice sees read');
    assert.match(await A.locator('[data-testid=message][data-offset="1"] [data-testid=message-ticks]').textContent(), /✓✓.*read/);
    await eventually(() => row(B2).getByTestId('unread-badge').getAttribute('data-count'), '0', 'the second tab\'s badge clears');
    await eventually(() => row(B).getByTestId('unread-badge').getAttribute('data-count'), '0', 'the first tab\'s badge clears');
    await A.screenshot({ path: path.join(ARTIFACTS, 'chat-read.png') });

    // Bob is online in the conversation, and typing shows at alice.
    await eventually(() => A.getByTestId('peer-status').textContent(), 'online', 'alice sees bob online');
    await B.getByTestId('composer-input').pressSequentially('typing', { delay: 30 });
    await eventually(async () => /is typing/.test(await A.getByTestId('typing').textContent()), true, 'alice sees bob typing');

    // An encrypted message: shown decrypted, with a lock, on both sides; the
    // server keeps ciphertext.
    await A.getByTestId('encrypt-toggle').check();
    await A.getByTestId('composer-input').fill('This one is sealed');
    await A.getByTestId('composer-send').click();
    const sealedAt = (page) => page.locator('[data-testid=message][data-offset="2"]');
    await eventually(() => sealedAt(B).getByTestId('message-text').textContent(), 'This one is sealed', 'bob reads the sealed message');
    assert.equal(await sealedAt(B).getAttribute('data-encrypted'), 'true');
    assert.equal(await sealedAt(A).getAttribute('data-encrypted'), 'true');
    assert.equal(await sealedAt(A).getByTestId('message-lock').count(), 1);
    await eventually(() => stateOf(A, 2), 'read', 'the sealed message is read (bob has the conversation open)');
    const token = await (await fetch(`${base}/v1/dev/token`, { method: 'POST', body: JSON.stringify({ name: aliceName }) })).json();
    const hist = await (await fetch(`${base}/v1/client/history`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ channel }),
    })).json();
    assert.equal(hist.publications.length, 2, JSON.stringify(hist));
    assert.ok(isEnvelope(hist.publications[1].data), 'the server holds an envelope');
    assert.ok(!JSON.stringify(hist).includes('This one is sealed'));
    await B.screenshot({ path: path.join(ARTIFACTS, 'chat-encrypted.png') });
  });
});

// The two SDKs read each other's envelopes: an envelope the Rust SDK sealed
// (tests/node/fixtures, made by tidings_client::e2ee for a device whose
// key pair the TypeScript SDK made) opens here. The other way round is the
// Rust SDK's `opens_what_the_typescript_sdk_sealed`.
test('the TypeScript SDK opens what the Rust SDK sealed', async () => {
  const { E2ee } = await import('../../sdk/js/dist/e2ee.js');
  const here = path.dirname(fileURLToPath(import.meta.url));
  const fx = JSON.parse(readFileSync(path.join(here, 'fixtures/e2ee_from_rust.json'), 'utf8'));
  // The recipient device, from its private key and its public point.
  const point = Buffer.from(fx.recipient.key, 'base64url');
  const privateJwk = {
    kty: 'EC', crv: 'P-256', d: fx.recipient.d, ext: true, key_ops: ['deriveBits'],
    x: point.subarray(1, 33).toString('base64url'), y: point.subarray(33, 65).toString('base64url'),
  };
  const store = new MemoryKeyStore();
  store.set('tidings-e2ee:bob:phone', JSON.stringify({ v: 1, device: 'phone', publicKey: fx.recipient.key, privateJwk }));
  // The key directory as the server would answer it.
  const host = {
    currentUser: async () => 'bob',
    registerDeviceKey: async () => {},
    deviceKeys: async () => ({ alice: [{ device: fx.sender.device, key: fx.sender.key }] }),
  };
  const bob = new E2ee(host, { device: 'phone', keyStore: store });
  const opened = await bob.open({ channel: fx.channel, offset: 1, data: fx.envelope, info: { client: 'c', user: 'alice' } });
  assert.equal(opened.undecryptable, undefined);
  assert.deepEqual(opened.data, fx.plaintext);
  // Bound to its channel and sender: elsewhere it does not open.
  const moved = await bob.open({ channel: 'dm:other', offset: 1, data: fx.envelope, info: { client: 'c', user: 'alice' } });
  assert.ok(moved.undecryptable);
});
