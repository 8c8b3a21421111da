// A live scoreboard. A feed publishes match statistics (possession, shots,
// passes, ...) at `rate` per second into `match:<id>-stats` and, now and
// then, a goal into `match:<id>`, through the server API. The `match`
// namespace makes publications `low` by default and conflates a slow
// subscriber's backlog to the newest value per statistic; goals are
// published `critical`, so a viewer that is behind gets the goal before
// the statistics still queued for it.
//
//   cargo run --release -- --config examples/tidings.toml
//   node examples/scoreboard.mjs [--rate 500 --goals 6 --viewers 20 --seconds 20]
import { clients, isMain, options, pace, publish, sleep } from './common.mjs';

const DEFAULTS = {
  url: 'http://127.0.0.1:8000',
  apiKey: 'example-api-key',
  match: 'final',
  rate: 500,
  goals: 6,
  viewers: 20,
  seconds: 20,
};

const STATS = ['possession', 'shots', 'shots_on_target', 'passes', 'corners', 'fouls', 'offsides', 'distance_km'];

/** A viewer's board: the score, the newest value of each statistic. */
function board(subscribe, match) {
  const b = { score: { home: 0, away: 0 }, stats: {}, goalsSeen: 0 };
  subscribe(`match:${match}`).on('publication', (p) => {
    b.score = p.data.score;
    b.goalsSeen += 1;
  });
  subscribe(`match:${match}-stats`).on('publication', (p) => {
    b.stats[p.key] = p.data.value;
  });
  return b;
}

/**
 * Runs the feed and the viewers; resolves with every viewer's board and
 * the truth (the newest value of each statistic by offset, the score).
 */
export async function runScoreboard(opts = {}) {
  const o = { ...DEFAULTS, ...opts };
  const viewers = await clients(o, o.viewers, (subscribe) => ({ board: board(subscribe, o.match) }));
  const truth = { score: { home: 0, away: 0 }, stats: {} };
  const newest = {};
  const total = Math.round(o.rate * o.seconds);
  const goalAt = new Set(Array.from({ length: o.goals }, (_, g) => Math.floor(((g + 0.5) * total) / o.goals)));
  let goals = Promise.resolve();
  await pace(o.rate, o.seconds, async (i) => {
    if (goalAt.has(i)) {
      const side = Math.random() < 0.5 ? 'home' : 'away';
      truth.score = { ...truth.score, [side]: truth.score[side] + 1 };
      const score = truth.score;
      // Goals go one after another: each carries the whole score.
      goals = goals.then(() => publish(o.url, o.apiKey, { channel: `match:${o.match}`, key: 'score', priority: 'critical', data: { score } }));
    }
    const stat = STATS[i % STATS.length];
    const value = Math.round(Math.random() * 1000) / 10;
    const { offset } = await publish(o.url, o.apiKey, { channel: `match:${o.match}-stats`, key: stat, data: { value } });
    if (!(newest[stat]?.offset > offset)) newest[stat] = { offset, value };
  });
  await goals;
  for (const [stat, { value }] of Object.entries(newest)) truth.stats[stat] = value;
  await sleep(1000);
  for (const v of viewers) v.client.disconnect();
  return { viewers, truth };
}

/** Whether a viewer's board shows `truth` (score and every statistic). */
export function sameBoard(b, truth) {
  const stats = Object.keys(truth.stats);
  return b.score.home === truth.score.home && b.score.away === truth.score.away
    && Object.keys(b.stats).length === stats.length && stats.every((s) => b.stats[s] === truth.stats[s]);
}

if (isMain(import.meta)) {
  const o = options(DEFAULTS);
  console.log(`scoreboard: ${o.rate} statistics/s and ${o.goals} goals over ${o.seconds}s; ${o.viewers} viewers`);
  const r = await runScoreboard(o);
  const wrong = r.viewers.filter((v) => !sameBoard(v.board, r.truth));
  console.log(`final score ${r.truth.score.home}-${r.truth.score.away}`);
  console.log(wrong.length === 0 ? 'every viewer shows the final score and the newest statistics' : `${wrong.length} viewers are off`);
  process.exit(wrong.length === 0 ? 0 : 1);
}
