// The demo in Chromium against a real binary in dev mode: two people chat;
// one goes offline, writes three messages, comes back, and both see them
// once, in order; with /v1/ws refused the SDK falls back to SSE and the chat
// still works; a refused send keeps its text in the composer; Q&A, the poll
// and the SSE-only dashboard. Screenshots go to tests/node/artifacts/.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { launchChromium, startTidings } from './harness.mjs';

const ARTIFACTS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'artifacts');
const WAIT = 15_000;

let server;
let browser;
let base;

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startTidings(null); // dev mode: no secret, demo on, /v1/dev/token
  base = `http://${server.addr}`;
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** A person in their own browser context (own storage), joined to the class. */
async function person(t, name, { blockWs = false, connected = true, setup = null } = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  t.after(() => context.close());
  if (blockWs) {
    // As a proxy that does not let WebSockets through: the socket is closed
    // before the server ever sees it.
    await context.routeWebSocket(/\/v1\/ws/, (ws) => ws.close());
  }
  if (setup) await setup(context);
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  t.after(() => assert.deepEqual(errors, [], `no uncaught errors in ${name}'s page`));
  await page.goto(`${base}/`);
  await page.getByTestId('join-name').fill(name);
  await page.getByTestId('join-button').click();
  if (connected) await page.locator('[data-testid=conn-state][data-state=connected]').waitFor({ timeout: WAIT });
  else await page.getByTestId('composer-input').waitFor({ timeout: WAIT });
  return { context, page, name };
}

/** The texts of the chat messages, in page order. */
const texts = (page) => page.getByTestId('message-text').allTextContents();

/** How many of the page's own messages still wait for the server. */
const sending = (page) => page.locator('[data-testid=message][data-status=sending]').count();

/** Waits until `fn(page)` deep-equals `want`. */
async function eventually(page, fn, want, what) {
  const end = Date.now() + WAIT;
  let got;
  for (;;) {
    got = await fn(page);
    try {
      assert.deepEqual(got, want);
      return;
    } catch (e) {
      if (Date.now() > end) throw new Error(`${what}: ${e.message}`);
    }
    await page.waitForTimeout(100);
  }
}

/** How many entries the SDK's IndexedDB outbox of `user` holds. */
function storedEntries(page, user) {
  return page.evaluate((name) => new Promise((resolve) => {
    // Same version and schema as the SDK, so this never creates a store-less database.
    const req = indexedDB.open(`tidings-outbox:${name}`, 1);
    req.onupgradeneeded = () => req.result.createObjectStore('entries', { keyPath: 'key' });
    req.onerror = () => resolve(-1);
    req.onsuccess = () => {
      const db = req.result;
      const count = db.transaction('entries', 'readonly').objectStore('entries').count();
      count.onsuccess = () => { db.close(); resolve(count.result); };
      count.onerror = () => { db.close(); resolve(-1); };
    };
  }), user);
}

async function send(page, text) {
  await page.getByTestId('composer-input').fill(text);
  await page.getByTestId('composer-send').click();
}

const run = `r${process.pid}`;

test('two people chat; offline sends arrive once, in order, on both sides', { timeout: 90_000 }, async (t) => {
  const alice = await person(t, `Alice-${run}`);
  const bob = await person(t, `Bob-${run}`);
  await eventually(alice.page, (p) => p.getByTestId('person').count(), 2, 'alice sees two people');

  const before = await texts(alice.page);
  await send(alice.page, 'Good morning, everyone');
  // Bob answers once Alice's message is through (acknowledged at Alice, shown
  // at Bob): two browsers publishing at once have no order.
  const first = [...before, 'Good morning, everyone'];
  await eventually(alice.page, sending, 0, 'alice\'s message acknowledged');
  await eventually(alice.page, texts, first, 'alice sees her message');
  await eventually(bob.page, texts, first, 'bob sees alice\'s message');
  await send(bob.page, 'Morning Alice!');
  const hello = [...first, 'Morning Alice!'];
  await eventually(alice.page, texts, hello, 'alice sees the chat');
  await eventually(bob.page, texts, hello, 'bob sees the chat');
  await alice.page.screenshot({ path: path.join(ARTIFACTS, 'lobby.png') });

  // Bob loses the network and writes three messages.
  await bob.context.setOffline(true);
  await bob.page.locator('[data-testid=conn-state]:not([data-state=connected])').waitFor({ timeout: WAIT });
  for (const m of ['offline one', 'offline two', 'offline three']) await send(bob.page, m);
  await eventually(bob.page, (p) => p.locator('[data-testid=message][data-status=sending]').count(), 3,
    'three pending at bob');
  await bob.page.screenshot({ path: path.join(ARTIFACTS, 'offline-pending.png') });
  await bob.context.setOffline(false);

  const all = [...hello, 'offline one', 'offline two', 'offline three'];
  await eventually(bob.page, texts, all, 'bob sees them once, in order');
  await eventually(alice.page, texts, all, 'alice sees them once, in order');
  await eventually(bob.page, (p) => p.locator('[data-testid=message][data-status=sending]').count(), 0,
    'nothing left pending at bob');
});

test('a message queued offline survives a page reload and is sent once after reconnecting', { timeout: 90_000 }, async (t) => {
  const ivan = await person(t, `Ivan-${run}`);
  // Hana's browser cannot reach Tidings (the pages themselves still load):
  // WebSocket upgrades are closed, SSE, long-poll and client actions fail.
  let blocked = true;
  const hana = await person(t, `Hana-${run}`, {
    connected: false,
    setup: async (context) => {
      await context.routeWebSocket(/\/v1\/ws/, (ws) => (blocked ? ws.close() : ws.connectToServer()));
      await context.route(/\/v1\/(sse|poll|client)/, (r) => (blocked ? r.abort() : r.continue()));
    },
  });
  await hana.page.locator('[data-testid=conn-state][data-state=disconnected]').waitFor({ timeout: WAIT });
  const text = `written offline, sent after a reload (${run})`;
  await send(hana.page, text);
  await hana.page.locator('[data-testid=message][data-status=sending]').waitFor({ timeout: WAIT });
  // Stored happens a moment after shown: wait for the IndexedDB write, as a
  // reload within those milliseconds would lose it.
  await eventually(hana.page, (p) => storedEntries(p, hana.name.toLowerCase()), 1, 'the entry stored in IndexedDB');

  await hana.page.reload();
  // The page joins again by itself; the stored message is back, still waiting.
  const pending = hana.page.locator('[data-testid=message][data-status=sending]').filter({ hasText: text });
  await pending.waitFor({ timeout: WAIT });
  assert.notEqual(await hana.page.getByTestId('conn-state').getAttribute('data-state'), 'connected');
  const count = (p) => p.getByTestId('message-text').filter({ hasText: text }).count();
  assert.equal(await count(ivan.page), 0);

  blocked = false;
  // The browser's `online` event makes the client try at once.
  await hana.page.evaluate(() => window.dispatchEvent(new Event('online')));
  await hana.page.locator('[data-testid=conn-state][data-state=connected]').waitFor({ timeout: WAIT });
  await eventually(ivan.page, count, 1, 'ivan sees it once');
  await eventually(hana.page, count, 1, 'hana sees it once');
  await eventually(hana.page, (p) => p.locator('[data-testid=message][data-status=sending]').count(), 0,
    'nothing left pending at hana');
});

test('with /v1/ws refused, the SDK falls back to SSE and the chat works', { timeout: 60_000 }, async (t) => {
  const carol = await person(t, `Carol-${run}`, { blockWs: true });
  const dan = await person(t, `Dan-${run}`);
  const state = carol.page.getByTestId('conn-state');
  assert.equal(await state.getAttribute('data-transport'), 'sse');
  assert.match(await state.textContent(), /SSE/);
  assert.equal(await dan.page.getByTestId('conn-state').getAttribute('data-transport'), 'websocket');

  await send(carol.page, 'Hello over SSE');
  // Dan answers once Carol's message is through on both sides.
  await eventually(carol.page, sending, 0, 'carol\'s message acknowledged over HTTP');
  for (const p of [carol.page, dan.page]) {
    await eventually(p, async (pg) => (await texts(pg)).slice(-1), ['Hello over SSE'], 'both see carol\'s message');
  }
  await send(dan.page, 'Hello over WebSocket');
  for (const p of [carol.page, dan.page]) {
    await eventually(p, async (pg) => (await texts(pg)).slice(-2), ['Hello over SSE', 'Hello over WebSocket'],
      'both see both');
  }
  await eventually(carol.page, (p) => p.locator('[data-testid=message][data-status=sending]').count(), 0,
    'carol\'s message acknowledged over HTTP');
});

test('a send the server refuses (too large, 104) shows failed and keeps the text', { timeout: 60_000 }, async (t) => {
  const erin = await person(t, `Erin-${run}`);
  const big = `A very long message ${'x'.repeat(5000)}`; // demo: max_message_size 4096
  await send(erin.page, big);
  const failed = erin.page.locator('[data-testid=message][data-status=failed]');
  await failed.waitFor({ timeout: WAIT });
  assert.equal(await failed.getByTestId('message-status').textContent(), 'failed');
  assert.equal(await erin.page.getByTestId('composer-input').inputValue(), big);
  assert.match(await erin.page.getByTestId('composer-error').textContent(), /104/);
  await erin.page.screenshot({ path: path.join(ARTIFACTS, 'failed-send.png') });
});

test('Q&A upvotes and the poll update live for everyone; the dashboard uses SSE', { timeout: 60_000 }, async (t) => {
  const fay = await person(t, `Fay-${run}`);
  const gus = await person(t, `Gus-${run}`);
  const question = `Why do offsets start at 1? (${run})`;
  await fay.page.getByTestId('qa-input').fill(question);
  await fay.page.getByTestId('qa-send').click();
  const qAt = (p) => p.getByTestId('question').filter({ hasText: question });
  await qAt(gus.page).waitFor({ timeout: WAIT });
  await qAt(gus.page).getByTestId('upvote').click();
  for (const p of [fay.page, gus.page]) {
    await eventually(p, (pg) => qAt(pg).getByTestId('votes').textContent(), '1', 'one upvote');
  }
  await fay.page.screenshot({ path: path.join(ARTIFACTS, 'qa.png') });

  const results = (p) => Promise.all(['slow', 'right', 'fast'].map((o) => p.getByTestId(`result-${o}`).textContent()));
  const start = (await results(fay.page)).map(Number);
  await fay.page.getByTestId('vote-right').click();
  await gus.page.getByTestId('vote-fast').click();
  const want = [start[0], start[1] + 1, start[2] + 1].map(String);
  await eventually(fay.page, results, want, 'fay sees both votes');
  await eventually(gus.page, results, want, 'gus sees both votes');
  // Gus changes his mind: his latest vote counts, once.
  await gus.page.getByTestId('vote-right').click();
  const changed = [start[0], start[1] + 2, start[2]].map(String);
  await eventually(fay.page, results, changed, 'fay sees the changed vote');
  await fay.page.locator('.poll').screenshot({ path: path.join(ARTIFACTS, 'poll.png') });

  const dash = await fay.context.newPage();
  await dash.goto(`${base}/dashboard.html`);
  await dash.locator('[data-testid=conn-state][data-state=connected]').waitFor({ timeout: WAIT });
  assert.equal(await dash.getByTestId('conn-state').getAttribute('data-transport'), 'sse');
  await eventually(dash, (p) => p.getByTestId('dash-result-right').textContent(),
    `${start[1] + 2} · ${Math.round(((start[1] + 2) / (start[0] + start[1] + 2 + start[2])) * 100)}%`, 'dashboard poll');
  await eventually(dash, (p) => p.getByTestId('dash-question').filter({ hasText: question }).count(), 1,
    'dashboard question');
  await dash.screenshot({ path: path.join(ARTIFACTS, 'dashboard.png'), fullPage: true });
});
