#!/usr/bin/env bash
# Runs every test of the project. Installs what is missing first, so it works
# on a fresh machine (CI calls exactly this; see README).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust (https://rustup.rs) first" >&2
  exit 1
fi

# System packages the tests use: curl (CLI tests), Node.js with npm (tests with
# clients we did not write), Chromium (browser tests), redis-server and
# redis-cli (the Redis engine's tests start their own servers), openssl (a
# CA and certificate for the TLS test), PostgreSQL, nats-server, mosquitto
# and its clients (the ingest tests start their own brokers).
need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ -x /usr/bin/chromium ] || need+=(chromium)
# Brokers the ingest tests consume from (crates/tidings/tests/ingest.rs).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
# nats-server and mosquitto live in /usr/sbin.
export PATH="$PATH:/usr/sbin"
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Incremental caches double the size of target/ for a one-off build.
export CARGO_INCREMENTAL=0

echo "== format"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== rust tests"
cargo test --workspace --locked

echo "== browser SDK: build, typecheck, committed dist/ is fresh"
(
  cd sdk/js
  npm ci --no-audit --no-fund --loglevel=error
  npm run build
  # The binary embeds sdk/js/dist and nothing is built at run time, so the
  # committed build must be exactly what the sources compile to.
  git diff --exit-code -- dist
  if [ -n "$(git status --porcelain -- dist)" ]; then
    echo "sdk/js/dist has files the build does not make, or misses some: run npm run build and commit" >&2
    git status --porcelain -- dist >&2
    exit 1
  fi
)

echo "== python test packages (the pusher server SDK, from the Python registry)"
(
  cd tests/python
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
)

echo "== node tests (eventsource package, the SDK, the demo in Chromium, Pusher clients)"
cargo build -p tidings --bins --locked
(
  cd tests/node
  npm ci --no-audit --no-fund --loglevel=error
  TIDINGS_BIN="$PWD/../../target/debug/tidings" npm test
)
