// The SDK against a node on a real redis-server (AOF on): a publish made
// while Redis is away is refused as temporary, stays in the outbox and goes
// out once Redis is back — once, in the same epoch.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import WebSocket from 'ws';
import { API_KEY, startTidings, until } from './harness.mjs';
import { client, connected } from './sdk_helpers.mjs';

/** A free loopback port. */
function freePort() {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Starts redis-server on `port` with AOF in `dir`; resolves once it answers. */
async function startRedis(port, dir) {
  const child = spawn('redis-server', [
    '--port', String(port), '--bind', '127.0.0.1', '--dir', dir,
    '--save', '', '--appendonly', 'yes', '--appendfsync', 'always',
  ], { stdio: 'ignore' });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  await until(() => new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true); });
    s.on('error', () => resolve(false));
  }), 10_000, 'redis-server listening');
  return { child, kill: () => { child.kill('SIGKILL'); return exited; } };
}

test('a publish refused while Redis is away stays in the outbox and goes out once, when Redis is back', { timeout: 60_000 }, async (t) => {
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tidings-node-redis-'));
  let redis = await startRedis(port, dir);
  t.after(() => redis.kill());
  const server = await startTidings(`listen = "127.0.0.1:0"
[auth]
token_secret = "redis-node-secret"
api_keys = ["${API_KEY}"]
[channels]
anonymous = true
client_publish = "any"
[engine]
type = "redis"
[engine.redis]
urls = ["redis://127.0.0.1:${port}"]
connect_timeout = "300ms"
command_timeout = "300ms"
`);
  t.after(() => server.stop());

  const c = client(t, server.addr, { WebSocket });
  c.connect();
  await connected(c);
  const first = await c.publish('news', { n: 1 });
  assert.equal(first.offset, 1);

  await redis.kill();
  const refused = [];
  c.on('publishFailed', (e) => refused.push(e));
  const second = c.publish('news', { n: 2 });
  // It is tried against a Redis that is not there (and refused as
  // temporary), and kept.
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(c.pendingPublishes('news').length, 1, 'still in the outbox');
  redis = await startRedis(port, dir);
  const done = await second;
  assert.equal(done.offset, 2);
  assert.equal(done.epoch, first.epoch, 'Redis came back with its data (AOF)');
  assert.deepEqual(refused, [], 'never reported as failed');

  // Exactly one publication of n = 2 (same key on every resend).
  const res = await fetch(`http://${server.addr}/v1/api/history`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}` },
    body: JSON.stringify({ channel: 'news' }),
  });
  const history = await res.json();
  assert.deepEqual(history.publications.map((p) => p.data.n), [1, 2]);
});
