#!/usr/bin/env node
// Bytes and server CPU per delivery by wire format, and idle memory per
// connection with and without permessage-deflate. Starts its own server
// (the release binary, pinned to core 0), opens the subscribers here (pin
// this script to core 1), publishes through the API, and reads the bytes
// the sockets received and the server's CPU time from /proc.
//
//   taskset -c 1 node scripts/bench_wire.mjs [subscribers] [updates]
//   taskset -c 1 node scripts/bench_wire.mjs --idle [connections]
//
// Loopback only. Needs tests/node's `ws` package (npm ci in tests/node).
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { startServer as startServerWith, cpu, rss } from './bench_server.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(path.join(root, 'tests/node/package.json'));
const WebSocket = require('ws');
const { encode, decodeMulti } = await import(path.join(root, 'sdk/js/dist/msgpack.js'));
const KEY = 'bench-wire-key';

function startServer(threshold, takeover = false) {
  return startServerWith(`[auth]
api_keys = ["${KEY}"]
[client]
outbox_bytes = 16777216
deflate_context_takeover = ${takeover}
[channels]
anonymous = true
history_size = 100
compress_min_size = ${threshold}
`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Opens a subscriber of `channel` in `mode`; resolves once subscribed. */
function subscriber(addr, channel, mode) {
  const msgpack = mode === 'msgpack';
  const ws = new WebSocket(`ws://${addr}/v1/ws`, msgpack ? 'tidings.v1.msgpack' : 'tidings.v1.json',
    { perMessageDeflate: mode === 'deflate' ? { clientNoContextTakeover: true, serverNoContextTakeover: true } : false });
  const sub = { ws, pubs: 0, deflate: null };
  return new Promise((resolve, reject) => {
    ws.on('error', reject);
    ws.on('open', () => {
      sub.deflate = ws.extensions || null;
      const cmds = [{ id: 1, op: 'connect' }, { id: 2, op: 'subscribe', channel, ...(mode === 'fossil' ? { delta: 'fossil' } : {}) }];
      if (msgpack) ws.send(Buffer.concat(cmds.map((c) => Buffer.from(encode(c)))));
      else ws.send(cmds.map((c) => JSON.stringify(c)).join('\n'));
    });
    ws.on('message', (data, binary) => {
      const msgs = binary && msgpack ? decodeMulti(new Uint8Array(data)) : String(data).split('\n').map((l) => JSON.parse(l));
      for (const m of msgs) {
        if (m.push === 'ping') ws.send(msgpack ? encode({ op: 'pong' }) : '{"op":"pong"}');
        if (m.id === 2) resolve(sub);
        if (m.push === 'pub') sub.pubs += 1;
      }
    });
  });
}

/** A 2 KB order book; `step` changes about 1 % of it. */
function orderBook() {
  const levels = (base, dir) => Array.from({ length: 40 }, (_, i) => ({ px: (base + dir * i * 0.25).toFixed(2), qty: 100 + i * 7 }));
  const book = { symbol: 'ACME', bids: levels(100, -1), asks: levels(100.25, 1), seq: 0 };
  let n = 0;
  return () => {
    n += 1;
    book.seq = n;
    const side = n % 2 ? book.bids : book.asks;
    side[n % side.length].qty = 100 + ((n * 37) % 900);
    return book;
  };
}

function chat() {
  let n = 0;
  const words = ['sure, on my way now, see you in ten minutes', 'did you get the slides from this morning?',
    'yes! room 4B, the one next to the library', 'can someone share the link to the recording?'];
  return () => {
    n += 1;
    return { user: `u${n % 20}`, text: words[n % words.length], at: 1765000000000 + n * 1000 };
  };
}

async function publish(addr, channel, data) {
  const res = await fetch(`http://${addr}/v1/api/publish`, {
    method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ channel, data }),
  });
  if (!res.ok) throw new Error(`publish: ${res.status}`);
}

async function measure(mode, payload, subscribers, updates) {
  const server = await startServer(mode === 'deflate' ? 64 : 0);
  try {
    const channel = `wire-${mode}`;
    const subs = [];
    for (let i = 0; i < subscribers; i++) subs.push(await subscriber(server.addr, channel, mode));
    if (mode === 'deflate' && !subs.every((s) => (s.deflate ?? '').includes('permessage-deflate'))) {
      throw new Error('deflate was not negotiated');
    }
    await sleep(300);
    const next = payload === 'book' ? orderBook() : chat();
    const bytes0 = subs.reduce((a, s) => a + s.ws._socket.bytesRead, 0);
    const cpu0 = cpu(server.pid);
    const sample = JSON.stringify(next());
    for (let i = 0; i < updates; i++) {
      await publish(server.addr, channel, next());
      if (i % 20 === 19) await sleep(5); // a steady stream, not one burst
    }
    const want = updates;
    const deadline = Date.now() + 30_000;
    while (subs.some((s) => s.pubs < want) && Date.now() < deadline) await sleep(50);
    const cpu1 = cpu(server.pid);
    const bytes1 = subs.reduce((a, s) => a + s.ws._socket.bytesRead, 0);
    const got = subs.reduce((a, s) => a + s.pubs, 0);
    const deliveries = subscribers * updates;
    for (const s of subs) s.ws.terminate();
    return {
      mode, payload, payloadBytes: sample.length, subscribers, updates,
      delivered: got, lost: deliveries - got,
      bytesPerDelivery: Math.round((bytes1 - bytes0) / deliveries),
      // The API calls' own CPU is in this too (the same for every mode).
      cpuUsPerDelivery: Number((((cpu1 - cpu0) * 1e6) / deliveries).toFixed(2)),
    };
  } finally {
    await server.stop();
  }
}

async function idle(connections) {
  const out = [];
  // Context takeover keeps a compressor per connection: fewer of them.
  for (const [deflate, takeover, n] of [[false, false, connections], [true, false, connections], [true, true, Math.ceil(connections / 10)]]) {
    const server = await startServer(1024, takeover);
    try {
      await sleep(500);
      const before = rss(server.pid);
      const socks = [];
      for (let i = 0; i < n; i++) {
        socks.push(await new Promise((resolve, reject) => {
          const ws = new WebSocket(`ws://${server.addr}/v1/ws`, 'tidings.v1.json', { perMessageDeflate: deflate });
          ws.on('error', reject);
          ws.on('open', () => ws.send('{"id":1,"op":"connect"}\n{"id":2,"op":"subscribe","channel":"idle"}'));
          ws.on('message', (d) => {
            for (const l of String(d).split('\n')) {
              const m = JSON.parse(l);
              if (m.id === 2) resolve(ws);
              if (m.push === 'ping') ws.send('{"op":"pong"}');
            }
          });
        }));
      }
      // A 4 KB push to every connection first: with deflate, state is
      // made, used and given back to the pool, as in a real session.
      await publish(server.addr, 'idle', { blob: 'x'.repeat(4096) });
      await sleep(2000);
      const after = rss(server.pid);
      const agreed = socks[0].extensions || 'none';
      out.push({ deflate, takeover, agreed: String(agreed), connections: n, kibPerConnection: Number(((after - before) / n).toFixed(2)) });
      for (const s of socks) s.terminate();
    } finally {
      await server.stop();
    }
  }
  return out;
}

const args = process.argv.slice(2);
if (args[0] === '--idle') {
  console.log(JSON.stringify(await idle(Number(args[1] ?? 5000)), null, 1));
} else {
  const subscribers = Number(args[0] ?? 100);
  const updates = Number(args[1] ?? 200);
  const rows = [];
  for (const payload of ['book', 'chat']) {
    for (const mode of ['json', 'deflate', 'msgpack', 'fossil']) {
      const r = await measure(mode, payload, subscribers, updates);
      rows.push(r);
      console.error(JSON.stringify(r));
    }
  }
  console.log('| payload | format | payload bytes (JSON) | bytes per delivery | vs JSON | server CPU µs per delivery | lost |');
  console.log('|---|---|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    const base = rows.find((x) => x.payload === r.payload && x.mode === 'json');
    console.log(`| ${r.payload === 'book' ? '2 KB order book, 1 % changed' : '100-byte chat message'} | ${r.mode} | ${r.payloadBytes} | ${r.bytesPerDelivery} | ${Math.round((100 * r.bytesPerDelivery) / base.bytesPerDelivery)} % | ${r.cpuUsPerDelivery} | ${r.lost} |`);
  }
}
