// The Tidings admin UI: plain DOM, no framework. Every call goes to
// /admin/api/<method> (the server API's own methods) with the login's CSRF
// token; text from the server is only ever set as textContent.
'use strict';

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const HISTORY = 150; // chart samples: 5 minutes at POLL_MS
let csrf = null;
let timers = [];
let samples = [];
let tail = null;
let openChannel = null;
const channelsView = { prefix: '', cursor: null, back: [], next: null, sort: 'subscribers' };
let lastActivity = { at: 0, counts: new Map() };
let rates = new Map();

async function api(method, body = {}, retried = false) {
  const res = await fetch(`/admin/api/${method}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-csrf-token': csrf },
    body: JSON.stringify(body),
  });
  const answer = await res.json().catch(() => ({}));
  if (res.status === 401) showLogin();
  // A login from another tab replaced the cookie: take its CSRF token.
  if (res.status === 403 && !retried && (await refreshSession())) return api(method, body, true);
  if (!res.ok) throw new Error(answer.error?.message ?? `HTTP ${res.status}`);
  return answer;
}

async function refreshSession() {
  const res = await fetch('/admin/session');
  if (!res.ok) return false;
  const fresh = (await res.json()).csrf;
  const changed = fresh !== csrf;
  csrf = fresh;
  return changed;
}

function row(cells, onclick) {
  const tr = document.createElement('tr');
  for (const c of cells) {
    const td = document.createElement('td');
    td.textContent = String(c);
    tr.append(td);
  }
  if (onclick) {
    tr.className = 'pick';
    tr.addEventListener('click', onclick);
  }
  return tr;
}

function fill(table, rows) {
  table.querySelector('tbody').replaceChildren(...rows);
}

function uptime(s) {
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
}

async function refreshNodes() {
  const { nodes } = await api('info');
  fill($('nodes'), nodes.map((n) => row([n.name, n.address, n.version, n.connections, n.channels, n.subscriptions, uptime(n.uptime_s)])));
  const sum = (k) => nodes.reduce((a, n) => a + n[k], 0);
  samples.push({ connections: sum('connections'), subscriptions: sum('subscriptions') });
  if (samples.length > HISTORY) samples.shift();
  drawChart();
}

function drawChart() {
  const canvas = $('chart');
  const g = canvas.getContext('2d');
  g.clearRect(0, 0, canvas.width, canvas.height);
  const top = Math.max(1, ...samples.map((s) => Math.max(s.connections, s.subscriptions)));
  g.fillStyle = '#555';
  g.fillText(String(top), 4, 12);
  for (const [key, color] of [['connections', '#2563eb'], ['subscriptions', '#16a34a']]) {
    g.strokeStyle = color;
    g.beginPath();
    samples.forEach((s, i) => {
      const x = (i / (HISTORY - 1)) * canvas.width;
      const y = canvas.height - 4 - (s[key] / top) * (canvas.height - 20);
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
  }
}

async function refreshActivity() {
  const res = await fetch(`/admin/activity?prefix=${encodeURIComponent(channelsView.prefix)}`);
  if (!res.ok) return [];
  const { channels } = await res.json();
  const now = performance.now();
  const dt = (now - lastActivity.at) / 1000;
  const counts = new Map(channels.map((c) => [c.channel, c.publications]));
  if (lastActivity.at) {
    rates = new Map(channels.map((c) => {
      const before = lastActivity.counts.get(c.channel);
      return [c.channel, before === undefined ? 0 : Math.max(0, (c.publications - before) / dt)];
    }));
  }
  lastActivity = { at: now, counts };
  return channels;
}

async function refreshChannels() {
  const local = await refreshActivity();
  let list;
  if (channelsView.sort === 'rate') {
    list = local.map((c) => ({ channel: c.channel, subscribers: c.subscribers }));
    list.sort((a, b) => (rates.get(b.channel) ?? 0) - (rates.get(a.channel) ?? 0));
    list = list.slice(0, 50);
    channelsView.next = null;
  } else {
    const body = { prefix: channelsView.prefix, limit: 50 };
    if (channelsView.cursor) body.cursor = channelsView.cursor;
    const page = await api('channels', body);
    list = page.channels;
    channelsView.next = page.next_cursor ?? null;
    if (channelsView.sort === 'subscribers') list.sort((a, b) => b.subscribers - a.subscribers);
  }
  $('channels-next').disabled = !channelsView.next;
  $('channels-prev').disabled = channelsView.back.length === 0;
  fill($('channels'), list.map((c) => row(
    [c.channel, c.subscribers, (rates.get(c.channel) ?? 0).toFixed(1)],
    () => showChannel(c.channel),
  )));
}

async function refreshPresence() {
  if (!openChannel) return;
  try {
    const { clients } = await api('presence', { channel: openChannel, limit: 100 });
    fill($('presence'), Object.entries(clients).map(([client, info]) => row([client, info.user || '(anonymous)'])));
    $('presence-note').textContent = `${Object.keys(clients).length} connection(s)`;
  } catch (e) {
    fill($('presence'), []);
    $('presence-note').textContent = e.message;
  }
}

function showChannel(name) {
  openChannel = name;
  $('channel').hidden = false;
  $('channel-name').textContent = name;
  $('tail').replaceChildren();
  $('publish-result').textContent = '';
  tail?.close();
  tail = new EventSource(`/admin/tail?channel=${encodeURIComponent(name)}`);
  tail.onmessage = (ev) => {
    const li = document.createElement('li');
    li.textContent = ev.data;
    $('tail').append(li);
    while ($('tail').children.length > 200) $('tail').firstChild.remove();
    $('tail').scrollTop = $('tail').scrollHeight;
  };
  refreshPresence();
}

async function publish() {
  let data;
  try {
    data = JSON.parse($('publish-data').value);
  } catch {
    $('publish-result').textContent = 'data must be JSON';
    return;
  }
  try {
    const ok = await api('publish', { channel: openChannel, data });
    $('publish-result').textContent = ok.offset === undefined ? 'published' : `published at offset ${ok.offset}`;
  } catch (e) {
    $('publish-result').textContent = e.message;
  }
}

async function disconnect() {
  const user = $('disconnect-user').value.trim();
  try {
    await api('disconnect', { user });
    $('disconnect-result').textContent = `${user} was disconnected on every node`;
  } catch (e) {
    $('disconnect-result').textContent = e.message;
  }
}

function every(ms, f) {
  const run = () => f().catch((e) => console.warn('admin:', e.message));
  run();
  timers.push(setInterval(run, ms));
}

function showLogin() {
  timers.forEach(clearInterval);
  timers = [];
  tail?.close();
  csrf = null;
  $('dashboard').hidden = true;
  $('logout').hidden = true;
  $('login-form').hidden = false;
}

function showDashboard() {
  $('login-form').hidden = true;
  $('dashboard').hidden = false;
  $('logout').hidden = false;
  every(POLL_MS, refreshNodes);
  every(POLL_MS, refreshChannels);
  every(3000, refreshPresence);
}

async function login(ev) {
  ev.preventDefault();
  const res = await fetch('/admin/login', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ secret: $('secret').value }),
  });
  const answer = await res.json().catch(() => ({}));
  if (!res.ok) {
    $('login-error').textContent = answer.error?.message ?? `HTTP ${res.status}`;
    return;
  }
  $('secret').value = '';
  $('login-error').textContent = '';
  csrf = answer.csrf;
  showDashboard();
}

async function logout() {
  await fetch('/admin/logout', { method: 'POST', headers: { 'x-csrf-token': csrf } });
  showLogin();
}

document.addEventListener('DOMContentLoaded', async () => {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('publish').addEventListener('click', publish);
  $('disconnect').addEventListener('click', disconnect);
  $('channel-prefix').addEventListener('input', (ev) => {
    Object.assign(channelsView, { prefix: ev.target.value, cursor: null, back: [] });
    lastActivity = { at: 0, counts: new Map() };
    refreshChannels().catch(() => {});
  });
  $('channel-sort').addEventListener('change', (ev) => {
    Object.assign(channelsView, { sort: ev.target.value, cursor: null, back: [] });
    refreshChannels().catch(() => {});
  });
  $('channels-next').addEventListener('click', () => {
    channelsView.back.push(channelsView.cursor);
    channelsView.cursor = channelsView.next;
    refreshChannels().catch(() => {});
  });
  $('channels-prev').addEventListener('click', () => {
    channelsView.cursor = channelsView.back.pop() ?? null;
    refreshChannels().catch(() => {});
  });
  const res = await fetch('/admin/session');
  if (res.ok) {
    csrf = (await res.json()).csrf;
    showDashboard();
  } else {
    showLogin();
  }
});
