#!/usr/bin/env bash
# Runs every test: Rust unit, store and integration tests, then the Node interop suite
# (unmodified yjs + y-websocket clients against the real `tandem` binary).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "node and npm are required (apt-get install -y nodejs npm)" >&2
  exit 1
fi

cargo build -p tandem-server --bin tandem
cargo test --workspace
(cd tests/e2e && { [ -d node_modules ] || npm ci --no-audit --no-fund; } && TANDEM_BIN="$PWD/../../target/debug/tandem" npm test)
