// Starts the real tidings binary and a TCP proxy in front of it whose
// connections the test can cut, and publishes through the server API.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const BIN = process.env.TIDINGS_BIN ?? path.join(root, 'target/debug/tidings');
export const API_KEY = 'node-test-api-key';

/** Starts the binary on 127.0.0.1:0; resolves with { addr, stop }. */
export async function startServer() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tidings-node-'));
  const config = path.join(dir, 'tidings.toml');
  writeFileSync(config, [
    'listen = "127.0.0.1:0"',
    'cors_origins = ["*"]',
    '[auth]',
    'token_secret = "node-test-secret"',
    `api_keys = ["${API_KEY}"]`,
    '[channels]',
    'history_size = 10000',
    'history_ttl = "1h"',
    'anonymous = true',
    // A reconnect waits out the server's retry hint (1-3 s); at 1,000/s that
    // is up to 3,000 missed publications, all to be recovered.
    '[client]',
    'recovery_max = 10000',
  ].join('\n'));
  const child = spawn(BIN, ['--config', config, '--data-dir', path.join(dir, 'data')], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, RUST_LOG: 'warn,tidings_server=info' },
  });
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start')), 30_000);
    let buf = '';
    child.stderr.on('data', (chunk) => {
      buf += chunk;
      // Wait for the whole address: a chunk may end in the middle of the port.
      const m = buf.match(/listening on http:\/\/(\S+)\s/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.on('exit', (code) => reject(new Error(`server exited ${code}`)));
  });
  return {
    addr,
    stop: () => new Promise((resolve) => {
      // Already gone: 'exit' will not come again.
      if (child.exitCode !== null || child.signalCode !== null) {
        resolve();
        return;
      }
      child.on('exit', resolve);
      child.kill('SIGTERM');
    }),
  };
}

/** Ends both sockets of a proxied connection together and forgets them. */
function closeTogether(open, client, upstream) {
  const done = () => {
    open.delete(client);
    open.delete(upstream);
    client.destroy();
    upstream.destroy();
  };
  client.on('error', done);
  upstream.on('error', done);
  client.on('close', done);
  upstream.on('close', done);
}

/** A proxy's `cut()` (destroys every open connection, returns how many
 * sockets) and `close()`. */
function cutAndClose(server, open) {
  return {
    cut: () => {
      const n = open.size;
      for (const s of open) s.destroy();
      return n;
    },
    close: () => new Promise((resolve) => {
      for (const s of open) s.destroy();
      server.close(resolve);
    }),
  };
}

/** A TCP proxy to `target`; `cut()` destroys every open connection. */
export async function startProxy(target) {
  const [host, port] = target.split(':');
  const open = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(port), host);
    open.add(client);
    open.add(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    closeTogether(open, client, upstream);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    addr: `127.0.0.1:${server.address().port}`,
    ...cutAndClose(server, open),
  };
}

/** Publishes `count` publications into `channel` at about `rate` per second. */
export async function publishAtRate(addr, channel, count, rate, onHalf) {
  const perTick = Math.max(1, Math.round(rate / 100));
  let sent = 0;
  while (sent < count) {
    const started = Date.now();
    const batch = [];
    for (let i = 0; i < perTick && sent < count; i++) {
      sent += 1;
      batch.push(publish(addr, channel, { n: sent }));
    }
    await Promise.all(batch);
    if (onHalf && sent >= count / 2) {
      onHalf();
      onHalf = null;
    }
    const wait = 10 - (Date.now() - started);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
}

async function publish(addr, channel, data) {
  const res = await fetch(`http://${addr}/v1/api/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ channel, data }),
  });
  if (!res.ok) throw new Error(`publish failed: ${res.status} ${await res.text()}`);
  return res.json();
}

/** Resolves when `pred()` is true, polling; rejects after `ms`. */
export async function until(pred, ms, what) {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Starts the binary with `config` (TOML text; null: no config at all, i.e.
 * dev mode) on 127.0.0.1:0; resolves with { addr, dir, stop, kill, child,
 * stderr }. `stderr()` is everything the server wrote to stderr so far;
 * `opts.rustLog` sets its RUST_LOG (default `warn`).
 */
export async function startTidings(config, opts = {}) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tidings-node-'));
  const args = ['--data-dir', path.join(dir, 'data')];
  if (config === null) {
    args.push('--listen', '127.0.0.1:0');
  } else {
    const file = path.join(dir, 'tidings.toml');
    writeFileSync(file, config);
    args.push('--config', file);
  }
  const child = spawn(BIN, args, {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, RUST_LOG: opts.rustLog ?? 'warn' },
  });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  let buf = '';
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start')), 30_000);
    child.stderr.on('data', (chunk) => {
      buf += chunk;
      // Wait for the whole address: a chunk may end in the middle of the port.
      const m = buf.match(/listening on http:\/\/(\S+)\s/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.on('exit', (code) => reject(new Error(`server exited ${code}: ${buf}`)));
  });
  return {
    addr,
    dir,
    child,
    exited,
    /** Everything the server wrote to stderr so far. */
    stderr: () => buf,
    /** Graceful stop (SIGTERM: clients get disconnect 3001). */
    stop: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

/**
 * A TCP proxy to `target` with switches: `blockAll` refuses new connections,
 * `blockWs` answers WebSocket upgrades on /v1/ws with 403 (as a proxy that
 * does not allow WebSockets would) and forwards the rest, `mute` drops what
 * the server sends (a lost acknowledgement), `hold` keeps what the server
 * sends until `release()` (a slow network), `bad502` answers every request
 * with 502 (a reverse proxy while the server restarts), `bufferSse` passes
 * the headers of SSE answers but keeps their body back (a buffering proxy),
 * `cut()` destroys every open
 * connection. `accepted` counts the connections taken.
 */
export async function startSwitchProxy(target) {
  const [host, port] = target.split(':');
  const open = new Set();
  const flags = { blockAll: false, blockWs: false, mute: false, hold: false, bad502: false, bufferSse: false };
  const held = [];
  let accepted = 0;
  let answered502 = 0;
  const server = net.createServer((client) => {
    if (flags.blockAll) {
      client.destroy();
      return;
    }
    accepted += 1;
    const upstream = net.connect(Number(port), host);
    open.add(client);
    open.add(upstream);
    // bufferSse: the answer to `GET /v1/sse` is passed up to the end of
    // its headers, the body is kept back (a proxy that buffers responses).
    let sse = null;
    client.on('data', (chunk) => {
      if (flags.bad502) {
        answered502 += 1;
        const body = '<html>502 Bad Gateway</html>';
        client.end(`HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`);
        upstream.destroy();
        return;
      }
      if (flags.bufferSse && sse === null && /^GET \/v1\/sse[?\s]/.test(chunk.toString('latin1'))) {
        sse = { head: '', headDone: false };
      }
      if (flags.blockWs && /^GET \/v1\/ws[?\s]/m.test(chunk.toString('latin1'))) {
        client.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
        upstream.destroy();
        return;
      }
      upstream.write(chunk);
    });
    upstream.on('data', (chunk) => {
      if (sse) {
        if (sse.headDone) return;
        const text = chunk.toString('latin1');
        const end = (sse.head + text).indexOf('\r\n\r\n');
        if (end < 0) {
          sse.head += text;
          client.write(chunk);
          return;
        }
        const upto = end + 4 - sse.head.length;
        sse.headDone = true;
        client.write(chunk.subarray(0, upto));
        return;
      }
      if (flags.mute) return;
      if (flags.hold) held.push(() => client.write(chunk));
      else client.write(chunk);
    });
    closeTogether(open, client, upstream);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    addr: `127.0.0.1:${server.address().port}`,
    flags,
    get accepted() {
      return accepted;
    },
    /** Requests answered 502 under `bad502`. */
    get answered502() {
      return answered502;
    },
    /** Ends `hold`: delivers what was held, in order. */
    release: () => {
      flags.hold = false;
      for (const write of held.splice(0)) write();
    },
    ...cutAndClose(server, open),
  };
}

/** An HS256 JWT signed with `secret` (node:crypto, no dependency). */
export function mintToken(secret, claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64(claims);
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

/** Publishes through the server API; resolves with its answer. */
export async function apiPublish(addr, channel, data, key = API_KEY) {
  return apiPublishBody(addr, { channel, data }, key);
}

/** Publishes `body` (channel, data and any other publish field) through the API. */
export async function apiPublishBody(addr, body, key = API_KEY) {
  const res = await fetch(`http://${addr}/v1/api/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`publish failed: ${res.status} ${await res.text()}`);
  return res.json();
}

/**
 * A TCP server that accepts connections, reads what comes and never answers
 * (a proxy that holds a WebSocket upgrade forever). `requests` counts the
 * connections that sent something.
 */
export async function startSilentServer() {
  const open = new Set();
  let requests = 0;
  const server = net.createServer((sock) => {
    open.add(sock);
    let counted = false;
    sock.on('data', () => {
      if (!counted) requests += 1;
      counted = true;
    });
    sock.on('error', () => undefined);
    sock.on('close', () => open.delete(sock));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    addr: `127.0.0.1:${server.address().port}`,
    get requests() {
      return requests;
    },
    close: () => new Promise((resolve) => {
      for (const s of open) s.destroy();
      server.close(resolve);
    }),
  };
}

/** Headless Chromium (Debian's; `CHROMIUM` overrides the path) for browser tests. */
export async function launchChromium() {
  const { chromium } = await import('playwright-core');
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-quic'],
  });
}
