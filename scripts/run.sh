#!/usr/bin/env bash
# README's run command: builds the web client if needed, then runs `tandem` (release build) with
# the client embedded, storing documents in ./data (redb; no other service).
# Extra arguments go to `tandem serve`, e.g. `bash scripts/run.sh --port 9000`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-web.sh
exec cargo run --release -p tandem-server --bin tandem -- serve "$@"
