#!/usr/bin/env node
// The chat layer's costs. Starts its own server (the release binary,
// pinned to core 0); pin this script to core 1.
//
//   taskset -c 1 node scripts/bench_chat.mjs receipts [members] [seconds]
//     A group of `members` (default 10,000) members, each subscribed on
//     its own WebSocket, gets 10 messages a second through the API. Phase
//     A: members only receive. Phase B: each member also tells its
//     `delivered` cursor the way the SDKs do (at most one `cursor` command
//     per 500 ms, the newest offset). The server's CPU per second of each
//     phase: B - A is what receipts cost.
//   taskset -c 1 node scripts/bench_chat.mjs inbox [conversations] [calls]
//     One user in `conversations` (default 1,000) conversations, each with
//     a publication; the round trip of `inbox` calls (limit 100 and 1000)
//     over one WebSocket.
//
// Loopback only; 10,000 connections stay under the 20,000 open files a
// process may have here. Needs tests/node's `ws` package.
import { createHmac } from 'node:crypto';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { startServer as startServerWith, cpu } from './bench_server.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(path.join(root, 'tests/node/package.json'));
const WebSocket = require('ws');
const KEY = 'bench-chat-key';
const SECRET = 'bench-chat-secret';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function startServer() {
  return startServerWith(`[auth]
token_secret = "${SECRET}"
api_keys = ["${KEY}"]
[client]
max_commands_per_second = 0
[namespaces.g]
members = true
history_size = 100
[namespaces.dm]
members = true
history_size = 100
`);
}

const b64 = (s) => Buffer.from(s).toString('base64url');
function token(user) {
  const body = `${b64(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64(JSON.stringify({ sub: user, exp: Math.floor(Date.now() / 1000) + 3600 }))}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

async function api(addr, method, body) {
  const res = await fetch(`http://${addr}/v1/api/${method}`, {
    method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`${method}: ${res.status} ${await res.text()}`);
  return res.json();
}

/** A member's socket: subscribes `channel`; with `receipts`, tells its delivered cursor as the SDK does. */
function member(addr, user, channel, state) {
  const ws = new WebSocket(`ws://${addr}/v1/ws`, 'tidings.v1.json', { perMessageDeflate: false });
  const m = { ws, newest: 0, told: 0, timer: null, pubs: 0, summaries: 0 };
  let id = 10;
  const tell = () => {
    m.timer = null;
    if (m.newest > m.told) {
      m.told = m.newest;
      ws.send(JSON.stringify({ id: ++id, op: 'cursor', channel, delivered: m.told }));
      state.cursors += 1;
    }
  };
  return new Promise((resolve, reject) => {
    ws.on('error', reject);
    ws.on('open', () => ws.send(`${JSON.stringify({ id: 1, op: 'connect', token: token(user) })}\n${JSON.stringify({ id: 2, op: 'subscribe', channel })}`));
    ws.on('message', (data) => {
      for (const line of data.toString().split('\n')) {
        if (!line) continue;
        const msg = JSON.parse(line);
        if (msg.id === 2) {
          if (msg.error) reject(new Error(JSON.stringify(msg.error)));
          else resolve(m);
        } else if (msg.push === 'pub') {
          m.pubs += 1;
          m.newest = Math.max(m.newest, msg.offset);
          if (state.receipts && !m.timer) m.timer = setTimeout(tell, 500);
        } else if (msg.push === 'receipt') {
          m.summaries += 1;
        } else if (msg.push === 'ping') {
          ws.send('{"op":"pong"}');
        } else if (msg.error) {
          state.errors += 1;
        }
      }
    });
  });
}

async function receipts(n, seconds) {
  const server = await startServer();
  const channel = 'g:big';
  const users = Array.from({ length: n }, (_, i) => `m${i}`);
  for (let i = 0; i < n; i += 1000) await api(server.addr, 'members/add', { channel, users: users.slice(i, i + 1000) });
  const state = { receipts: false, cursors: 0, errors: 0 };
  const members = [];
  for (let i = 0; i < n; i += 500) {
    members.push(...await Promise.all(users.slice(i, i + 500).map((u) => member(server.addr, u, channel, state))));
  }
  await sleep(2000);
  const phase = async (name, withReceipts) => {
    state.receipts = withReceipts;
    state.cursors = 0;
    const pubs0 = members.reduce((s, m) => s + m.pubs, 0);
    const sum0 = members.reduce((s, m) => s + m.summaries, 0);
    const c0 = cpu(server.pid);
    const t0 = Date.now();
    for (let i = 0; i < seconds * 10; i += 1) {
      await api(server.addr, 'publish', { channel, data: { text: `message ${i} with a few words in it`, n: i } });
      await sleep(Math.max(0, t0 + (i + 1) * 100 - Date.now()));
    }
    await sleep(1500); // the last coalesced cursors and summary
    const elapsed = (Date.now() - t0) / 1000;
    const used = cpu(server.pid) - c0;
    const pubs = members.reduce((s, m) => s + m.pubs, 0) - pubs0;
    const sums = members.reduce((s, m) => s + m.summaries, 0) - sum0;
    console.log(`${name}: ${seconds * 10} messages, ${pubs} deliveries (${pubs === n * seconds * 10 ? 'none lost' : 'LOST SOME'}), ` +
      `${state.cursors} cursor commands, ${sums} receipt pushes; server CPU ${used.toFixed(2)} s over ${elapsed.toFixed(1)} s ` +
      `= ${(100 * used / elapsed).toFixed(1)} % of a core`);
    return used;
  };
  // The same messages in both phases: the CPU seconds B adds are the receipts'.
  const a = await phase('A messages only', false);
  const b = await phase('B messages + delivered cursors', true);
  console.log(`for the same ${seconds * 10} messages to ${n} members: messages ${a.toFixed(2)} CPU s, receipts ${(b - a).toFixed(2)} CPU s more (ratio ${((b - a) / a).toFixed(2)}); errors ${state.errors}`);
  for (const m of members) m.ws.terminate();
  await server.stop();
}

async function inbox(conversations, calls) {
  const server = await startServer();
  for (let i = 0; i < conversations; i += 1) {
    const channel = `dm:c${i}`;
    await api(server.addr, 'members/add', { channel, users: ['me', `peer${i}`] });
    await api(server.addr, 'publish', { channel, data: { text: `hello ${i}` } });
  }
  const ws = new WebSocket(`ws://${server.addr}/v1/ws`, 'tidings.v1.json', { perMessageDeflate: false });
  const waiting = new Map();
  ws.on('message', (data) => {
    for (const line of data.toString().split('\n')) {
      if (!line) continue;
      const msg = JSON.parse(line);
      waiting.get(msg.id)?.(msg);
    }
  });
  await new Promise((r) => ws.on('open', r));
  let id = 0;
  const call = (cmd) => new Promise((resolve) => { id += 1; waiting.set(id, resolve); ws.send(JSON.stringify({ id, ...cmd })); });
  await call({ op: 'connect', token: token('me') });
  for (const limit of [100, 1000]) {
    const times = [];
    let count = 0;
    for (let i = 0; i < calls; i += 1) {
      const t = process.hrtime.bigint();
      const r = await call({ op: 'inbox', limit });
      times.push(Number(process.hrtime.bigint() - t) / 1e6);
      count = r.ok.conversations.length;
    }
    times.sort((x, y) => x - y);
    const q = (p) => times[Math.min(times.length - 1, Math.floor(p * times.length))].toFixed(2);
    console.log(`inbox of ${conversations} conversations, limit ${limit} (${count} returned): median ${q(0.5)} ms, p90 ${q(0.9)} ms, max ${q(1)} ms over ${calls} calls`);
  }
  ws.terminate();
  await server.stop();
}

const [what = 'receipts', a, b] = process.argv.slice(2);
if (what === 'receipts') await receipts(Number(a ?? 10000), Number(b ?? 10));
else if (what === 'inbox') await inbox(Number(a ?? 1000), Number(b ?? 50));
else throw new Error('receipts or inbox');
