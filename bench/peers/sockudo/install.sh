#!/usr/bin/env bash
# Install the sockudo server binary (crates.io) into a given root. Idempotent:
# does nothing when ROOT/bin/sockudo already reports the wanted version.
#
#   bench/peers/sockudo/install.sh [ROOT]          # default ROOT: /tmp/sockudo-install
#
# Env: SOCKUDO_VERSION (5.2.0), CARGO_JOBS (1: the bench machine has 2 cores and
# the build is heavy: ~470 crates, 20-40 min at -j 1). Needs rustc >= 1.95 and
# protoc (Debian: protobuf-compiler; installed here via apt-get when missing).
# The binary ends up at ROOT/bin/sockudo, which start.sh uses by default.
set -euo pipefail

ROOT="${1:-${SOCKUDO_ROOT:-/tmp/sockudo-install}}"
VERSION="${SOCKUDO_VERSION:-5.2.0}"
JOBS="${CARGO_JOBS:-1}"
BIN="$ROOT/bin/sockudo"

if [[ -x "$BIN" ]] && "$BIN" --version 2>/dev/null | grep -qF " $VERSION"; then
  echo "sockudo $VERSION already installed at $BIN"
  exit 0
fi

command -v cargo >/dev/null || { echo "cargo not found (install a Rust toolchain >= 1.95)" >&2; exit 1; }
# A build script (metrics-exporter-tcp, via prost-build) needs protoc.
if ! command -v protoc >/dev/null && [[ -z "${PROTOC:-}" ]]; then
  if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
    apt-get install -y protobuf-compiler >/dev/null || { apt-get update >/dev/null && apt-get install -y protobuf-compiler >/dev/null; }
  else
    echo "protoc not found: install protobuf-compiler (or set PROTOC)" >&2; exit 1
  fi
fi
mkdir -p "$ROOT"
# --locked: build with the Cargo.lock shipped in the crate, not whatever is newest today.
cargo install sockudo --version "$VERSION" --locked --root "$ROOT" -j "$JOBS"
"$BIN" --version
