// Helpers shared by the SDK tests: a client with fast reconnects, waiting
// for one event, collecting a subscription's events.
import WebSocket from 'ws';
import { MemoryOutboxStore, TidingsClient } from '../../sdk/js/dist/index.js';

/** A client with fast reconnects, cleaned up after the test. */
export function client(t, addr, opts = {}) {
  const c = new TidingsClient({
    url: `http://${addr}`,
    WebSocket,
    outbox: new MemoryOutboxStore(),
    minReconnectDelay: 50,
    maxReconnectDelay: 400,
    connectTimeout: 5000,
    commandTimeout: 5000,
    ...opts,
  });
  t.after(() => c.disconnect());
  if (process.env.SDK_DEBUG) {
    for (const ev of ['state', 'connected', 'disconnected', 'error', 'reconnecting']) {
      c.on(ev, (e) => console.error(addr, ev, JSON.stringify(e)));
    }
  }
  return c;
}

/** Resolves with the next `name` event of `em` that satisfies `pred`. */
export function next(em, name, pred = () => true, ms = 10_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out waiting for ${name}`));
    }, ms);
    const off = em.on(name, (e) => {
      if (!pred(e)) return;
      clearTimeout(timer);
      off();
      resolve(e);
    });
  });
}

/** Collects a subscription's publications (data and offsets), resets, subscribed events and errors. */
export function collect(sub) {
  const got = { pubs: [], offsets: [], resets: [], subscribed: [], errors: [] };
  sub.on('publication', (p) => { got.pubs.push(p.data); got.offsets.push(p.offset); });
  sub.on('reset', (r) => got.resets.push(r));
  sub.on('subscribed', (s) => got.subscribed.push(s));
  sub.on('error', (e) => got.errors.push(e));
  return got;
}

/** Resolves once `c` is connected (over `transport`, when given). */
export const connected = (c, transport, ms = 10_000) =>
  c.state === 'connected' && (transport === undefined || c.transport === transport)
    ? Promise.resolve()
    : next(c, 'state', (s) => s.state === 'connected' && (transport === undefined || s.transport === transport), ms);

/** A small seeded PRNG (mulberry32), so a failing sequence can be replayed from its seed. */
export function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
