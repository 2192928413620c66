#!/usr/bin/env bash
# The benchmark suite in one command: builds Tandem and the load generator in release mode,
# installs the competing servers (benches/peers/install.sh), runs the criterion benches, then
# every loadgen scenario against Tandem, the bare relay, @y/websocket-server, Hocuspocus and
# y-sweet, interleaved, medians of three. Output: benches/out/<date>/ (JSON lines + Markdown).
#
#   bash benches/run.sh                 # everything (about an hour on 2 cores)
#   bash benches/run.sh fanout idle     # some loadgen scenarios only, no criterion
#   REPS=1 bash benches/run.sh --quick  # smoke run: small sizes, a few minutes
#   bash benches/run.sh cluster-same cluster-cross cluster-append cluster-throughput \
#     cluster-join-storm cluster-recovery --targets tandem,tandem-cluster,relay   # issue 19
#
# Traffic stays on 127.0.0.1; every scenario is bounded in time and connections.
set -euo pipefail
cd "$(dirname "$0")/.."

# Ten thousand idle connections need twenty thousand descriptors across two processes.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release -p tandem-server -p tandem-benches --bin tandem --bin loadgen --bin relay
bash benches/peers/install.sh

out="benches/out/$(date +%Y-%m-%d-%H%M)"
mkdir -p "$out"
if [ "$#" -eq 0 ]; then
  cargo bench -p tandem-benches --bench core --bench commit -- --noplot 2>&1 | tee "$out/criterion.txt"
fi
./target/release/loadgen --reps "${REPS:-3}" "$@" | tee "$out/loadgen.md"
grep '^{' "$out/loadgen.md" > "$out/loadgen.jsonl" || true
echo "results in $out"
