// The class dashboard: read-only, over Server-Sent Events only (no
// WebSocket), anonymous (dev mode allows it). The same folds as the class
// page, without optimistic parts.
import {
  LOBBY, POLL, POLL_OPTIONS, POLL_QUESTION, QA,
  bindIndicator, chatFold, chatMessages, clock, esc, makeClient, pollFold, pollResults, qaFold, qaList, trackPresence,
} from '/common.js';
import { Optimistic } from '/sdk/index.js';

const $ = (id) => document.getElementById(id);
const client = makeClient({ transports: ['sse'], outboxName: 'dashboard' });
window.tidings = client;
bindIndicator(client, $('conn'));
$('poll-question').textContent = POLL_QUESTION;

/**
 * Folds a subscription's publications with `fold` (no sends: `Optimistic`
 * only for its fold). On a reset it starts over and reloads every page of
 * the retained history, starting again if another reset comes during the
 * load, and applies publications that came during the load after it.
 */
function folded(channel, fold, render, opts = { since: 'start' }) {
  const sub = client.subscribe(channel, opts);
  const state = new Optimistic(client, sub, fold);
  state.on('change', render);
  render(state.state);
  return sub;
}

const lobby = folded(LOBBY, chatFold(null), (s) => {
  const msgs = chatMessages(s);
  $('stat-messages').textContent = String(msgs.length);
  $('feed').innerHTML = msgs.slice(-12).reverse()
    .map((m) => `<li class="msg" data-testid="feed-message"><span class="who">${esc(m.name)}</span><span class="text">${esc(m.text)}</span><span class="meta"><time>${clock(m.time)}</time></span></li>`)
    .join('') || '<li class="empty muted">Nothing said yet.</li>';
});

folded(QA, qaFold(null), (s) => {
  const list = qaList(s);
  $('stat-questions').textContent = String(list.length);
  $('questions').innerHTML = list.slice(0, 8)
    .map((q) => `<li data-testid="dash-question"><span class="vote voted readonly">▲<span>${q.votes}</span></span><div><div class="q-text">${esc(q.text)}</div><div class="muted">${esc(q.name)}</div></div></li>`)
    .join('') || '<li class="empty muted">No questions yet.</li>';
}, { snapshot: true });

folded(POLL, pollFold(null), (s) => {
  const { counts, total } = pollResults(s);
  $('stat-votes').textContent = String(total);
  $('poll').innerHTML = POLL_OPTIONS.map((o) => {
    const pct = total ? Math.round((counts[o.id] / total) * 100) : 0;
    return `<div class="option"><span class="bar" style="width:${pct}%"></span><span class="o-label">${esc(o.label)}</span><span class="o-count" data-testid="dash-result-${o.id}">${counts[o.id]} · ${pct}%</span></div>`;
  }).join('');
}, { snapshot: true });

trackPresence(lobby, (users) => {
  $('stat-people').textContent = String(users.size);
  $('presence').innerHTML = [...users.values()].sort().map((n) => `<li>${esc(n)}</li>`).join('')
    || '<li class="empty muted">Nobody yet.</li>';
});

client.connect();
