// Presence tells the truth about frozen clients: a member process stopped
// with SIGSTOP (its socket stays open, its code does not run) leaves the
// channel within the lease, over SSE (no heartbeat) as over WebSocket (no
// pong); one that keeps running stays through many leases.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { API_KEY, mintToken, startTidings } from './harness.mjs';
import { client, next } from './sdk_helpers.mjs';

const SECRET = 'frozen-test-secret';
const TTL_S = 3;
const CONFIG = `listen = "127.0.0.1:0"
presence_ttl = "${TTL_S}s"
[auth]
token_secret = "${SECRET}"
api_keys = ["${API_KEY}"]
[client]
ping_interval = "1s"
pong_timeout = "1s"
[namespaces.room]
presence = true
join_leave = true
`;
const here = path.dirname(fileURLToPath(import.meta.url));
const token = (sub) => mintToken(SECRET, { sub, exp: Math.floor(Date.now() / 1000) + 3600 });

let server;
before(async () => { server = await startTidings(CONFIG); });
after(() => server?.stop());

/** Starts a member process; resolves once it is subscribed. */
async function member(t, transport, channel, user) {
  const child = spawn(process.execPath, [path.join(here, 'member.mjs'), server.addr, transport, channel, token(user)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.after(() => { child.kill('SIGCONT'); child.kill('SIGKILL'); });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${user} did not subscribe`)), 15_000);
    child.stdout.on('data', (d) => { if (String(d).includes('ready')) { clearTimeout(timer); resolve(); } });
    child.on('exit', (code) => reject(new Error(`${user} exited ${code}`)));
  });
  return child;
}

for (const transport of ['sse', 'websocket']) {
  test(`${transport}: a frozen member leaves within the lease, a live one stays`, { timeout: 60_000 }, async (t) => {
    const ch = `room:${transport}-${Date.now()}`;
    const watcher = client(t, server.addr, { token: token('watcher') });
    const sub = watcher.subscribe(ch);
    const left = [];
    sub.on('leave', (e) => left.push(e.user));
    const subscribed = next(sub, 'subscribed');
    watcher.connect();
    await subscribed;

    const joinedLive = next(sub, 'join', (e) => e.user === 'live', 20_000);
    const live = await member(t, transport, ch, 'live');
    await joinedLive;
    const joinedFrozen = next(sub, 'join', (e) => e.user === 'frozen', 20_000);
    const frozen = await member(t, transport, ch, 'frozen');
    await joinedFrozen;

    const leaving = next(sub, 'leave', (e) => e.user === 'frozen', 20_000);
    const stoppedAt = Date.now();
    frozen.kill('SIGSTOP');
    await leaving;
    const took = (Date.now() - stoppedAt) / 1000;
    // The lease: presence_ttl, plus one renewal period to notice.
    assert.ok(took <= TTL_S + TTL_S / 3 + 4, `left after ${took} s`);
    // Three more leases: the live member, still sending heartbeats and
    // pongs, never left.
    await new Promise((r) => setTimeout(r, 3 * TTL_S * 1000));
    assert.deepEqual(left, ['frozen'], 'only the frozen member left');
    const stats = await sub.presenceStats();
    assert.equal(stats.users, 2, 'the watcher and the live member');
    live.kill('SIGKILL');
  });
}
