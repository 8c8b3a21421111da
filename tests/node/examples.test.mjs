// The examples (examples/*.mjs) run, small, against the server configured
// by examples/tidings.toml, over WebSocket and SSE: the ticker's clients
// end with the latest price of each symbol they watch and get no more than
// one update per second per symbol; every scoreboard viewer ends with the
// final score and the newest statistics; every map ends with the newest
// position of each driver and never goes back.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { API_KEY, startTidings } from './harness.mjs';
import { runTicker } from '../../examples/ticker.mjs';
import { runScoreboard, sameBoard } from '../../examples/scoreboard.mjs';
import { runLocations } from '../../examples/locations.mjs';

const examples = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../examples');
// The examples' own configuration, on a free port with the test's API key.
const CONFIG = readFileSync(path.join(examples, 'tidings.toml'), 'utf8')
  .replace(/^listen = .*$/m, 'listen = "127.0.0.1:0"')
  .replace(/^api_keys = .*$/m, `api_keys = ["${API_KEY}"]`);

let server;
let url;
before(async () => {
  server = await startTidings(CONFIG);
  url = `http://${server.addr}`;
});
after(() => server?.stop());

for (const transport of ['websocket', 'sse']) {
  const common = () => ({ url, apiKey: API_KEY, WebSocket, transports: [transport] });

  test(`${transport}: ticker — the latest price of every symbol, at most one update a second`, { timeout: 60_000 }, async () => {
    const r = await runTicker({ ...common(), symbols: 40, rate: 300, clients: 4, watch: 10, seconds: 3 });
    assert.ok(r.published >= 800, `the feed published (${r.published})`);
    for (const v of r.viewers) {
      for (const [s, ups] of v.updates) {
        if (!r.last.has(s)) continue;
        assert.equal(ups.at(-1)?.price, r.last.get(s).price, `${s} ends with its latest price`);
        // One at once, then one per second (the run lasts r.seconds).
        assert.ok(ups.length <= Math.floor(r.seconds) + 1, `${s}: ${ups.length} updates in ${r.seconds} s`);
      }
    }
  });

  test(`${transport}: scoreboard — every viewer ends with the final score and statistics`, { timeout: 60_000 }, async () => {
    const r = await runScoreboard({ ...common(), match: `m-${transport}`, rate: 200, goals: 3, viewers: 3, seconds: 2 });
    for (const v of r.viewers) {
      assert.ok(sameBoard(v.board, r.truth), `${JSON.stringify(v.board)} shows ${JSON.stringify(r.truth)}`);
      assert.ok(v.board.goalsSeen >= 1);
    }
  });

  test(`${transport}: locations — every map ends with the newest position per driver`, { timeout: 60_000 }, async () => {
    const r = await runLocations({ ...common(), city: `c-${transport}`, drivers: 40, rate: 300, maps: 3, seconds: 2 });
    for (const { map } of r.maps) {
      assert.equal(map.wentBack, 0, 'never an older position after a newer');
      for (const [driver, p] of r.newest) assert.equal(map.at.get(driver)?.offset, p.offset, `${driver} is where it is`);
      assert.ok(map.ageMs.length > 0, 'pushes carry the server time');
    }
  });
}
