#!/usr/bin/env bash
# Start the Socket.IO 4 bench peer, pinned to core 0.
#
#   bench/peers/socketio/start.sh            # 127.0.0.1:6002
#   PORT=7002 bench/peers/socketio/start.sh
#
# Env: PORT (6002), HOST (127.0.0.1), CPU (core list for taskset, "0"),
#      RUN_DIR (/tmp/tidings-bench/socketio: pid and log files live there).
# Prints "PID=<n>" on its last line once /health answers; the pid is also in
# $RUN_DIR/socketio.pid. Stop with: kill "$(cat $RUN_DIR/socketio.pid)".
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORT="${PORT:-6002}"
HOST="${HOST:-127.0.0.1}"
CPU="${CPU:-0}"
RUN_DIR="${RUN_DIR:-/tmp/tidings-bench/socketio}"
PID_FILE="$RUN_DIR/socketio.pid"
LOG_FILE="$RUN_DIR/socketio.log"

mkdir -p "$RUN_DIR"
command -v node >/dev/null || { echo "node not found" >&2; exit 1; }

# Install exactly what the lockfile says, once (or again when the lockfile changed).
if [[ ! -d "$HERE/node_modules/socket.io" || "$HERE/package-lock.json" -nt "$HERE/node_modules/.package-lock.json" ]]; then
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

if [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
  echo "socket.io peer already running (pid $(cat "$PID_FILE")); stop it first" >&2
  exit 1
fi

# 10k+ sockets need more than the default 1024 descriptors (hard limit here: 20000).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
ulimit -n 20000 2>/dev/null || true

cd "$HERE"
NODE_ENV=production PORT="$PORT" HOST="$HOST" \
  nohup taskset -c "$CPU" node server.mjs >"$LOG_FILE" 2>&1 &
PID=$!
echo "$PID" >"$PID_FILE"

for _ in $(seq 1 100); do
  if curl -fsS "http://$HOST:$PORT/health" >/dev/null 2>&1; then
    echo "socket.io peer up on http://$HOST:$PORT (log: $LOG_FILE, nofile=$(ulimit -n))" >&2
    echo "PID=$PID"
    exit 0
  fi
  if ! kill -0 "$PID" 2>/dev/null; then
    echo "socket.io peer exited during startup; log follows:" >&2
    cat "$LOG_FILE" >&2
    exit 1
  fi
  sleep 0.1
done
echo "socket.io peer did not answer /health within 10 s (pid $PID, log $LOG_FILE)" >&2
exit 1
