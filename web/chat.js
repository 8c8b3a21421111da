// The chat demo: one-to-one and group conversations on a members namespace
// (`dm`), through the Tidings SDK served at /sdk/. The conversation list is
// the user's inbox (unread counts kept by `inbox` pushes, the same on every
// device); messages show ✓ sent, ✓✓ delivered and blue ✓✓ read from the
// other members' receipts; opening a conversation marks it read; messages
// may be sealed end to end (🔒), and the server then only relays ciphertext.
import { Inbox, LocalStorageKeyStore, TidingsClient, Typing, TypingWatcher, isEnvelope } from '/sdk/index.js';
import { bindIndicator, clock, devToken, esc, transportsFromUrl } from '/common.js';

const $ = (id) => document.getElementById(id);
const NAME_KEY = 'tidings-chat-name';
const ENCRYPT_KEY = 'tidings-chat-encrypt';

/** Signed-in state. */
let me = null;
let client = null;
let inbox = null;
let token = null;
/** The open conversation. */
let view = null;
/** Other members of each conversation (for titles), by channel. */
const peersOf = new Map();
/** Opened previews of encrypted last messages, by `channel#offset`. */
const previews = new Map();
let signingIn = false;

$('signin-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const name = $('signin-name').value.trim();
  if (name) signIn(name);
});

// A reload (or a second tab) signs in again with the same name.
const saved = localStorage.getItem(NAME_KEY);
if (saved) signIn(saved);

async function signIn(name) {
  if (signingIn || client) return;
  signingIn = true;
  $('signin').hidden = true;
  $('signin-error').textContent = '';
  let first;
  try {
    first = await devToken(name);
  } catch (err) {
    signingIn = false;
    $('signin').hidden = false;
    $('signin-error').textContent = `${err.message}. The demo needs the server in dev mode (cargo run, no secret configured).`;
    localStorage.removeItem(NAME_KEY);
    return;
  }
  localStorage.setItem(NAME_KEY, name);
  me = { user: first.user, name };
  token = first.token;
  let initial = first.token;
  client = new TidingsClient({
    getToken: async () => {
      if (initial) {
        const t = initial;
        initial = null;
        return t;
      }
      token = (await devToken(name)).token;
      return token;
    },
    transports: transportsFromUrl(undefined),
    outboxName: `chat:${me.user}`,
    minReconnectDelay: 500,
    maxReconnectDelay: 10_000,
    // This browser is one device: its key pair stays in localStorage.
    e2ee: { keyStore: new LocalStorageKeyStore() },
  });
  window.tidings = client; // for the curious, and for the tests

  $('signin').hidden = true;
  $('app').hidden = false;
  $('me').hidden = false;
  $('me').innerHTML = `You are <b>${esc(name)}</b> · <button type="button" class="link" id="signout">sign out</button>`;
  $('signout').addEventListener('click', () => {
    localStorage.removeItem(NAME_KEY);
    client.disconnect();
    location.reload();
  });
  bindIndicator(client, $('conn'));
  client.on('error', (err) => showError(`${err.message} (${err.code})`));

  // Marking conversations delivered as soon as this device hears of them
  // gives their senders ✓✓ while the page is open, before they are read.
  inbox = new Inbox(client, { markDelivered: true });
  inbox.on('change', renderList);
  inbox.on('error', (err) => showError(`inbox: ${err.message} (${err.code})`));

  $('encrypt').checked = localStorage.getItem(ENCRYPT_KEY) === '1';
  $('encrypt').addEventListener('change', () => localStorage.setItem(ENCRYPT_KEY, $('encrypt').checked ? '1' : '0'));
  $('new-chat').addEventListener('submit', (e) => {
    e.preventDefault();
    startConversation($('new-chat-name').value);
  });
  $('conversations').addEventListener('click', (e) => {
    const row = e.target.closest('[data-channel]');
    if (row) openConversation(row.dataset.channel);
  });
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    send();
  });
  document.addEventListener('visibilitychange', markRead);
  await client.ready;
  client.connect();
}

function showError(text) {
  const el = view ? $('composer-error') : $('new-chat-error');
  el.textContent = text;
}

// ---- conversations ----------------------------------------------------------

/** Asks the dev endpoint for the conversation with these people, then opens it. */
async function startConversation(text) {
  $('new-chat-error').textContent = '';
  const names = text.split(',').map((s) => s.trim().toLowerCase()).filter((s) => s && s !== me.user);
  if (names.length === 0) return;
  try {
    const res = await fetch('/v1/dev/dm', {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ with: names }),
    });
    const body = await res.json().catch(() => null);
    if (!res.ok || typeof body?.channel !== 'string') throw new Error(body?.error?.message ?? `HTTP ${res.status}`);
    $('new-chat-name').value = '';
    peersOf.set(body.channel, names.sort());
    inbox.load().catch(() => undefined);
    openConversation(body.channel);
  } catch (err) {
    $('new-chat-error').textContent = `Could not start the conversation: ${err.message}`;
  }
}

/** The other members of `channel`, read once (null until known). */
function peers(channel) {
  if (!peersOf.has(channel)) {
    peersOf.set(channel, null);
    client.members(channel).then((page) => {
      peersOf.set(channel, page.users.filter((u) => u !== me.user));
      renderList();
      if (view?.channel === channel) renderHeader();
    }, () => peersOf.delete(channel));
  }
  return peersOf.get(channel);
}

function titleOf(channel) {
  const p = peers(channel);
  return p ? (p.length ? p.join(', ') : 'just you') : '…';
}

function preview(c) {
  const last = c.last;
  if (!last) return '';
  const who = last.info?.user === me.user ? 'You: ' : '';
  if (isEnvelope(last.data)) {
    const key = `${c.channel}#${last.offset}`;
    if (!previews.has(key)) {
      previews.set(key, '🔒 …');
      client.e2ee?.open(last).then((p) => {
        previews.set(key, p.undecryptable ? '🔒 Encrypted message' : `🔒 ${textOf(p.data)}`);
        renderList();
      });
    }
    return who + previews.get(key);
  }
  return who + textOf(last.data);
}

function textOf(data) {
  return typeof data?.text === 'string' ? data.text : JSON.stringify(data);
}

function renderList() {
  if (!inbox) return;
  const list = inbox.conversations;
  $('unread-total').textContent = String(inbox.unreadTotal);
  $('conversations').innerHTML = list.length === 0
    ? '<li class="empty muted">No conversations yet.</li>'
    : list.map((c) => {
      const active = view?.channel === c.channel ? ' active' : '';
      return `<li class="conv${active}" data-testid="conversation" data-channel="${esc(c.channel)}" data-unread="${c.unread}">`
        + `<div class="conv-line"><span class="conv-title" data-testid="conversation-title">${esc(titleOf(c.channel))}</span>`
        + `<time class="muted">${c.activeAt ? clock(c.activeAt) : ''}</time></div>`
        + `<div class="conv-line"><span class="conv-preview muted" data-testid="conversation-preview">${esc(preview(c))}</span>`
        + `<span class="badge" data-testid="unread-badge" data-count="${c.unread}"${c.unread ? '' : ' hidden'}>${c.unread}</span></div></li>`;
    }).join('');
}

// ---- one conversation -------------------------------------------------------

function closeConversation() {
  if (!view) return;
  view.typing.stop();
  view.watcher.destroy();
  client.getSubscription(view.typingChannel)?.unsubscribe();
  clearInterval(view.timer);
  view.sub.unsubscribe();
  view = null;
}

function openConversation(channel) {
  if (view?.channel === channel) return;
  closeConversation();
  $('composer-error').textContent = '';
  // The whole retained history first, then live; receipts: this device
  // marks what it receives as delivered, and learns the members.
  const sub = client.subscribe(channel, { since: 'start', receipts: true });
  const typingChannel = `demo_typing:${channel.replace(/:/g, '_')}`;
  view = {
    channel,
    sub,
    typingChannel,
    messages: new Map(),
    pending: new Map(),
    presence: new Map(),
    lastSeen: {},
    typing: new Typing(client, typingChannel),
    watcher: null,
    timer: null,
  };
  const v = view;
  v.watcher = new TypingWatcher(client, typingChannel, (names) => {
    if (view !== v) return;
    $('typing').textContent = names.length === 0 ? ''
      : names.length === 1 ? `${names[0]} is typing…` : `${names.join(', ')} are typing…`;
  });
  sub.on('publication', (p) => {
    if (view !== v || p.offset === undefined) return;
    v.messages.set(p.offset, toMessage(p));
    const cid = p.data?.cid;
    if (typeof cid === 'string') v.pending.delete(cid);
    renderMessages();
    markRead();
  });
  sub.on('reset', () => {
    // Too far behind to recover: show the newest history again.
    v.messages.clear();
    sub.history({ reverse: true, limit: 200 }).then((h) => {
      for (const p of h.publications) if (p.offset !== undefined) v.messages.set(p.offset, toMessage(p));
      renderMessages();
      markRead();
    }, () => undefined);
  });
  sub.on('delivery', () => scheduleRender());
  sub.on('error', (err) => showError(`${err.message} (${err.code})`));
  sub.on('subscribed', async (e) => {
    let entries = e.presence;
    if (!entries) entries = await sub.presence().catch(() => ({}));
    v.presence = new Map(Object.values(entries).map((x) => [x.client, x.user]));
    renderHeader();
  });
  sub.on('join', (e) => { v.presence.set(e.client, e.user); renderHeader(); });
  sub.on('leave', (e) => { v.presence.delete(e.client); refreshStatus(); });
  // Presence and last seen, again every few seconds while open.
  v.timer = setInterval(refreshStatus, 5000);
  $('empty-view').hidden = true;
  $('view-body').hidden = false;
  $('view').dataset.channel = channel;
  $('messages').innerHTML = '';
  $('typing').textContent = '';
  $('composer-input').oninput = () => v.typing.keystroke();
  renderHeader();
  refreshStatus();
  renderList();
  $('composer-input').focus();
}

async function refreshStatus() {
  const v = view;
  if (!v) return;
  const others = peers(v.channel) ?? [];
  try {
    const [entries, seen] = await Promise.all([
      v.sub.presence().catch(() => null),
      others.length ? client.lastSeen(others).catch(() => ({})) : {},
    ]);
    if (view !== v) return;
    if (entries) v.presence = new Map(Object.values(entries).map((x) => [x.client, x.user]));
    v.lastSeen = seen;
  } finally {
    if (view === v) renderHeader();
  }
}

function renderHeader() {
  const v = view;
  if (!v) return;
  const others = peers(v.channel);
  $('peer-name').textContent = others ? (others.length ? others.join(', ') : 'just you') : '…';
  const online = new Set(v.presence.values());
  let status = '';
  if (others && others.length === 1) {
    const peer = others[0];
    if (online.has(peer)) status = 'online';
    else if (typeof v.lastSeen[peer] === 'number') status = `last seen ${when(v.lastSeen[peer])}`;
    else status = v.lastSeen[peer] === null ? 'not seen yet' : '';
  } else if (others) {
    const here = others.filter((u) => online.has(u));
    status = `${others.length + 1} members${here.length ? ` · online: ${here.join(', ')}` : ''}`;
  }
  $('peer-status').textContent = status;
  $('peer-status').dataset.online = String(status === 'online');
}

function when(ms) {
  const d = new Date(ms);
  const today = new Date();
  return d.toDateString() === today.toDateString() ? `today at ${clock(ms)}` : `${d.toLocaleDateString()} ${clock(ms)}`;
}

function toMessage(p) {
  const user = p.info?.user ?? '';
  const name = typeof p.info?.info?.name === 'string' ? p.info.info.name : user || 'server';
  let text;
  if (p.undecryptable !== undefined) text = 'This message is encrypted for other devices: it cannot be read here.';
  else text = textOf(p.data);
  return {
    offset: p.offset,
    user,
    name,
    text,
    time: p.time ?? Date.now(),
    encrypted: p.encrypted === true,
    undecryptable: p.undecryptable !== undefined,
  };
}

/** Marks the open conversation read up to the newest message shown (when the page is visible). */
function markRead() {
  if (!view || document.visibilityState === 'hidden') return;
  let max = 0;
  for (const o of view.messages.keys()) max = Math.max(max, o);
  if (max > 0) view.sub.markRead(max);
}

// Receipts may come in bursts: one render for a burst. (A timer, not
// requestAnimationFrame: ticks must change in a background tab too.)
let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => {
    renderQueued = false;
    renderMessages();
  }, 50);
}

/** A message's state for its sender: sending, sent, delivered, read (a group: when every other member has). */
function stateOf(m) {
  const s = view.sub.deliveryState(m.offset);
  if (typeof s === 'string') return { state: s, title: s };
  const state = s.members > 0 && s.read === s.members ? 'read'
    : s.members > 0 && s.delivered === s.members ? 'delivered' : 'sent';
  return { state, title: `delivered to ${s.delivered} of ${s.members}, read by ${s.read}` };
}

const TICKS = { sending: '🕓', sent: '✓', delivered: '✓✓', read: '✓✓', failed: '⚠' };

function renderMessages() {
  const v = view;
  if (!v) return;
  const list = $('messages');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const rows = [...v.messages.values()].sort((a, b) => a.offset - b.offset).map((m) => {
    const mine = m.user === me.user;
    const st = mine ? stateOf(m) : null;
    return row(m, mine, st);
  });
  for (const p of v.pending.values()) {
    if (p.offset !== undefined && v.messages.has(p.offset)) continue;
    const m = { text: p.text, name: me.name, user: me.user, time: p.time, encrypted: p.encrypt, undecryptable: false };
    rows.push(row(m, true, { state: p.status, title: p.status === 'failed' ? p.error?.message ?? 'failed' : p.status }));
  }
  list.innerHTML = rows.join('');
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function row(m, mine, st) {
  const lock = m.encrypted ? `<span class="lock" data-testid="message-lock" title="${m.undecryptable ? 'encrypted for other devices' : 'end-to-end encrypted'}">🔒</span>` : '';
  const ticks = st ? `<span class="ticks ticks-${st.state}" data-testid="message-ticks" title="${esc(st.title)}">${TICKS[st.state] ?? ''}${st.state === 'read' ? ' <span class="read-label">read</span>' : ''}</span>` : '';
  return `<li class="msg${mine ? ' mine' : ''}${m.undecryptable ? ' undecryptable' : ''}" data-testid="message"`
    + `${m.offset !== undefined ? ` data-offset="${m.offset}"` : ''} data-mine="${mine}" data-state="${st?.state ?? ''}" data-encrypted="${m.encrypted}">`
    + `<span class="who">${esc(m.name)}</span><span class="text" data-testid="message-text">${esc(m.text)}</span>`
    + `<span class="meta">${lock}<time>${clock(m.time)}</time>${ticks}</span></li>`;
}

function send() {
  const v = view;
  const input = $('composer-input');
  const text = input.value.trim();
  if (!v || !text) return;
  $('composer-error').textContent = '';
  input.value = '';
  v.typing.stop();
  const cid = globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random().toString(36).slice(2)}`;
  const encrypt = $('encrypt').checked;
  const pending = { cid, text, status: 'sending', encrypt, time: Date.now() };
  v.pending.set(cid, pending);
  renderMessages();
  v.sub.publish({ text, cid }, { idempotencyKey: cid, encrypt }).then((r) => {
    pending.status = 'sent';
    pending.offset = r.offset;
    if (r.offset !== undefined && v.messages.has(r.offset)) v.pending.delete(cid);
    if (view === v) renderMessages();
  }, (err) => {
    pending.status = 'failed';
    pending.error = err;
    if (!input.value) input.value = text;
    if (view === v) {
      renderMessages();
      showError(`Not sent: ${err.message} (code ${err.code})`);
    }
  });
}
