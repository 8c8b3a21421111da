// A backend for benchmarking Tidings' hooks (docs/benchmarks.md, "Your
// backend in the loop"): allows every connect (naming the user), subscribe
// and publish after `--delay` ms, and counts webhook events (checking no
// signature: the receiver's cost is not what is measured).
//
//   node bench/peers/hooks/backend.mjs --port 9000 --delay 1
import { createServer } from 'node:http';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const port = arg('port', 9000);
const delay = arg('delay', 1);
let n = 0;
let events = 0;
let first = 0;
let last = 0;

createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    if (req.url === '/events') {
      const now = Date.now();
      events += JSON.parse(Buffer.concat(chunks)).events.length;
      first ||= now;
      last = now;
      res.writeHead(204).end();
      return;
    }
    const body = req.url === '/connect' ? { result: { user: `u${n++}` } } : { result: {} };
    const answer = () => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (delay > 0) setTimeout(answer, delay);
    else answer();
  });
}).listen(port, '127.0.0.1', () => console.error(`hooks backend on 127.0.0.1:${port}, ${delay} ms`));

// Webhook throughput, once a second while events arrive.
setInterval(() => {
  if (!events) return;
  const s = Math.max(1, last - first) / 1000;
  console.error(`webhook events: ${events} in ${s.toFixed(2)} s = ${Math.round(events / s)}/s`);
}, 1000).unref();
