// The "Live classroom" page: presence, chat with optimistic sends, Q&A with
// upvotes, a live poll. All of it is state folded from channel publications
// (history first, then live), through the Tidings SDK served at /sdk/.
import { Optimistic, Typing, TypingWatcher } from '/sdk/index.js';
import {
  LOBBY, POLL, POLL_OPTIONS, POLL_QUESTION, QA, TYPING,
  bindIndicator, chatFold, chatMessages, clock, devToken, esc, makeClient, pollFold, pollResults, qaFold, qaList,
  trackPresence, transportsFromUrl,
} from '/common.js';

const $ = (id) => document.getElementById(id);
const NAME_KEY = 'tidings-demo-name';

bindIndicatorPlaceholder();

$('join-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const name = $('join-name').value.trim();
  if (!name) return;
  await join(name);
});

// A reload keeps you in the class (and sends what the outbox still holds).
const saved = localStorage.getItem(NAME_KEY);
if (saved) join(saved);

function bindIndicatorPlaceholder() {
  $('conn').querySelector('.label').textContent = 'Not joined';
}

async function join(name) {
  $('join-error').textContent = '';
  let first;
  try {
    first = await devToken(name);
  } catch (err) {
    $('join-error').textContent = `${err.message}. The demo needs the server in dev mode (cargo run --release, no secret configured).`;
    localStorage.removeItem(NAME_KEY);
    return;
  }
  localStorage.setItem(NAME_KEY, name);
  const me = { user: first.user, name };
  let initial = first.token;
  const client = makeClient({
    // The first token is the one just fetched; later ones (expiry, refresh)
    // come from the same endpoint.
    getToken: async () => {
      if (initial) {
        const t = initial;
        initial = null;
        return t;
      }
      return (await devToken(name)).token;
    },
    transports: transportsFromUrl(undefined),
    outboxName: me.user,
  });
  window.tidings = client; // for the curious, and for the tests

  $('join').hidden = true;
  $('room').hidden = false;
  $('me').hidden = false;
  $('me').innerHTML = `You are <b>${esc(name)}</b> · <button type="button" class="link" id="leave">leave</button>`;
  $('leave').addEventListener('click', () => {
    localStorage.removeItem(NAME_KEY);
    client.disconnect();
    location.reload();
  });
  bindIndicator(client, $('conn'));

  // Every channel starts from the beginning of its retained history so that
  // the page can fold the class's state; after that, recovery on reconnect.
  const lobby = client.subscribe(LOBBY, { since: 'start' });
  // Snapshot channels: the server's latest snapshot and what followed it
  // (the whole channel while it has none), whatever history still holds.
  const qa = client.subscribe(QA, { snapshot: true });
  const poll = client.subscribe(POLL, { snapshot: true });
  for (const sub of [lobby, qa, poll]) {
    sub.on('error', (err) => showError(`${sub.channel}: ${err.message} (${err.code})`));
  }

  setUpPresence(lobby, me);
  setUpChat(client, lobby, me);
  setUpQa(client, qa, me);
  setUpPoll(client, poll, me);
  setUpTyping(client, me);
  client.on('error', (err) => showError(`${err.message} (${err.code})`));
  await client.ready;
  client.connect();
}

function showError(text) {
  $('composer-error').textContent = text;
}

// ---- presence -----------------------------------------------------------

function setUpPresence(lobby, me) {
  trackPresence(lobby, (users) => {
    users.set(me.user, me.name);
    $('presence-count').textContent = String(users.size);
    $('presence').innerHTML = [...users.entries()]
      .sort((a, b) => a[1].localeCompare(b[1]))
      .map(([user, name]) => `<li data-testid="person" data-user="${esc(user)}"><span class="avatar" style="--h:${hue(user)}">${esc(name.slice(0, 1).toUpperCase())}</span>${esc(name)}${user === me.user ? ' <span class="muted">(you)</span>' : ''}</li>`)
      .join('');
  });
}

function hue(s) {
  let h = 0;
  for (const c of s) h = (h * 31 + c.charCodeAt(0)) % 360;
  return h;
}

// ---- chat ---------------------------------------------------------------

function setUpChat(client, lobby, me) {
  const chat = new Optimistic(client, lobby, chatFold(me));
  const input = $('composer-input');
  const list = $('messages');

  const render = () => {
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const rows = chatMessages(chat.confirmed).map((m) => row(m, m.user === me.user ? 'sent' : null, null));
    for (const p of chat.pending) {
      rows.push(row({ text: p.data.text, name: me.name, user: me.user, time: Date.now(), cid: p.key }, p.status, p));
    }
    list.innerHTML = rows.join('');
    if (atBottom) list.scrollTop = list.scrollHeight;
  };
  const row = (m, status, pending) => {
    const labels = { sending: 'sending…', sent: 'sent', failed: 'failed' };
    const actions = status === 'failed'
      ? ` <button type="button" class="link" data-retry="${esc(pending.key)}">retry</button> <button type="button" class="link" data-dismiss="${esc(pending.key)}">dismiss</button>`
      : '';
    const why = status === 'failed' && pending?.error ? ` title="${esc(pending.error.message)}"` : '';
    return `<li class="msg${m.user === me.user ? ' mine' : ''}" data-testid="message" data-status="${status ?? ''}"${m.cid ? ` data-cid="${esc(m.cid)}"` : ''}>`
      + `<span class="who">${esc(m.name)}</span><span class="text" data-testid="message-text">${esc(m.text)}</span>`
      + `<span class="meta"><time>${clock(m.time)}</time>${status ? ` <span class="status status-${status}" data-testid="message-status"${why}>${labels[status]}</span>` : ''}${actions}</span></li>`;
  };
  chat.on('change', render);
  chat.on('rejected', ({ item, error }) => {
    // Give the text back unless the user already typed something else.
    if (!input.value) input.value = item.data.text;
    showError(`Not sent: ${error.message} (code ${error.code}). Your text is still in the box.`);
  });
  list.addEventListener('click', (e) => {
    const retry = e.target.closest('[data-retry]');
    const dismiss = e.target.closest('[data-dismiss]');
    if (retry) chat.retry(retry.dataset.retry);
    if (dismiss) chat.dismiss(dismiss.dataset.dismiss);
  });
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    $('composer-error').textContent = '';
    input.value = '';
    chat.send({ type: 'msg', text });
  });
  render();
}

// ---- typing ---------------------------------------------------------------

function setUpTyping(client, me) {
  const typing = new Typing(client, TYPING);
  $('composer-input').addEventListener('input', () => typing.keystroke());
  $('composer').addEventListener('submit', () => typing.stop());
  new TypingWatcher(client, TYPING, (names) => {
    const others = names.filter((n) => n !== me.name);
    $('typing').textContent = others.length === 0 ? ''
      : others.length === 1 ? `${others[0]} is typing…` : `${others.join(', ')} are typing…`;
  });
}

// ---- Q&A ------------------------------------------------------------------

function setUpQa(client, qa, me) {
  const state = new Optimistic(client, qa, qaFold(me));
  const render = () => {
    const items = qaList(state.state);
    $('questions').innerHTML = items.length === 0 ? '<li class="empty muted">No questions yet. Ask the first one!</li>'
      : items.map((q) => {
        const mine = q.voters.has(me.user);
        const canVote = typeof q.key === 'number' && !mine;
        return `<li data-testid="question" data-key="${esc(q.key)}" class="${q.pending ? 'pending' : ''}">`
          + `<button type="button" class="vote${mine ? ' voted' : ''}" data-testid="upvote" data-q="${esc(q.key)}" ${canVote ? '' : 'disabled'} aria-label="Upvote">▲<span data-testid="votes">${q.votes}</span></button>`
          + `<div><div class="q-text">${esc(q.text)}</div><div class="muted">${esc(q.name)}${q.pending ? ' · sending…' : ''}</div></div></li>`;
      }).join('');
  };
  state.on('change', render);
  state.on('rejected', ({ error }) => showError(`Question not sent: ${error.message} (code ${error.code})`));
  $('questions').addEventListener('click', (e) => {
    const b = e.target.closest('[data-q]');
    if (b && !b.disabled) state.send({ type: 'upvote', q: Number(b.dataset.q) });
  });
  $('qa-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = $('qa-input').value.trim();
    if (!text) return;
    $('qa-input').value = '';
    state.send({ type: 'ask', text });
  });
  render();
}

// ---- poll -------------------------------------------------------------------

function setUpPoll(client, poll, me) {
  const state = new Optimistic(client, poll, pollFold(me));
  $('poll-question').textContent = POLL_QUESTION;
  const render = () => {
    const { counts, total } = pollResults(state.state);
    const mine = state.state.votes.get(me.user)?.option;
    $('poll-total').textContent = String(total);
    $('poll').innerHTML = POLL_OPTIONS.map((o) => {
      const pct = total ? Math.round((counts[o.id] / total) * 100) : 0;
      return `<button type="button" class="option${mine === o.id ? ' chosen' : ''}" data-testid="vote-${o.id}" data-option="${o.id}">`
        + `<span class="bar" style="width:${pct}%"></span><span class="o-label">${esc(o.label)}</span>`
        + `<span class="o-count" data-testid="result-${o.id}">${counts[o.id]}</span></button>`;
    }).join('');
  };
  state.on('change', render);
  $('poll').addEventListener('click', (e) => {
    const b = e.target.closest('[data-option]');
    if (b) state.send({ type: 'vote', option: b.dataset.option });
  });
  render();
}
