// What the examples share: command-line options, publishing through the
// server API, pacing a feed, and a client (WebSocket when `ws` is
// installed or the runtime has one, else SSE).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { TidingsClient } from '../sdk/js/dist/index.js';

/** `--name value` options over `defaults` (numbers stay numbers). */
export function options(defaults) {
  const out = { ...defaults };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, '');
    if (!(name in defaults)) throw new Error(`unknown option --${name}; known: ${Object.keys(defaults).join(', ')}`);
    out[name] = typeof defaults[name] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
  }
  return out;
}

/** The WebSocket class to use in Node: `ws` if installed, else the runtime's. */
export async function webSocket() {
  try {
    return (await import('ws')).default;
  } catch {
    return globalThis.WebSocket;
  }
}

/** Publishes through `POST /v1/api/publish`; resolves with the answer. */
export async function publish(url, apiKey, body) {
  const res = await fetch(`${url}/v1/api/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`publish: ${res.status} ${text}`);
  return JSON.parse(text);
}

/**
 * Calls `fn(i)` `rate` times per second for `seconds`, at most `inflight`
 * calls at once (a feed that cannot keep up falls behind, it does not pile
 * up). Resolves with the number of calls made.
 */
export async function pace(rate, seconds, fn, inflight = 64) {
  const start = Date.now();
  const total = Math.round(rate * seconds);
  let running = 0;
  let i = 0;
  const errors = [];
  await new Promise((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor(((Date.now() - start) / 1000) * rate) + 1);
      while (i < due && running < inflight) {
        running += 1;
        Promise.resolve(fn(i++)).catch((e) => errors.push(e)).finally(() => {
          running -= 1;
          if (i >= total && running === 0) resolve();
        });
      }
      if (i < total) setTimeout(tick, 5);
    };
    tick();
  });
  if (errors.length) throw errors[0];
  return i;
}

/** A connected client. */
export async function connect(url, WebSocket, opts = {}) {
  const client = new TidingsClient({ url, WebSocket, outbox: false, ...opts });
  const connected = new Promise((resolve) => client.on('connected', resolve));
  client.connect();
  await connected;
  return client;
}

/**
 * `n` connected clients (options `url`, `WebSocket`, `transports` from
 * `o`), each set up by `setup(subscribe, i)`, whose result is kept with
 * the client; resolves once every subscription made through `subscribe`
 * is answered.
 */
export async function clients(o, n, setup) {
  const WebSocket = o.WebSocket ?? await webSocket();
  const ready = [];
  const out = [];
  for (let i = 0; i < n; i++) {
    const client = await connect(o.url, WebSocket, o.transports ? { transports: o.transports } : {});
    const subscribe = (channel) => {
      const sub = client.subscribe(channel);
      ready.push(new Promise((r) => sub.once('subscribed', r)));
      return sub;
    };
    out.push({ client, ...setup(subscribe, i) });
  }
  await Promise.all(ready);
  return out;
}

/** Resolves after `ms`. */
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Whether this module is the one node ran. */
export function isMain(meta) {
  return Boolean(process.argv[1]) && path.resolve(process.argv[1]) === fileURLToPath(meta.url);
}
