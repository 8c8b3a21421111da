// A WHATWG EventSource we did not write (the `eventsource` package) and
// Chromium's own: the TCP connection is cut mid-stream while publishing at
// 1,000/s; after the automatic reconnect (Last-Event-ID) every offset
// arrives exactly once, in order.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { EventSource } from 'eventsource';
import { launchChromium, publishAtRate, startProxy, startServer, until } from './harness.mjs';

const COUNT = 3000;
const RATE = 1000;
let server;

before(async () => {
  server = await startServer();
});

after(async () => {
  await server?.stop();
});

function checkExactlyOnceInOrder(offsets) {
  assert.equal(offsets.length, COUNT, `received ${offsets.length} of ${COUNT}`);
  offsets.forEach((o, i) => assert.equal(o, i + 1, `offset at position ${i}`));
}

test('eventsource package: cut TCP mid-stream, reconnect resumes exactly once in order', async () => {
  const proxy = await startProxy(server.addr);
  const offsets = [];
  let opens = 0;
  const es = new EventSource(`http://${proxy.addr}/v1/sse?channel=es`);
  es.onopen = () => { opens += 1; };
  es.addEventListener('pub', (e) => offsets.push(JSON.parse(e.data).offset));
  es.addEventListener('reset', (e) => assert.fail(`unexpected reset: ${e.data}`));
  await until(() => opens === 1, 10_000, 'the stream to open');
  let cut = 0;
  await publishAtRate(server.addr, 'es', COUNT, RATE, () => { cut = proxy.cut(); });
  await until(() => offsets.length >= COUNT, 30_000, 'every publication');
  es.close();
  await proxy.close();
  assert.ok(cut > 0, 'a connection was cut');
  assert.ok(opens >= 2, `reconnected (${opens} opens)`);
  checkExactlyOnceInOrder(offsets);
});

test('Chromium EventSource: cut TCP mid-stream, reconnect resumes exactly once in order', async (t) => {
  const proxy = await startProxy(server.addr);
  const browser = await launchChromium();
  t.after(() => browser.close());
  const page = await browser.newPage();
  await page.goto(`http://${proxy.addr}/health`);
  await page.evaluate(() => {
    window.offsets = [];
    window.opens = 0;
    const es = new EventSource('/v1/sse?channel=browser');
    es.onopen = () => { window.opens += 1; };
    es.addEventListener('pub', (e) => window.offsets.push(JSON.parse(e.data).offset));
    es.addEventListener('reset', () => window.offsets.push(-1));
    window.es = es;
  });
  const state = () => page.evaluate(() => ({ n: window.offsets.length, opens: window.opens }));
  let s = { n: 0, opens: 0 };
  const poll = async (pred, what) => {
    const end = Date.now() + 30_000;
    for (;;) {
      s = await state();
      if (pred(s)) return;
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(s)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  await poll((x) => x.opens === 1, 'the stream to open');
  let cut = 0;
  await publishAtRate(server.addr, 'browser', COUNT, RATE, () => { cut = proxy.cut(); });
  await poll((x) => x.n >= COUNT, 'every publication');
  const offsets = await page.evaluate(() => { window.es.close(); return window.offsets; });
  await proxy.close();
  assert.ok(cut > 0, 'a connection was cut');
  assert.ok(s.opens >= 2, `reconnected (${s.opens} opens)`);
  checkExactlyOnceInOrder(offsets);
});
