// The OpenAPI 3.1 description at /v1/openapi.json, and Schemathesis (from
// the Python registry; installed by scripts/test.sh into tests/python/.venv)
// fuzzing the live server from it: no answer outside the spec, no 5xx —
// with a full API key, a publish-only key, no key, and a connection token.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { mintToken, startTidings } from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const ST = process.env.TIDINGS_SCHEMATHESIS ?? path.join(here, '../python/.venv/bin/schemathesis');
const SECRET = 'openapi-test-secret';

let server;
before(async () => {
  server = await startTidings(`listen = "127.0.0.1:0"
[auth]
token_secret = "${SECRET}"
api_keys = ["openapi-full-key", { name = "pub", key = "openapi-publish-key", scope = "publish" }]
[channels]
history_size = 20
history_ttl = "1h"
presence = true
client_publish = "any"
[namespaces.chat]
history_size = 20
history_ttl = "1h"
`);
});
after(() => server?.stop());

async function spec() {
  const res = await fetch(`http://${server.addr}/v1/openapi.json`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /application\/json/);
  return res.json();
}

test('the description covers every API method and client action, each with its errors', async () => {
  const doc = await spec();
  assert.equal(doc.openapi, '3.1.0');
  const api = ['publish', 'broadcast', 'history', 'presence', 'presence_stats', 'last_seen', 'channels', 'info', 'disconnect', 'unsubscribe', 'members/add', 'members/remove', 'members/list'];
  const client = ['publish', 'history', 'presence', 'presence_stats', 'last_seen', 'heartbeat', 'cursor', 'inbox', 'members', 'keys'];
  const want = [...api.map((m) => `/v1/api/${m}`), ...client.map((m) => `/v1/client/${m}`)].sort();
  assert.deepEqual(Object.keys(doc.paths).sort(), want);
  const ids = new Set();
  for (const [p, item] of Object.entries(doc.paths)) {
    const op = item.post;
    assert.ok(op, `${p} is a POST`);
    assert.ok(!ids.has(op.operationId), `operationId ${op.operationId} is unique`);
    ids.add(op.operationId);
    for (const status of ['200', '400', '401', '403', '404', '409', '413', '429', '500', '503']) {
      assert.ok(op.responses[status], `${p} documents ${status}`);
    }
    assert.equal(op.responses['400'].content['application/json'].schema.$ref, '#/components/schemas/ErrorResponse');
    if (p.startsWith('/v1/api/')) assert.deepEqual(op.security, [{ api_key: [] }]);
  }
  // Each method the spec names answers as a method, not as an unknown one.
  const res = await fetch(`http://${server.addr}/v1/api/info`, {
    method: 'POST',
    headers: { authorization: 'Bearer openapi-full-key' },
  });
  assert.equal(res.status, 200);
  assert.ok(Array.isArray((await res.json()).nodes));
});

function schemathesis(auth) {
  const args = [
    'run', `http://${server.addr}/v1/openapi.json`,
    '--checks', 'not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance',
    '--max-examples', '25',
    '--workers', '1',
    '--no-color',
  ];
  if (auth) args.push('-H', `Authorization: Bearer ${auth}`);
  // Its cache and reports go to a scratch directory, not the repository.
  const cwd = mkdtempSync(path.join(os.tmpdir(), 'tidings-st-'));
  return new Promise((resolve) => {
    execFile(ST, args, { cwd, timeout: 150_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? (err.code ?? 1) : 0, out: `${stdout}\n${stderr}` });
    });
  });
}

const token = () => mintToken(SECRET, { sub: 'fuzzer', exp: Math.floor(Date.now() / 1000) + 3600 });
for (const [name, auth] of [
  ['a full API key', () => 'openapi-full-key'],
  ['a publish-only API key', () => 'openapi-publish-key'],
  ['no key', () => null],
  ['a connection token', token],
]) {
  test(`Schemathesis finds nothing outside the spec and no 5xx with ${name}`, { timeout: 180_000 }, async () => {
    const { code, out } = await schemathesis(auth());
    assert.equal(code, 0, out.slice(-6000));
    assert.match(out, /passed/);
  });
}

test('the server is still healthy after the fuzzing', async () => {
  const res = await fetch(`http://${server.addr}/health`);
  assert.equal(res.status, 200);
});
