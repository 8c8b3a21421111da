// A stock ticker. A feed publishes price updates for `symbols` symbols at
// `rate` updates per second through the server API, one channel per
// symbol (`ticker:S0001`, keyed by the symbol); `clients` clients each
// watch `watch` symbols. The `ticker` namespace has `max_rate = 1.0`: a
// client gets at most one update per second per symbol, always the latest
// price, and the last price always arrives (trailing edge).
//
//   cargo run --release -- --config examples/tidings.toml
//   node examples/ticker.mjs [--symbols 1000 --rate 5000 --clients 50 --watch 20 --seconds 30]
import { clients, isMain, options, pace, publish, sleep } from './common.mjs';

const DEFAULTS = {
  url: 'http://127.0.0.1:8000',
  apiKey: 'example-api-key',
  symbols: 1000,
  rate: 5000,
  clients: 50,
  watch: 20,
  seconds: 30,
};

const symbol = (i) => `S${String(i).padStart(4, '0')}`;

/**
 * Runs the feed and the watching clients; resolves with what each client
 * saw ({ watched, updates: Map symbol -> [{ price, at }] }) and the feed's
 * last price per symbol.
 */
export async function runTicker(opts = {}) {
  const o = { ...DEFAULTS, ...opts };
  const viewers = await clients(o, o.clients, (subscribe, c) => {
    const watched = Array.from({ length: o.watch }, (_, j) => symbol((c * o.watch + j) % o.symbols));
    const updates = new Map(watched.map((s) => [s, []]));
    for (const s of watched) {
      subscribe(`ticker:${s}`).on('publication', (p) => updates.get(s).push({ price: p.data.price, at: Date.now() }));
    }
    return { watched, updates };
  });
  const prices = new Map();
  // The newest price per symbol is the one with the highest offset
  // (concurrent publishes of one symbol may land in either order).
  const last = new Map();
  const started = Date.now();
  // Publications the server acknowledged with an offset.
  let published = 0;
  await pace(o.rate, o.seconds, async (i) => {
    const s = symbol(Math.floor(Math.random() * o.symbols));
    const price = Math.round(((prices.get(s) ?? 100) + (Math.random() - 0.5)) * 100) / 100;
    prices.set(s, price);
    const { offset } = await publish(o.url, o.apiKey, { channel: `ticker:${s}`, key: s, data: { symbol: s, price, i } });
    if (typeof offset === 'number') published += 1;
    if (!(last.get(s)?.offset > offset)) last.set(s, { offset, price });
  });
  const feedSeconds = (Date.now() - started) / 1000;
  // The trailing values leave within one interval.
  await sleep(1500);
  const seconds = (Date.now() - started) / 1000;
  for (const v of viewers) v.client.disconnect();
  return { viewers, last, published, feedSeconds, seconds };
}

if (isMain(import.meta)) {
  const o = options(DEFAULTS);
  console.log(`ticker: ${o.symbols} symbols, ${o.rate} updates/s for ${o.seconds}s; ${o.clients} clients watching ${o.watch} each`);
  const r = await runTicker(o);
  let received = 0;
  let stale = 0;
  let busiest = 0;
  for (const v of r.viewers) {
    for (const [s, ups] of v.updates) {
      received += ups.length;
      busiest = Math.max(busiest, ups.length);
      if (r.last.has(s) && ups.at(-1)?.price !== r.last.get(s).price) stale += 1;
    }
  }
  const perClient = received / r.viewers.length / r.seconds;
  console.log(`published ${r.published} updates in ${r.feedSeconds.toFixed(1)}s`);
  console.log(`each client got ${perClient.toFixed(1)} updates/s for its ${o.watch} symbols (at most ${o.watch}/s by max_rate); busiest symbol: ${busiest} updates in ${r.seconds.toFixed(1)}s`);
  console.log(stale === 0 ? 'every client ends with the latest price of every symbol it watches' : `${stale} (client, symbol) pairs did not end with the latest price`);
  process.exit(stale === 0 ? 0 : 1);
}
