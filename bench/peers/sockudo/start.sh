#!/usr/bin/env bash
# Start the sockudo bench peer (Pusher protocol v7), pinned to core 0.
#
#   bench/peers/sockudo/start.sh
#
# Env: SOCKUDO_BIN (/tmp/sockudo-install/bin/sockudo; see install.sh),
#      SOCKUDO_CONFIG (config.toml beside this script),
#      SOCKUDO_PORT (6001; overrides the config's port via sockudo's PORT variable),
#      CPU (core list for taskset, "0"), RUST_LOG (warn),
#      RUN_DIR (/tmp/tidings-bench/sockudo: pid and log files live there).
# Prints "PID=<n>" on its last line once GET /up/bench-app answers 200; the pid
# is also in $RUN_DIR/sockudo.pid. Stop with: kill "$(cat $RUN_DIR/sockudo.pid)"
# (SIGTERM: it drains for shutdown_grace_period, 1 s in config.toml, then exits).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${SOCKUDO_BIN:-/tmp/sockudo-install/bin/sockudo}"
CONFIG="${SOCKUDO_CONFIG:-$HERE/config.toml}"
PORT="${SOCKUDO_PORT:-6001}"
CPU="${CPU:-0}"
RUN_DIR="${RUN_DIR:-/tmp/tidings-bench/sockudo}"
PID_FILE="$RUN_DIR/sockudo.pid"
LOG_FILE="$RUN_DIR/sockudo.log"

[[ -x "$BIN" ]] || { echo "sockudo binary not found at $BIN; run $HERE/install.sh first" >&2; exit 1; }
[[ -f "$CONFIG" ]] || { echo "config not found: $CONFIG" >&2; exit 1; }
mkdir -p "$RUN_DIR"

if [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
  echo "sockudo already running (pid $(cat "$PID_FILE")); stop it first" >&2
  exit 1
fi

# 10k+ sockets need more than the default 1024 descriptors (hard limit here: 20000).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
ulimit -n 20000 2>/dev/null || true

# sockudo reads many environment variables that override the file (HOST, PORT,
# DEBUG, ACTIVITY_TIMEOUT, REDIS_URL, RATE_LIMITER_*, SOCKUDO_DEFAULT_APP_*...):
# start it from a clean environment so the config file is what runs. It also
# auto-loads ./config/config.toml, so run it from RUN_DIR.
cd "$RUN_DIR"
env -i PATH="/usr/local/bin:/usr/bin:/bin" HOME="${HOME:-/root}" \
  RUST_LOG="${RUST_LOG:-warn}" LOG_OUTPUT_FORMAT=human PORT="$PORT" \
  nohup taskset -c "$CPU" "$BIN" --config "$CONFIG" >"$LOG_FILE" 2>&1 &
PID=$!
echo "$PID" >"$PID_FILE"

# sockudo silently falls back to compiled defaults when the config file fails to
# parse (it logs that before logging is set up). The defaults have no apps, so a
# 200 from /up/bench-app proves the file was loaded.
for _ in $(seq 1 200); do
  if curl -fsS "http://127.0.0.1:$PORT/up/bench-app" >/dev/null 2>&1; then
    echo "sockudo up on 127.0.0.1:$PORT (app bench-app, log: $LOG_FILE, nofile=$(ulimit -n))" >&2
    echo "PID=$PID"
    exit 0
  fi
  if ! kill -0 "$PID" 2>/dev/null; then
    echo "sockudo exited during startup; log follows:" >&2
    tail -n 40 "$LOG_FILE" >&2
    rm -f "$PID_FILE"
    exit 1
  fi
  sleep 0.1
done
echo "sockudo did not answer /up/bench-app within 20 s (pid $PID, log $LOG_FILE):" \
  "the config was probably not loaded (TOML error, or an unset dollar-brace reference);" \
  "stopping it. Last log lines:" >&2
tail -n 5 "$LOG_FILE" >&2
kill "$PID" 2>/dev/null || true
rm -f "$PID_FILE"
exit 1
