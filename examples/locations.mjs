// Live locations. `drivers` drivers move around a city and publish their
// position `rate` times per second in all into `city:<name>`, keyed by the
// driver, through the server API. The `city` namespace has `delivery =
// "latest"`: a map that falls behind gets the newest position per driver,
// never an older one after a newer; pushes carry the server's `time`, so
// the map knows how fresh each position is.
//
//   cargo run --release -- --config examples/tidings.toml
//   node examples/locations.mjs [--drivers 500 --rate 2000 --maps 20 --seconds 20]
import { clients, isMain, options, pace, publish, sleep } from './common.mjs';

const DEFAULTS = {
  url: 'http://127.0.0.1:8000',
  apiKey: 'example-api-key',
  city: 'paris',
  drivers: 500,
  rate: 2000,
  maps: 20,
  seconds: 20,
};

/** A map: the newest position per driver, and whether one ever went back. */
function map(subscribe, city) {
  const m = { at: new Map(), wentBack: 0, updates: 0, ageMs: [] };
  subscribe(`city:${city}`).on('publication', (p) => {
    m.updates += 1;
    const prev = m.at.get(p.key);
    if (prev && prev.offset >= p.offset) m.wentBack += 1;
    m.at.set(p.key, { offset: p.offset, ...p.data });
    if (p.time) m.ageMs.push(Date.now() - p.time);
  });
  return m;
}

/**
 * Runs the drivers and the maps; resolves with every map and the newest
 * position per driver by offset.
 */
export async function runLocations(opts = {}) {
  const o = { ...DEFAULTS, ...opts };
  const maps = await clients(o, o.maps, (subscribe) => ({ map: map(subscribe, o.city) }));
  const pos = Array.from({ length: o.drivers }, () => ({ lat: 48.85 + Math.random() / 10, lng: 2.35 + Math.random() / 10 }));
  const newest = new Map();
  const published = await pace(o.rate, o.seconds, async (i) => {
    const d = i % o.drivers;
    pos[d] = { lat: pos[d].lat + (Math.random() - 0.5) / 1000, lng: pos[d].lng + (Math.random() - 0.5) / 1000 };
    const driver = `driver-${d}`;
    const { offset } = await publish(o.url, o.apiKey, { channel: `city:${o.city}`, key: driver, data: pos[d] });
    if (!(newest.get(driver)?.offset > offset)) newest.set(driver, { offset, ...pos[d] });
  });
  await sleep(1000);
  for (const m of maps) m.client.disconnect();
  return { maps, newest, published };
}

if (isMain(import.meta)) {
  const o = options(DEFAULTS);
  console.log(`locations: ${o.drivers} drivers, ${o.rate} positions/s for ${o.seconds}s; ${o.maps} maps`);
  const r = await runLocations(o);
  let off = 0;
  let back = 0;
  for (const { map: m } of r.maps) {
    back += m.wentBack;
    for (const [driver, p] of r.newest) if (m.at.get(driver)?.offset !== p.offset) off += 1;
  }
  const ages = r.maps.flatMap((m) => m.map.ageMs).sort((a, b) => a - b);
  const p99 = ages[Math.floor(ages.length * 0.99)] ?? 0;
  console.log(`published ${r.published} positions; maps got ${Math.round(ages.length / r.maps.length)} each; age at arrival p99 ${p99} ms`);
  console.log(off === 0 && back === 0 ? 'every map shows the newest position of every driver, and none went back' : `${off} stale positions, ${back} went back`);
  process.exit(off === 0 && back === 0 ? 0 : 1);
}
