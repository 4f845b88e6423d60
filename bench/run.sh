#!/usr/bin/env bash
# Benchmarks the firebreak edge against nginx, Varnish and Apache Traffic Server with the
# shared harness (../shared/bench, see its README), then writes bench/RESULTS.md: the tables,
# the date and machine, and the issue's targets checked against the same run.
#
#   bench/run.sh                  # defaults: REPS=3 DURATION=10s, sizes 1k 16k 256k, hit/stampede/mem
#   REPS=1 DURATION=5s bench/run.sh   # quicker, noisier
#
# Every knob of the shared harness passes through (SCENARIOS, SIZES, PEERS, MEM_OBJECTS, ...).
# All traffic stays on 127.0.0.1; the harness stops every process it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}
[[ -x $SHARED/run.sh || -f $SHARED/run.sh ]] || { echo "no harness at $SHARED" >&2; exit 1; }
command -v wrk >/dev/null && command -v nginx >/dev/null || bash "$SHARED/install.sh"

cargo build --release --locked -p firebreak
BIN=$ROOT/target/release/firebreak

stamp=$(date -u +%Y%m%d-%H%M%S)
LOG=${BENCH_LOG:-/tmp/cdnbench/firebreak-$stamp.log}
mkdir -p "$(dirname "$LOG")"
export CANDIDATE_NAME=firebreak
# 1 GiB of cache so the memory scenario's objects all fit; one service, one origin.
export CANDIDATE_CMD="$BIN edge --origin {origin} --listen 127.0.0.1:{port} --cache-mib 1024"
bash "$SHARED/run.sh" 2>&1 | tee "$LOG"

csv=$(grep -o '/tmp/cdnbench/results/[^ ]*/results.csv' "$LOG" | tail -1)
python3 "$ROOT/bench/report.py" "$LOG" "$csv" > "$ROOT/bench/RESULTS.md"
echo "wrote bench/RESULTS.md"
