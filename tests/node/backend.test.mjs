// The example auction backend (examples/backend.mjs) behind Tidings'
// hooks, driven by the TypeScript SDK: the connect hook names users from
// their cookie and gives the client data; bids below the price are refused
// with the backend's code and message; an accepted bid reaches watchers as
// the backend rewrote it; signed webhooks reach the backend.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { startTidings, until } from './harness.mjs';
import { client, next } from './sdk_helpers.mjs';
import { startBackend } from '../../examples/backend.mjs';

const examples = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../examples');

let backend;
let server;
before(async () => {
  backend = await startBackend({ port: 0, log: () => {} });
  // The example's configuration, on free ports.
  const config = readFileSync(path.join(examples, 'backend.toml'), 'utf8')
    .replace(/^listen = .*$/m, 'listen = "127.0.0.1:0"')
    .replaceAll('http://127.0.0.1:9000', backend.url);
  server = await startTidings(config);
});
after(async () => {
  await server?.stop();
  await backend?.close();
});

/** A WebSocket class that sends the `session` cookie, as a signed-in browser would. */
const withCookie = (session) =>
  class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, session ? { headers: { cookie: `session=${session}` } } : {});
    }
  };

test('the hooks decide who connects, who may watch and which bids count', { timeout: 30_000 }, async (t) => {
  const alice = client(t, server.addr, { WebSocket: withCookie('alice'), transports: ['websocket'] });
  const guest = client(t, server.addr, { WebSocket: withCookie(null), transports: ['websocket'] });
  const aliceUp = next(alice, 'connected');
  const guestUp = next(guest, 'connected');
  alice.connect();
  guest.connect();
  const a = await aliceUp;
  assert.equal(a.user, 'alice');
  assert.deepEqual(a.data, { hello: 'alice' });
  assert.deepEqual((await guestUp).data, { hello: 'guest' });

  const lot = alice.subscribe('auction:lot-7');
  const watching = guest.subscribe('auction:lot-7');
  await Promise.all([next(lot, 'subscribed'), next(watching, 'subscribed')]);
  const ended = guest.subscribe('auction:ended-1');
  const refused = await next(ended, 'error');
  assert.equal(refused.code, 1404, JSON.stringify(refused));

  await assert.rejects(lot.publish({ bid: 50 }), (e) => e.code === 1001 && /more than 100/.test(e.message));
  await assert.rejects(watching.publish({ bid: 500 }), (e) => e.code === 103);
  const seen = next(watching, 'publication');
  await lot.publish({ bid: 150 });
  const p = await seen;
  assert.equal(p.data.bid, 150);
  assert.equal(p.data.user, 'alice');
  assert.ok(p.data.at > 0, 'stamped by the backend');

  // The webhooks arrived, signed (the backend drops what does not verify).
  await until(() => [...backend.events.values()].some((e) => e.event === 'member_added' && e.user === 'alice'), 10_000);
  await until(() => [...backend.events.values()].some((e) => e.event === 'client_connected' && e.user === 'alice'), 10_000);
});

test('a banned user is refused at connect with the backend\'s message, and not retried', { timeout: 30_000 }, async (t) => {
  const banned = client(t, server.addr, { WebSocket: withCookie('banned'), transports: ['websocket'] });
  const refused = next(banned, 'error');
  banned.connect();
  const e = await refused;
  assert.equal(e.code, 1403);
  assert.match(e.message, /banned/);
  // A refusal that is not temporary is not retried.
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(banned.state, 'disconnected');
});
