// What the bench scripts share: a Tidings server started for them (the
// release binary, or TIDINGS_BIN, pinned to core 0) and its CPU time and
// memory read from /proc.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BIN = process.env.TIDINGS_BIN ?? path.join(root, 'target/release/tidings');
const TICKS = 100; // USER_HZ on Linux

/** Starts the server with `toml` (listening on 127.0.0.1:0); resolves with { addr, pid, stop }. */
export async function startServer(toml) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tidings-bench-'));
  const file = path.join(dir, 'tidings.toml');
  writeFileSync(file, `listen = "127.0.0.1:0"\n${toml}`);
  const child = spawn('taskset', ['-c', '0', BIN, '--config', file, '--data-dir', path.join(dir, 'data')], {
    stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, RUST_LOG: 'warn' },
  });
  const addr = await new Promise((resolve, reject) => {
    let buf = '';
    child.stderr.on('data', (c) => {
      buf += c;
      const m = buf.match(/listening on http:\/\/(\S+)\s/);
      if (m) resolve(m[1]);
    });
    child.on('exit', (code) => reject(new Error(`server exited ${code}: ${buf}`)));
  });
  return { addr, pid: child.pid, stop: () => new Promise((r) => { child.on('exit', r); child.kill('SIGTERM'); }) };
}

/** The process's CPU seconds so far (user + system). */
export function cpu(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / TICKS;
}

/** Resident memory in KiB. */
export function rss(pid) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/);
  return Number(m[1]);
}
