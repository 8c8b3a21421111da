// An app backend for Tidings' hooks (docs/backend.md): a live auction.
//
//   POST /tidings/connect    who is this? (the `session` cookie names the user)
//   POST /tidings/subscribe  may they watch this lot? (ended lots: no)
//   POST /tidings/publish    is this bid above the current price? (stamped)
//   POST /tidings/events     webhooks: signature checked, deduplicated by id
//
// Run: `node examples/backend.mjs` (port 9000, WEBHOOK_SECRET or "whsec-example"),
// then `tidings --config examples/backend.toml`.
import { createHmac, timingSafeEqual } from 'node:crypto';
import { createServer } from 'node:http';
import { fileURLToPath } from 'node:url';

/** Checks `X-Tidings-Signature: t=<seconds>,v1=<hex>` against the raw body. */
export function verifySignature(secret, header, body, toleranceS = 300) {
  const parts = Object.fromEntries(
    String(header ?? '').split(',').map((p) => p.trim().split('=', 2)),
  );
  const t = Number(parts.t);
  if (!Number.isInteger(t) || !parts.v1) return false;
  if (Math.abs(Date.now() / 1000 - t) > toleranceS) return false; // a replay
  const expected = createHmac('sha256', secret).update(`${t}.`).update(body).digest();
  const given = Buffer.from(parts.v1, 'hex');
  return given.length === expected.length && timingSafeEqual(given, expected);
}

/** Starts the backend; resolves with its URL, the events received and a close. */
export async function startBackend({ port = 9000, secret = 'whsec-example', log = console.log } = {}) {
  const prices = new Map(); // lot channel → current price
  const events = new Map(); // webhook event id → event (a retry is not counted twice)
  const answer = (res, status, body) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(body === undefined ? '' : JSON.stringify(body));
  };
  const routes = {
    '/tidings/connect': (req) => {
      const user = /(?:^|;\s*)session=([^;]+)/.exec(req.headers?.cookie ?? '')?.[1];
      if (user === 'banned') return { error: { code: 1403, message: 'you are banned' } };
      // Guests may watch; they connect anonymously.
      return { result: user ? { user, data: { hello: user } } : { data: { hello: 'guest' } } };
    },
    '/tidings/subscribe': (req) =>
      req.channel.includes('ended')
        ? { error: { code: 1404, message: 'this auction has ended' } }
        : { result: {} },
    '/tidings/publish': (req) => {
      const price = prices.get(req.channel) ?? 100;
      const bid = Number(req.data?.bid);
      if (!req.user) return { error: { code: 103, message: 'sign in to bid' } };
      if (!(bid > price)) return { error: { code: 1001, message: `bid more than ${price}` } };
      prices.set(req.channel, bid);
      // What subscribers get: the bid as the backend recorded it.
      return { result: { data: { bid, user: req.user, at: Date.now() } } };
    },
  };
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      if (req.url === '/tidings/events') {
        if (!verifySignature(secret, req.headers['x-tidings-signature'], body)) return answer(res, 401);
        for (const e of JSON.parse(body).events) {
          if (events.has(e.id)) continue;
          events.set(e.id, e);
          log(`webhook: ${e.event} ${e.channel ?? ''} ${e.user ?? ''}`.trim());
        }
        return answer(res, 204);
      }
      const route = routes[req.url];
      if (!route) return answer(res, 404, { error: 'no such hook' });
      try {
        answer(res, 200, route(JSON.parse(body)));
      } catch {
        answer(res, 400, { error: 'bad request' });
      }
    });
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${server.address().port}`;
  return { url, events, close: () => new Promise((resolve) => server.close(resolve)) };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { url } = await startBackend({ secret: process.env.WEBHOOK_SECRET ?? 'whsec-example' });
  console.log(`auction backend on ${url}`);
}
