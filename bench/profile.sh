#!/usr/bin/env bash
# Profiles the cache-hit path: the release edge in front of the demo origin, one warmed
# 1 KiB object, wrk load, and `perf record` (cpu-clock sampling, works where hardware
# counters do not) on the edge process. Prints the hottest symbols.
#
#   bench/profile.sh            # needs wrk and linux-perf (apt-get install wrk linux-perf)
#   SECONDS_LOAD=15 bench/profile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v perf >/dev/null || apt-get install -y --no-install-recommends linux-perf >/dev/null
command -v wrk >/dev/null || apt-get install -y --no-install-recommends wrk >/dev/null
cargo build --release --locked -p firebreak
BIN=target/release/firebreak
EDGE_PORT=${EDGE_PORT:-18180}
ORIGIN_PORT=$((EDGE_PORT + 1))
LOAD=${SECONDS_LOAD:-10}
OUT=${PROFILE_DIR:-/tmp/firebreak-profile}
mkdir -p "$OUT"

$BIN origin --listen 127.0.0.1:$ORIGIN_PORT >/dev/null 2>&1 & origin_pid=$!
$BIN edge --origin 127.0.0.1:$ORIGIN_PORT --listen 127.0.0.1:$EDGE_PORT >/dev/null 2>&1 & edge_pid=$!
trap 'kill $edge_pid $origin_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:$EDGE_PORT/static/x && break; sleep 0.1; done
curl -s -o /dev/null -D - http://127.0.0.1:$EDGE_PORT/static/x | grep -i cache-status

wrk -t1 -c64 -d${LOAD}s --latency http://127.0.0.1:$EDGE_PORT/static/x > "$OUT/wrk.txt" &
wrk_pid=$!
sleep 1
perf record -e cpu-clock -F 999 -g -o "$OUT/perf.data" -p $edge_pid -- sleep $((LOAD - 2)) 2>/dev/null
wait $wrk_pid
grep -E "Requests/sec|99%" "$OUT/wrk.txt"
perf report -i "$OUT/perf.data" --stdio --no-children --sort symbol 2>/dev/null \
  | grep -E '^ +[0-9]' | head -40 | tee "$OUT/top.txt"
