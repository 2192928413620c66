#!/usr/bin/env bash
# README's test command. Runs every test: the web client's type check, build and unit tests,
# Rust unit, store and integration tests, then the Node suite against the real `tandem` binary: interop
# (unmodified yjs + y-websocket clients), cluster (several nodes on a real Redis and Postgres
# behind a balancer; `.ci/run` installs Debian's redis-server and postgresql, and moto for the
# S3 blob store) and browser (the
# web client in headless Chromium, driven by playwright-core; `.ci/run` installs Debian's chromium
# on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in node npm; do
  command -v "$tool" >/dev/null 2>&1 || { echo "test.sh: $tool is required (apt-get install -y nodejs npm)" >&2; exit 1; }
done
CHROMIUM_PATH="${CHROMIUM_PATH:-/usr/bin/chromium}"
[ -x "$CHROMIUM_PATH" ] || { echo "test.sh: Chromium is required at $CHROMIUM_PATH (apt-get install -y chromium)" >&2; exit 1; }
export CHROMIUM_PATH
# tests/it/proxy.rs runs a real haproxy for the PROXY protocol; it fails without one.
[ -x /usr/sbin/haproxy ] || { echo "test.sh: haproxy is required at /usr/sbin/haproxy (apt-get install -y haproxy)" >&2; exit 1; }
# tests/e2e/cluster/ starts a Redis (AOF) and a Postgres 15 for the nodes to share.
[ -x /usr/bin/redis-server ] || { echo "test.sh: redis-server is required at /usr/bin/redis-server (apt-get install -y redis-server)" >&2; exit 1; }
[ -x /usr/lib/postgresql/15/bin/initdb ] || { echo "test.sh: Postgres 15 is required at /usr/lib/postgresql/15/bin (apt-get install -y postgresql)" >&2; exit 1; }
# tests/it/cluster_s3.rs keeps the nodes' file blobs on moto, an S3-compatible server.
command -v moto_server >/dev/null 2>&1 || [ -x /root/.pyenv/shims/moto_server ] || { echo "test.sh: moto_server is required (python3 -m pip install 'moto[server]')" >&2; exit 1; }

# The debug binary reads web-client/dist from disk, so build the client first, then run its
# unit tests (vitest: the pure parts, and the vectors in protocol-spec/vectors shared with Rust).
bash scripts/build-web.sh
(cd web-client && npm test --silent)
cargo build -p tandem-server --bin tandem
cargo test --workspace
(
  cd tests/e2e
  if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund
  fi
  TANDEM_BIN="$PWD/../../target/debug/tandem" npm test
)
