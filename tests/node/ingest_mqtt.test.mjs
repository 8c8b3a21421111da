// A device publishing QoS 1 through a real mosquitto reaches a browser:
// Tidings consumes `sensors/+/temp` ([[consumers]] type "mqtt") into
// `iot:sensor.<id>`, and the TypeScript SDK in Chromium, subscribed to that
// channel, gets each reading once, in order. mosquitto and mosquitto_pub
// are installed by scripts/test.sh.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { launchChromium, startTidings } from './harness.mjs';

const WAIT = 20_000;
let broker;
let server;
let browser;
let port;

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port: p } = s.address();
      s.close(() => resolve(p));
    });
  });
}

async function listening(p) {
  const end = Date.now() + WAIT;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const c = net.connect(p, '127.0.0.1', () => { c.end(); resolve(true); });
      c.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > end) throw new Error(`nothing listens on ${p}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

before(async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tidings-mqtt-'));
  port = await freePort();
  const root = process.getuid?.() === 0;
  writeFileSync(path.join(dir, 'mosquitto.conf'),
    `listener ${port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location ${dir}/\n${root ? 'user root\n' : ''}`);
  const bin = existsSync('/usr/sbin/mosquitto') ? '/usr/sbin/mosquitto' : 'mosquitto';
  broker = spawn(bin, ['-c', path.join(dir, 'mosquitto.conf')], { stdio: 'ignore' });
  await listening(port);
  server = await startTidings(`listen = "127.0.0.1:0"
demo = true
[auth]
token_secret = "mqtt-browser-test-secret"
[namespaces.iot]
anonymous = true
history_size = 100
history_ttl = "1h"
[[consumers]]
name = "sensors"
type = "mqtt"
url = "mqtt://127.0.0.1:${port}"
topics = ["sensors/+/temp"]
group = "tidings-browser-test"
channel_template = "iot:sensor.{1}"
[consumers.fields]
idempotency_key = "id"
`);
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  broker?.kill();
});

async function consumerUp() {
  const end = Date.now() + WAIT;
  for (;;) {
    const text = await (await fetch(`http://${server.addr}/metrics`)).text();
    if (/^tidings_consumer_up\{consumer="sensors"\} 1$/m.test(text)) return;
    if (Date.now() > end) throw new Error('the MQTT consumer did not connect');
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('a device publishing QoS 1 through mosquitto reaches the browser SDK', { timeout: 60_000 }, async () => {
  await consumerUp();
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`http://${server.addr}/`);
  await page.evaluate(async () => {
    const { TidingsClient } = await import('/sdk/index.js');
    window.readings = [];
    const client = new TidingsClient();
    const sub = client.subscribe('iot:sensor.42');
    sub.on('publication', (p) => window.readings.push(p.data));
    await new Promise((resolve) => { sub.on('subscribed', resolve); client.connect(); });
  });
  // The device: five readings, QoS 1, each with its own id.
  for (let n = 0; n < 5; n++) {
    execFileSync('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(port), '-q', '1', '-t', 'sensors/42/temp',
      '-m', JSON.stringify({ id: `r${n}`, n, celsius: 20 + n / 10 })]);
  }
  await page.waitForFunction(() => window.readings.length >= 5, null, { timeout: WAIT });
  await new Promise((r) => setTimeout(r, 300));
  const readings = await page.evaluate(() => window.readings);
  assert.deepEqual(readings.map((r) => r.n), [0, 1, 2, 3, 4]);
  assert.equal(readings[4].celsius, 20.4);
  assert.deepEqual(errors, []);
});
