// Laravel Echo (npm `laravel-echo`, the pusher broadcaster, on pusher-js)
// against Tidings' Pusher endpoint, as a Laravel app's front end uses it:
// listen on a public channel, a private channel, a presence channel's
// here/joining/leaving, and whispers between clients.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import Echo from 'laravel-echo';
import Pusher from 'pusher';
import PusherClient from 'pusher-js';
import { API_KEY, startTidings } from './harness.mjs';

const APP = { appId: 'laravel', key: 'laravel-key', secret: 'laravel-secret-1' };
let server;
let backend;
before(async () => {
  server = await startTidings(`listen = "127.0.0.1:0"
[auth]
token_secret = "laravel-echo-test-secret"
api_keys = ["${API_KEY}"]
[[pusher.apps]]
id = "${APP.appId}"
key = "${APP.key}"
secret = "${APP.secret}"
client_events = true
`);
  const [host, port] = server.addr.split(':');
  backend = new Pusher({ ...APP, host, port, useTLS: false });
});
after(() => server?.stop());

/** An Echo instance for `user`, authorised as Laravel's /broadcasting/auth would. */
function echo(t, user) {
  const [host, port] = server.addr.split(':');
  const e = new Echo({
    broadcaster: 'pusher',
    Pusher: PusherClient,
    key: APP.key,
    cluster: 'mt1',
    wsHost: host,
    wsPort: Number(port),
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, cb) => cb(null, channelName.startsWith('presence-')
        ? backend.authorizeChannel(socketId, channelName, { user_id: user, user_info: { name: user } })
        : backend.authorizeChannel(socketId, channelName)),
    },
  });
  t.after(() => e.disconnect());
  return e;
}

const within = (p, ms = 10_000) => Promise.race([p, new Promise((_, reject) => setTimeout(() => reject(new Error('timed out')), ms))]);
const subscribedTo = (channel) => within(new Promise((resolve) => channel.subscribed(resolve)));

test('listen on public and private channels', { timeout: 30_000 }, async (t) => {
  const e = echo(t, 'u1');
  const news = e.channel('news');
  const orders = e.private('orders');
  await Promise.all([subscribedTo(news), subscribedTo(orders)]);
  const shipped = within(new Promise((resolve) => orders.listen('.OrderShipped', resolve)));
  const headline = within(new Promise((resolve) => news.listen('.Headline', resolve)));
  await backend.trigger('private-orders', 'OrderShipped', { order: 42 });
  await backend.trigger('news', 'Headline', { title: 'hi' });
  assert.deepEqual(await shipped, { order: 42 });
  assert.deepEqual(await headline, { title: 'hi' });
});

test('presence: here, joining, leaving', { timeout: 30_000 }, async (t) => {
  const ann = echo(t, 'ann');
  let joined;
  let left;
  const joining = new Promise((r) => { joined = r; });
  const leaving = new Promise((r) => { left = r; });
  const here = await within(new Promise((resolve) => {
    ann.join('room').here(resolve).joining(joined).leaving(left);
  }));
  assert.deepEqual(here, [{ name: 'ann' }]);
  const bob = echo(t, 'bob');
  const bobHere = await within(new Promise((resolve) => bob.join('room').here(resolve)));
  assert.deepEqual(bobHere.map((u) => u.name).sort(), ['ann', 'bob']);
  assert.deepEqual(await within(joining), { name: 'bob' });
  bob.leave('room');
  assert.deepEqual(await within(leaving), { name: 'bob' });
});

test('whispers reach the other clients', { timeout: 30_000 }, async (t) => {
  const a = echo(t, 'a');
  const b = echo(t, 'b');
  const ca = a.private('chat');
  const cb = b.private('chat');
  await Promise.all([subscribedTo(ca), subscribedTo(cb)]);
  const typing = within(new Promise((resolve) => cb.listenForWhisper('typing', resolve)));
  ca.whisper('typing', { name: 'a' });
  assert.deepEqual(await typing, { name: 'a' });
});
