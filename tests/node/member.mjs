// A presence member in its own process, so a test can freeze it (SIGSTOP)
// as a backgrounded tab or a stopped app would be frozen:
//   node member.mjs <addr> <transport> <channel> <token>
// Prints "ready" once subscribed, then stays until killed.
import WebSocket from 'ws';
import { MemoryOutboxStore, TidingsClient } from '../../sdk/js/dist/index.js';

const [addr, transport, channel, token] = process.argv.slice(2);
const c = new TidingsClient({
  url: `http://${addr}`,
  WebSocket,
  token,
  transports: [transport],
  outbox: new MemoryOutboxStore(),
  minReconnectDelay: 50,
  maxReconnectDelay: 400,
});
const sub = c.subscribe(channel);
sub.on('subscribed', () => process.stdout.write('ready\n'));
c.connect();
