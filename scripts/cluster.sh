#!/usr/bin/env bash
# Tries several nodes in one command: starts a Redis (AOF on, in a temp dir)
# and three Tidings nodes on loopback (8001, 8002, 8003) sharing it, with the
# demo on. Open the demo on one port and a second browser on another: they
# are one server. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server is missing: apt-get install redis-server (or brew install redis)" >&2
  exit 1
fi
cargo build --release -p tidings

dir=$(mktemp -d -t tidings-cluster-XXXXXX)
redis_port=${REDIS_PORT:-6390}
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" \
  --appendonly yes --appendfsync everysec --save "" >"$dir/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.1
done

# Dev mode on every node, with one shared secret and API key so that a token
# from one node works on the others.
export TIDINGS_ENGINE=redis
export TIDINGS_REDIS_URLS="redis://127.0.0.1:$redis_port"
export TIDINGS_DEV_TOKEN_SECRET=${TIDINGS_DEV_TOKEN_SECRET:-cluster-dev-secret-$RANDOM$RANDOM}
export TIDINGS_DEV_API_KEY=${TIDINGS_DEV_API_KEY:-cluster-dev-key-$RANDOM$RANDOM}
for i in 1 2 3; do
  TIDINGS_NODE_NAME="node-$i" ./target/release/tidings --listen "127.0.0.1:800$i" \
    >"$dir/node-$i.log" 2>&1 &
  pids+=($!)
done
sleep 1
cat <<INFO
Redis on 127.0.0.1:$redis_port, nodes on http://127.0.0.1:8001, :8002, :8003 (logs in $dir)
  demo:      http://127.0.0.1:8001/  and  http://127.0.0.1:8002/
  API key:   $TIDINGS_DEV_API_KEY
  the nodes: curl -s -X POST http://127.0.0.1:8003/v1/api/info -H "Authorization: Bearer $TIDINGS_DEV_API_KEY" -d '{}'
Node pids: ${pids[*]:1}. Behind a load balancer (no sticky sessions needed),
clients of a node that is killed reconnect to another and resume with no gap.
INFO
wait
