// Pusher's HTTP API, driven by the official `pusher` server SDK (npm):
// events and batches reach Tidings subscribers of the mapped channel,
// channel and user queries parse, terminating a user's connections closes
// them, and a wrong secret is refused. Pusher WebSocket clients are not
// served yet: the subscribers here are the Tidings SDK's.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import Pusher from 'pusher';
import { API_KEY, mintToken, startTidings } from './harness.mjs';
import { client, next } from './sdk_helpers.mjs';

const SECRET = 'pusher-api-test-secret';
const CONFIG = `listen = "127.0.0.1:0"
[auth]
token_secret = "${SECRET}"
api_keys = ["${API_KEY}"]
[[pusher.apps]]
id = "app-id"
key = "app-key"
secret = "app-secret-123"
`;

let server;
let pusher;
before(async () => {
  server = await startTidings(CONFIG);
  const [host, port] = server.addr.split(':');
  pusher = new Pusher({ appId: 'app-id', key: 'app-key', secret: 'app-secret-123', host, port, useTLS: false });
});
after(() => server?.stop());

const token = (user) => mintToken(SECRET, { sub: user, exp: Math.floor(Date.now() / 1000) + 3600 });

test('events and batches from the Pusher SDK reach subscribers of pusher:<channel>', { timeout: 30_000 }, async (t) => {
  const c = client(t, server.addr, { token: token('alice'), transports: ['websocket'] });
  c.connect();
  const news = c.subscribe('pusher:news');
  const alerts = c.subscribe('pusher:alerts');
  await Promise.all([next(news, 'subscribed'), next(alerts, 'subscribed')]);

  const got = next(news, 'publication');
  const res = await pusher.trigger('news', 'headline', { title: 'hello' });
  assert.equal(res.status, 200);
  const p = await got;
  assert.equal(p.data.event, 'headline');
  assert.deepEqual(JSON.parse(p.data.data), { title: 'hello' });

  // Several channels at once, with their info.
  const both = Promise.all([next(news, 'publication'), next(alerts, 'publication')]);
  const multi = await pusher.trigger(['news', 'alerts'], 'flash', 'plain text', { info: 'subscription_count' });
  const body = await multi.json();
  assert.deepEqual(body, { channels: { news: { subscription_count: 1 }, alerts: { subscription_count: 1 } } });
  for (const p of await both) assert.deepEqual(p.data, { event: 'flash', data: 'plain text' });

  const batch = Promise.all([next(news, 'publication'), next(alerts, 'publication')]);
  const b = await pusher.triggerBatch([
    { channel: 'news', name: 'one', data: { n: 1 } },
    { channel: 'alerts', name: 'two', data: { n: 2 } },
  ]);
  assert.equal(b.status, 200);
  const [one, two] = await batch;
  assert.equal(one.data.event, 'one');
  assert.equal(two.data.event, 'two');
});

test('channel queries answer as Pusher does', { timeout: 30_000 }, async (t) => {
  const alice = client(t, server.addr, { token: token('alice'), transports: ['websocket'] });
  const bob = client(t, server.addr, { token: token('bob'), transports: ['websocket'] });
  alice.connect();
  bob.connect();
  const subs = [alice.subscribe('pusher:hall'), bob.subscribe('pusher:hall'), alice.subscribe('pusher:lobby')];
  await Promise.all(subs.map((s) => next(s, 'subscribed')));

  const list = await (await pusher.get({ path: '/channels' })).json();
  assert.ok('hall' in list.channels && 'lobby' in list.channels, JSON.stringify(list));
  const hall = await (await pusher.get({ path: '/channels/hall', params: { info: 'subscription_count' } })).json();
  assert.deepEqual(hall, { occupied: true, subscription_count: 2 });
  const empty = await (await pusher.get({ path: '/channels/nobody-here' })).json();
  assert.deepEqual(empty, { occupied: false });
  // user_count is for presence channels (Pusher's rule).
  await assert.rejects(pusher.get({ path: '/channels/hall', params: { info: 'user_count' } }), (e) => e.status === 400);

  // A private Pusher channel is no open door for Tidings clients: they need
  // a channel token, as in any private namespace.
  const sneaky = alice.subscribe('pusher:private-orders');
  const refused = await next(sneaky, 'error');
  assert.equal(refused.code, 103, JSON.stringify(refused));
});

test('terminating a user\'s connections closes them', { timeout: 30_000 }, async (t) => {
  const carol = client(t, server.addr, { token: token('carol'), transports: ['websocket'] });
  const up = next(carol, 'connected');
  carol.connect();
  await up;
  const gone = next(carol, 'disconnected');
  const res = await pusher.terminateUserConnections('carol');
  assert.equal(res.status, 200);
  assert.equal((await gone).code, 3502);
});

test('a wrong secret, a bad body and an unknown app are refused with Pusher\'s statuses', { timeout: 30_000 }, async () => {
  const [host, port] = server.addr.split(':');
  const wrong = new Pusher({ appId: 'app-id', key: 'app-key', secret: 'not-the-secret', host, port, useTLS: false });
  await assert.rejects(wrong.trigger('news', 'x', {}), (e) => e.status === 401 && /signature/.test(e.body));
  const unknown = new Pusher({ appId: 'other-app', key: 'app-key', secret: 'app-secret-123', host, port, useTLS: false });
  await assert.rejects(unknown.trigger('news', 'x', {}), (e) => e.status === 404);
  await assert.rejects(pusher.trigger('bad;name', 'x', {}), (e) => e.status === 400);
  await assert.rejects(pusher.trigger('news', 'x', 'y'.repeat(20_000)), (e) => e.status === 413);
  await assert.rejects(pusher.get({ path: '/channels/lobby/users' }), (e) => e.status === 400);
});
