// The Python `pusher` server SDK (from the Python registry; installed by
// scripts/test.sh into tests/python/.venv) against Tidings' Pusher HTTP
// API: its events reach a pusher-js subscriber, and every answer parses.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import PusherClient from 'pusher-js';
import { startTidings } from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const PYTHON = process.env.TIDINGS_PYTHON ?? path.join(here, '../python/.venv/bin/python');
const SCRIPT = path.join(here, '../python/pusher_sdk.py');

let server;
before(async () => {
  server = await startTidings(`listen = "127.0.0.1:0"
[auth]
token_secret = "pusher-python-test-secret"
[[pusher.apps]]
id = "1234"
key = "app-key"
secret = "app-secret-123"
`);
});
after(() => server?.stop());

test('the Python SDK triggers, queries and terminates; pusher-js receives', { timeout: 60_000 }, async (t) => {
  const [host, port] = server.addr.split(':');
  const c = new PusherClient('app-key', { cluster: 'mt1', wsHost: host, wsPort: Number(port), forceTLS: false, enabledTransports: ['ws'] });
  t.after(() => c.disconnect());
  const channel = c.subscribe('py-news');
  await new Promise((resolve) => channel.bind('pusher:subscription_succeeded', resolve));
  const got = [];
  channel.bind('from-python', (d) => got.push(d));
  channel.bind('batched', (d) => got.push(d));
  const out = await new Promise((resolve, reject) => {
    execFile(PYTHON, [SCRIPT, host, port], { timeout: 30_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
  const seen = JSON.parse(out);
  assert.equal(seen.wrong_secret, 'refused');
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(got, [{ lang: 'python' }, { n: 2 }, { n: 3 }]);
});
