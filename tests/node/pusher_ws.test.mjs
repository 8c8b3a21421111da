// pusher-js (npm, the official client, in Node) against Tidings' Pusher
// endpoint: public, private and presence channels authorised through the
// official `pusher` server SDK, events from the Pusher API and from
// Tidings' own API, client events between clients, socket exclusion, and
// the errors Pusher clients expect.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, test } from 'node:test';
import Pusher from 'pusher';
import PusherClient from 'pusher-js';
import nacl from 'tweetnacl';
import { API_KEY, apiPublish, startProxy, startTidings, until } from './harness.mjs';

const APP = { appId: 'app-id', key: 'app-key', secret: 'app-secret-123' };
const config = (hooks) => `listen = "127.0.0.1:0"
[auth]
token_secret = "pusher-ws-test-secret"
api_keys = ["${API_KEY}"]
[webhooks]
batch_window = "20ms"
[[pusher.apps]]
id = "${APP.appId}"
key = "${APP.key}"
secret = "${APP.secret}"
client_events = true
webhook_url = "${hooks}"
webhook_events = ["channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event"]
`;

let server;
let backend;
let receiver;
// Webhooks as the app's backend gets them, checked by the official SDK.
const webhooks = [];
let badWebhooks = 0;
before(async () => {
  receiver = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const hook = backend.webhook({ headers: req.headers, rawBody: Buffer.concat(chunks).toString() });
      if (hook.isValid()) webhooks.push(...hook.getEvents());
      else badWebhooks += 1;
      res.writeHead(200).end();
    });
  });
  await new Promise((r) => receiver.listen(0, '127.0.0.1', r));
  server = await startTidings(config(`http://127.0.0.1:${receiver.address().port}/pusher`));
  const [host, port] = server.addr.split(':');
  // The master key lets the SDK hand out per-channel secrets for
  // private-encrypted channels (the server never sees plaintext).
  backend = new Pusher({ ...APP, host, port, useTLS: false, encryptionMasterKeyBase64: Buffer.alloc(32, 7).toString('base64') });
});
after(async () => {
  await server?.stop();
  receiver?.close();
});

/** A pusher-js client (through `via`, default the server itself); `user`
 * signs presence subscriptions and sign-ins as that user. */
function client(t, user = null, via = server.addr) {
  const [host, port] = via.split(':');
  const c = new PusherClient(APP.key, {
    nacl, // for private-encrypted channels
    cluster: 'mt1',
    wsHost: host,
    wsPort: Number(port),
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    userAuthentication: {
      // The app's user endpoint, in process: the server SDK signs `user`.
      customHandler: ({ socketId }, callback) => callback(null, backend.authenticateUser(socketId, { id: user ?? 'nobody' })),
    },
    channelAuthorization: {
      // The app's auth endpoint, in process: the official server SDK signs.
      customHandler: ({ socketId, channelName }, callback) => {
        const presence = channelName.startsWith('presence-');
        callback(null, presence
          ? backend.authorizeChannel(socketId, channelName, { user_id: user, user_info: { name: user } })
          : backend.authorizeChannel(socketId, channelName));
      },
    },
  });
  t.after(() => c.disconnect());
  return c;
}

const once = (emitter, event, ms = 10_000) => new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`timed out waiting for ${event}`)), ms);
  emitter.bind(event, function handler(data) {
    clearTimeout(timer);
    emitter.unbind(event, handler);
    resolve(data);
  });
});

const subscribed = (c, name) => {
  const channel = c.subscribe(name);
  return once(channel, 'pusher:subscription_succeeded').then((data) => ({ channel, data }));
};

test('public channels get events from the Pusher API and from Tidings\' own API', { timeout: 30_000 }, async (t) => {
  const c = client(t);
  const { channel } = await subscribed(c, 'news');
  const got = once(channel, 'headline');
  await backend.trigger('news', 'headline', { title: 'hello' });
  assert.deepEqual(await got, { title: 'hello' });
  // The same channel is `pusher:news` for Tidings' API and clients.
  const fromTidings = once(channel, 'update');
  await apiPublish(server.addr, 'pusher:news', { event: 'update', data: JSON.stringify({ n: 1 }) });
  assert.deepEqual(await fromTidings, { n: 1 });
});

test('private channels need the app\'s signature', { timeout: 30_000 }, async (t) => {
  const c = client(t);
  const { channel } = await subscribed(c, 'private-orders');
  const got = once(channel, 'created');
  await backend.trigger('private-orders', 'created', { id: 7 });
  assert.deepEqual(await got, { id: 7 });

  // A forged signature is refused.
  const [host, port] = server.addr.split(':');
  const forger = new PusherClient(APP.key, {
    cluster: 'mt1', wsHost: host, wsPort: Number(port), forceTLS: false, enabledTransports: ['ws'],
    channelAuthorization: { customHandler: (_p, cb) => cb(null, { auth: `${APP.key}:${'0'.repeat(64)}` }) },
  });
  t.after(() => forger.disconnect());
  const error = once(forger.subscribe('private-orders'), 'pusher:subscription_error');
  assert.equal((await error).status, 401);
});

test('private-encrypted channels carry what only the clients can read', { timeout: 30_000 }, async (t) => {
  const c = client(t);
  const { channel } = await subscribed(c, 'private-encrypted-vault');
  const got = once(channel, 'secret');
  // The SDK encrypts with the channel's key; Tidings passes the ciphertext on.
  await backend.trigger('private-encrypted-vault', 'secret', { pin: 1234 });
  assert.deepEqual(await got, { pin: 1234 });
});

test('presence channels list members and tell who comes and goes', { timeout: 30_000 }, async (t) => {
  const ann = client(t, 'ann');
  const { channel: annRoom, data } = await subscribed(ann, 'presence-room');
  assert.equal(data.count, 1);
  assert.equal(annRoom.members.me.id, 'ann');
  const added = once(annRoom, 'pusher:member_added');
  const bob = client(t, 'bob');
  const { data: bobView } = await subscribed(bob, 'presence-room');
  assert.equal(bobView.count, 2);
  assert.deepEqual(Object.keys(bobView.members).sort(), ['ann', 'bob']);
  const member = await added;
  assert.equal(member.id, 'bob');
  assert.deepEqual(member.info, { name: 'bob' });
  const users = await (await backend.get({ path: '/channels/presence-room/users' })).json();
  assert.deepEqual(users.users.map((u) => u.id).sort(), ['ann', 'bob']);
  const room = await (await backend.get({ path: '/channels/presence-room', params: { info: 'user_count,subscription_count' } })).json();
  assert.deepEqual(room, { occupied: true, user_count: 2, subscription_count: 2 });
  const rooms = await (await backend.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } })).json();
  assert.deepEqual(rooms.channels['presence-room'], { user_count: 2 });
  const removed = once(annRoom, 'pusher:member_removed');
  bob.disconnect();
  assert.equal((await removed).id, 'bob');
});

test('client events reach the other subscribers, not the sender; only on private channels', { timeout: 30_000 }, async (t) => {
  const a = client(t, 'a');
  const b = client(t, 'b');
  const { channel: ca } = await subscribed(a, 'private-chat');
  const { channel: cb } = await subscribed(b, 'private-chat');
  let echoed = false;
  ca.bind('client-typing', () => { echoed = true; });
  const got = once(cb, 'client-typing');
  assert.ok(ca.trigger('client-typing', { who: 'a' }));
  assert.deepEqual(await got, { who: 'a' });

  // In a presence channel the event says who sent it.
  const { channel: pa } = await subscribed(a, 'presence-chat');
  const { channel: pb } = await subscribed(b, 'presence-chat');
  const fromA = new Promise((resolve) => pb.bind('client-wave', (data, meta) => resolve(meta)));
  pa.trigger('client-wave', {});
  assert.equal((await fromA).user_id, 'a');

  // A public channel refuses client events with pusher:error.
  const { channel: pub } = await subscribed(a, 'lobby');
  const refused = once(a.connection, 'error');
  pub.trigger('client-x', {});
  const e = await refused;
  assert.match(JSON.stringify(e), /private and presence/);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(echoed, false, 'the sender does not get its own client event');
});

test('an API event with socket_id skips that socket', { timeout: 30_000 }, async (t) => {
  const a = client(t);
  const b = client(t);
  const { channel: ca } = await subscribed(a, 'feed');
  const { channel: cb } = await subscribed(b, 'feed');
  let aGot = 0;
  ca.bind('tick', () => { aGot += 1; });
  const bGot = once(cb, 'tick');
  await backend.trigger('feed', 'tick', { n: 1 }, { socket_id: a.connection.socket_id });
  assert.deepEqual(await bGot, { n: 1 });
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(aGot, 0);
});

test('signed-in users get events sent to them, on any of their connections', { timeout: 30_000 }, async (t) => {
  const phone = client(t, 'zoe');
  const laptop = client(t, 'zoe');
  const other = client(t, 'yan');
  for (const c of [phone, laptop, other]) c.signin();
  await Promise.all([phone, laptop, other].map(async (c) => {
    await c.user.signinDonePromise;
    await once(c.user.serverToUserChannel, 'pusher:subscription_succeeded');
  }));
  let yanGot = 0;
  other.user.bind('notice', () => { yanGot += 1; });
  const both = Promise.all([phone, laptop].map((c) => new Promise((resolve) => c.user.bind('notice', resolve))));
  await backend.sendToUser('zoe', 'notice', { text: 'hi zoe' });
  assert.deepEqual(await both, [{ text: 'hi zoe' }, { text: 'hi zoe' }]);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(yanGot, 0);
});

test('after a TCP cut pusher-js reconnects, resubscribes and gets what comes next', { timeout: 60_000 }, async (t) => {
  const proxy = await startProxy(server.addr);
  t.after(() => proxy.close());
  const c = client(t, null, proxy.addr);
  const { channel } = await subscribed(c, 'after-cut');
  const back = new Promise((resolve) => {
    c.connection.bind('state_change', ({ current }) => { if (current === 'connected') resolve(); });
  });
  const resubscribed = once(channel, 'pusher:subscription_succeeded', 30_000);
  assert.ok(proxy.cut() > 0);
  await back;
  await resubscribed;
  const got = once(channel, 'next');
  await backend.trigger('after-cut', 'next', { n: 1 });
  assert.deepEqual(await got, { n: 1 });
});

test('an unknown app key is refused with 4001', { timeout: 30_000 }, async (t) => {
  const [host, port] = server.addr.split(':');
  const c = new PusherClient('no-such-key', { cluster: 'mt1', wsHost: host, wsPort: Number(port), forceTLS: false, enabledTransports: ['ws'] });
  t.after(() => c.disconnect());
  const error = await once(c.connection, 'error');
  assert.equal(error.data?.code ?? error.error?.data?.code, 4001, JSON.stringify(error));
});

test('webhooks in Pusher\'s format, signed with the app\'s secret', { timeout: 30_000 }, async () => {
  // From the tests above: presence-room was occupied, ann and bob came,
  // bob left; a client event went through private-chat.
  const has = (pred) => webhooks.some(pred);
  await until(() => has((e) => e.name === 'member_removed' && e.channel === 'presence-room' && e.user_id === 'bob'), 10_000, 'member_removed');
  await until(() => has((e) => e.name === 'client_event' && e.channel === 'private-chat' && e.event === 'client-typing'), 10_000, 'client_event');
  assert.ok(has((e) => e.name === 'channel_occupied' && e.channel === 'presence-room'));
  assert.ok(has((e) => e.name === 'member_added' && e.channel === 'presence-room' && e.user_id === 'ann'));
  const typing = webhooks.find((e) => e.name === 'client_event' && e.event === 'client-typing');
  assert.deepEqual(JSON.parse(typing.data), { who: 'a' });
  assert.match(typing.socket_id, /^\d+\.\d+$/);
  assert.equal(badWebhooks, 0, 'every webhook verifies with the SDK');
});
