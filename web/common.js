// Shared by the demo pages: the SDK client setup, the connection indicator,
// and the folds that turn channel publications into the class's state. Every
// fold is idempotent by offset (a publication folded twice changes nothing)
// and does not depend on arrival order, so history, recovery and live
// pushes may overlap freely.
import { TidingsClient } from '/sdk/index.js';

export const LOBBY = 'demo:lobby';
export const QA = 'demo:qa';
export const POLL = 'demo:poll';
export const TYPING = 'demo_typing:lobby';

export const POLL_QUESTION = 'How is the pace of the class?';
export const POLL_OPTIONS = [
  { id: 'slow', label: 'Too slow' },
  { id: 'right', label: 'Just right' },
  { id: 'fast', label: 'Too fast' },
];

/** Transports to use: `?transport=sse` (or `poll`, `websocket`) forces one. */
export function transportsFromUrl(fallback) {
  const t = new URLSearchParams(location.search).get('transport');
  return t ? t.split(',') : fallback;
}

/** Asks the dev-mode endpoint for a token for `name`. */
export async function devToken(name) {
  const res = await fetch('/v1/dev/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name }),
  });
  const body = await res.json().catch(() => null);
  if (!res.ok || !body || typeof body.token !== 'string') {
    const msg = body?.error?.message ?? `HTTP ${res.status}`;
    throw new Error(`could not get a token: ${msg}`);
  }
  return body;
}

/** Creates the client; `getToken` may be null (anonymous). */
export function makeClient({ getToken = null, transports, outboxName } = {}) {
  return new TidingsClient({
    getToken: getToken ?? undefined,
    transports,
    outboxName,
    minReconnectDelay: 500,
    maxReconnectDelay: 10_000,
  });
}

/** Keeps the connection indicator `el` in step with the client. */
export function bindIndicator(client, el) {
  const label = el.querySelector('.label') ?? el;
  const render = ({ state, transport }) => {
    el.dataset.state = state;
    el.dataset.transport = transport ?? '';
    const names = { websocket: 'WebSocket', sse: 'SSE', poll: 'long-poll' };
    const t = transport ? ` · ${names[transport] ?? transport}` : '';
    label.textContent = state === 'connected' ? `Live${t}`
      : state === 'connecting' ? `Connecting${t}…` : 'Offline — will retry';
  };
  render({ state: client.state, transport: client.transport });
  client.on('state', render);
}

/** Display name of a publication's author. */
export function authorOf(pub, me) {
  if (!pub) return me?.name ?? 'me';
  const info = pub.info?.info;
  if (info && typeof info.name === 'string') return info.name;
  return pub.info?.user || 'server';
}

// ---- folds ------------------------------------------------------------

/** Chat: messages by offset; pending (local) ones appended. */
export const chatFold = (me) => ({
  initial: () => ({ byOffset: new Map(), local: [] }),
  apply: (s, data, pub) => {
    if (!data || data.type !== 'msg' || typeof data.text !== 'string') return s;
    const msg = {
      text: data.text,
      cid: data.cid,
      offset: pub?.offset,
      user: pub ? pub.info?.user ?? '' : me?.user,
      name: authorOf(pub, me),
      time: pub?.time ?? Date.now(),
    };
    if (!pub) return { byOffset: s.byOffset, local: [...s.local, msg] };
    if (pub.offset === undefined || s.byOffset.has(pub.offset)) return s;
    const byOffset = new Map(s.byOffset);
    byOffset.set(pub.offset, msg);
    return { byOffset, local: s.local };
  },
});

/** Confirmed chat messages in offset order. */
export function chatMessages(s) {
  return [...s.byOffset.entries()].sort((a, b) => a[0] - b[0]).map(([, m]) => m);
}

/** Q&A: questions by offset, voters per question (a set: one vote per user). */
export const qaFold = (me) => ({
  initial: () => ({ questions: new Map(), voters: new Map() }),
  apply: (s, data, pub) => {
    if (!data || typeof data !== 'object') return s;
    if (data.type === 'snapshot') {
      // The server's fold of everything before it (only the server's: one a
      // client published has `info`): merged, so nothing seen since is lost
      // and nothing is counted twice.
      if (!pub?.snapshot || pub.info) return s;
      const questions = new Map(s.questions);
      for (const q of Array.isArray(data.questions) ? data.questions : []) {
        if (typeof q.key === 'number' && !questions.has(q.key)) {
          questions.set(q.key, { key: q.key, text: String(q.text), name: String(q.name), user: String(q.user), pending: false });
        }
      }
      const voters = new Map(s.voters);
      for (const [k, users] of Object.entries(data.voters ?? {})) {
        const key = Number(k);
        voters.set(key, new Set([...(voters.get(key) ?? []), ...(Array.isArray(users) ? users : [])]));
      }
      return { questions, voters };
    }
    const user = pub ? pub.info?.user ?? '' : me?.user ?? '';
    if (data.type === 'ask' && typeof data.text === 'string') {
      const key = pub?.offset ?? `local:${data.cid}`;
      if (s.questions.has(key)) return s;
      const questions = new Map(s.questions);
      questions.set(key, { key, text: data.text, name: authorOf(pub, me), user, pending: !pub, cid: data.cid });
      return { questions, voters: s.voters };
    }
    if (data.type === 'upvote' && typeof data.q === 'number') {
      const set = s.voters.get(data.q);
      if (set?.has(user)) return s;
      const voters = new Map(s.voters);
      voters.set(data.q, new Set([...(set ?? []), user]));
      return { questions: s.questions, voters };
    }
    return s;
  },
});

/** Questions, most votes first, then oldest first. */
export function qaList(s) {
  return [...s.questions.values()]
    .map((q) => ({ ...q, votes: s.voters.get(q.key)?.size ?? 0, voters: s.voters.get(q.key) ?? new Set() }))
    .sort((a, b) => b.votes - a.votes || order(a.key) - order(b.key));
}
const order = (k) => (typeof k === 'number' ? k : Number.MAX_SAFE_INTEGER);

/** Poll: each user's latest vote (by offset; a local vote is the latest). */
export const pollFold = (me) => ({
  initial: () => ({ votes: new Map() }),
  apply: (s, data, pub) => {
    if (data?.type === 'snapshot') {
      // Each user's latest vote as the server folded it (a client's
      // snapshot, with `info`, is not trusted): the later one wins.
      if (!pub?.snapshot || pub.info) return s;
      const votes = new Map(s.votes);
      for (const [user, v] of Object.entries(data.votes ?? {})) {
        if (!POLL_OPTIONS.some((o) => o.id === v?.option) || typeof v.at !== 'number') continue;
        const prev = votes.get(user);
        if (!prev || prev.at < v.at) votes.set(user, { option: v.option, at: v.at });
      }
      return { votes };
    }
    if (!data || data.type !== 'vote' || !POLL_OPTIONS.some((o) => o.id === data.option)) return s;
    const user = pub ? pub.info?.user ?? '' : me?.user ?? '';
    const at = pub ? pub.offset ?? 0 : Number.MAX_SAFE_INTEGER;
    const prev = s.votes.get(user);
    if (prev && prev.at >= at) return s;
    const votes = new Map(s.votes);
    votes.set(user, { option: data.option, at });
    return { votes };
  },
});

/** Poll results: count per option, total. */
export function pollResults(s) {
  const counts = Object.fromEntries(POLL_OPTIONS.map((o) => [o.id, 0]));
  for (const v of s.votes.values()) counts[v.option] += 1;
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  return { counts, total };
}

/** Presence by user: built from the subscribe reply or a read, then join/leave. */
export function trackPresence(sub, onChange) {
  const users = new Map();
  const add = (e) => {
    if (!e.user) return; // anonymous viewers (the dashboard) are not people in the room
    const name = typeof e.info?.name === 'string' ? e.info.name : e.user;
    users.set(e.user, name);
  };
  const emit = () => onChange(new Map(users));
  sub.on('subscribed', async (s) => {
    users.clear();
    let entries = s.presence;
    if (!entries) {
      // SSE and long-poll have no subscribe reply to carry it: read it.
      try {
        entries = await sub.presence();
      } catch {
        entries = {};
      }
    }
    for (const e of Object.values(entries)) add(e);
    emit();
  });
  sub.on('join', (e) => { add(e); emit(); });
  sub.on('leave', (e) => { users.delete(e.user); emit(); });
}

/** Escapes text for HTML. */
export function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

/** "12:04" from ms since the epoch. */
export function clock(ms) {
  const d = new Date(ms);
  return `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
}
