// The admin UI (/admin, on with `[admin] secret`) in Chromium against the
// real binary: log in (a wrong secret refused), see a connection appear,
// tail a channel while the test publishes, publish from the UI, disconnect
// a user and see them go; the session cookie's attributes; requests
// without the login's CSRF token refused. Screenshots go to artifacts/.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { API_KEY, apiPublish, launchChromium, mintToken, startTidings, until } from './harness.mjs';

const ARTIFACTS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'artifacts');
const SECRET = 'admin-test-secret-0123456789';
const TOKEN_SECRET = 'admin-test-token-secret';
const WAIT = 15_000;

let server;
let base;
let browser;

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startTidings(`listen = "127.0.0.1:0"
[auth]
token_secret = "${TOKEN_SECRET}"
api_keys = ["${API_KEY}"]
[admin]
secret = "${SECRET}"
[namespaces.room]
presence = true
history_size = 50
history_ttl = "1h"
`);
  base = `http://${server.addr}`;
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** A WebSocket client of user `user` subscribed to `channel`; collects pushes. */
async function member(user, channel) {
  const ws = new WebSocket(`ws://${server.addr}/v1/ws`, 'tidings.v1.json');
  const pushes = [];
  const closed = new Promise((resolve) => ws.on('close', (code) => resolve(code)));
  await new Promise((resolve, reject) => { ws.on('open', resolve); ws.on('error', reject); });
  const replies = new Map();
  ws.on('message', (raw) => {
    for (const line of raw.toString().split('\n').filter(Boolean)) {
      const m = JSON.parse(line);
      if (m.push) pushes.push(m); else replies.set(m.id, m);
    }
  });
  const token = mintToken(TOKEN_SECRET, { sub: user, exp: Math.floor(Date.now() / 1000) + 600 });
  ws.send(JSON.stringify({ id: 1, op: 'connect', token }));
  ws.send(JSON.stringify({ id: 2, op: 'subscribe', channel }));
  await until(() => replies.get(2), WAIT);
  assert.ok(replies.get(2).ok, JSON.stringify(replies.get(2)));
  return { ws, pushes, closed };
}

async function login(secret = SECRET) {
  return fetch(`${base}/admin/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ secret }),
  });
}

test('the login sets an HttpOnly SameSite=Strict cookie; calls need it and the CSRF token', async () => {
  const page = await fetch(`${base}/admin`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-security-policy'), /default-src 'self'/);
  assert.equal(page.headers.get('x-frame-options'), 'DENY');

  const wrong = await login('not-the-admin-secret');
  assert.equal(wrong.status, 401);
  assert.equal(wrong.headers.get('set-cookie'), null);

  const ok = await login();
  assert.equal(ok.status, 200);
  const setCookie = ok.headers.get('set-cookie');
  assert.match(setCookie, /^tidings_admin=[A-Za-z0-9]{32};/);
  for (const attr of ['HttpOnly', 'SameSite=Strict', 'Path=/admin']) assert.ok(setCookie.includes(attr), `${attr} in ${setCookie}`);
  const { csrf } = await ok.json();
  const cookie = setCookie.split(';')[0];
  const call = (headers) => fetch(`${base}/admin/api/info`, { method: 'POST', headers });

  assert.equal((await call({})).status, 401, 'no cookie');
  assert.equal((await call({ cookie })).status, 403, 'no CSRF token');
  assert.equal((await call({ cookie, 'x-csrf-token': 'x'.repeat(32) })).status, 403, 'a wrong CSRF token');
  assert.equal((await call({ 'x-csrf-token': csrf })).status, 401, 'a token without the cookie');
  const info = await call({ cookie, 'x-csrf-token': csrf });
  assert.equal(info.status, 200);
  assert.equal((await info.json()).nodes.length, 1);
  assert.equal((await fetch(`${base}/admin/tail?channel=room:x`)).status, 401, 'the tail needs the cookie');
  // The API key is not what the admin routes accept.
  assert.equal((await call({ authorization: `Bearer ${API_KEY}` })).status, 401);

  const out = await fetch(`${base}/admin/logout`, { method: 'POST', headers: { cookie, 'x-csrf-token': csrf } });
  assert.equal(out.status, 200);
  assert.match(out.headers.get('set-cookie'), /Max-Age=0/);
  assert.equal((await call({ cookie, 'x-csrf-token': csrf })).status, 401, 'logged out');
});

test('in Chromium: log in, watch a connection, tail, publish, disconnect', { timeout: 90_000 }, async (t) => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1400 } });
  t.after(() => context.close());
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${base}/admin`);

  await page.locator('#secret').fill('wrong-secret-wrong-secret');
  await page.locator('#login').click();
  await page.locator('#login-error').filter({ hasText: 'wrong secret' }).waitFor({ timeout: WAIT });
  assert.equal(await page.locator('#dashboard').isHidden(), true);

  await page.locator('#secret').fill(SECRET);
  await page.locator('#login').click();
  await page.locator('#dashboard').waitFor({ state: 'visible', timeout: WAIT });

  const [cookie] = (await context.cookies()).filter((c) => c.name === 'tidings_admin');
  assert.ok(cookie, 'the session cookie is set');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');
  assert.equal(cookie.path, '/admin');
  assert.equal(await page.evaluate(() => document.cookie.includes('tidings_admin')), false, 'scripts cannot read it');
  // The page's own origin, with the cookie, but without the CSRF token.
  assert.equal(await page.evaluate(() => fetch('/admin/api/info', { method: 'POST' }).then((r) => r.status)), 403);

  // A connection appears: the nodes table counts it, the channel is listed.
  const nodeConnections = page.locator('#nodes tbody tr td:nth-child(4)');
  await nodeConnections.filter({ hasText: /^0$/ }).waitFor({ timeout: WAIT });
  const alice = await member('alice', 'room:lobby');
  await nodeConnections.filter({ hasText: /^1$/ }).waitFor({ timeout: WAIT });
  const lobby = page.locator('#channels tbody tr', { hasText: 'room:lobby' });
  await lobby.waitFor({ timeout: WAIT });

  // Its presence and a live tail while the test publishes.
  await lobby.click();
  await page.locator('#presence tbody tr', { hasText: 'alice' }).waitFor({ timeout: WAIT });
  // Publish until the tail shows it (its stream may open a moment later).
  const tailed = page.locator('#tail li', { hasText: 'from the backend' });
  for (let i = 0; i < 50 && (await tailed.count()) === 0; i++) {
    await apiPublish(server.addr, 'room:lobby', { text: 'from the backend' });
    await page.waitForTimeout(200);
  }
  assert.ok((await tailed.count()) > 0, 'the tail shows what the backend published');
  await page.screenshot({ path: path.join(ARTIFACTS, 'admin.png'), fullPage: true });

  // Publish from the UI: alice gets it.
  await page.locator('#publish-data').fill('{"text":"from the admin"}');
  await page.locator('#publish').click();
  await page.locator('#publish-result').filter({ hasText: /published at offset \d+/ }).waitFor({ timeout: WAIT });
  await until(() => alice.pushes.some((p) => p.push === 'pub' && p.data?.text === 'from the admin'), WAIT);
  await page.locator('#tail li', { hasText: 'from the admin' }).waitFor({ timeout: WAIT });

  // The tail is a connection of this node too (an observer's).
  await nodeConnections.filter({ hasText: /^2$/ }).waitFor({ timeout: WAIT });
  // Disconnect alice: her socket closes and the count drops by her.
  await page.locator('#disconnect-user').fill('alice');
  await page.locator('#disconnect').click();
  await page.locator('#disconnect-result').filter({ hasText: 'alice was disconnected' }).waitFor({ timeout: WAIT });
  const code = await Promise.race([alice.closed, new Promise((r) => setTimeout(() => r('timeout'), WAIT))]);
  assert.equal(code, 3006);
  await nodeConnections.filter({ hasText: /^1$/ }).waitFor({ timeout: WAIT });
  // The observer is in no one's presence.
  await page.locator('#presence tbody tr', { hasText: 'alice' }).waitFor({ state: 'detached', timeout: WAIT });
  assert.equal(await page.locator('#presence tbody tr').count(), 0);

  // Log out: the dashboard goes, the login form comes back.
  await page.locator('#logout').click();
  await page.locator('#login-form').waitFor({ state: 'visible', timeout: WAIT });
  assert.deepEqual(errors, []);
});

test('without [admin] secret there is no /admin', async () => {
  const plain = await startTidings(`listen = "127.0.0.1:0"
[auth]
token_secret = "${TOKEN_SECRET}"
`);
  try {
    for (const p of ['/admin', '/admin/session', '/admin/assets/admin.js']) {
      assert.equal((await fetch(`http://${plain.addr}${p}`)).status, 404, p);
    }
    const res = await fetch(`http://${plain.addr}/admin/login`, { method: 'POST', body: JSON.stringify({ secret: SECRET }) });
    assert.ok([404, 405].includes(res.status), String(res.status));
  } finally {
    await plain.stop();
  }
});
