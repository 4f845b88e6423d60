#!/usr/bin/env bash
# HTTP/3 benchmark: 1 KiB cache hits over HTTP/3 against h2 over TLS on the same firebreak
# edge (one TLS listener: HTTPS on TCP, HTTP/3 on UDP, same port), measured in one run with
# the protocols interleaved per repetition; writes bench/H3_RESULTS.md (medians and the
# ratio h3 / h2-TLS, and the CPU time the edge spent per request on each).
#
#   bench/h3.sh                         # REPS=3 DURATION=10
#   REPS=1 DURATION=3 bench/h3.sh       # quick
#
# Scenarios (client: fbload, bench/load, one thread; h3 = quinn + h3 + h3-quinn):
#   m1    16 connections x 1 stream:   fbload h3  vs  fbload https --h2
#   m10   16 connections x 10 streams: fbload h3  vs  fbload https --h2
# Everything listens on 127.0.0.1 (ports PORT_BASE=29180 and up); every process started
# here is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REPS=${REPS:-3}
DURATION=${DURATION:-10}
PORT_BASE=${PORT_BASE:-29180}
ORIGIN_PORT=$PORT_BASE
EDGE_PORT=$((PORT_BASE + 1))
ADMIN_PORT=$((PORT_BASE + 2))
ADMIN_TOKEN=bench-h3-admin-token
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }

cargo build --release --locked -p firebreak -p firebreak-load
BIN=$ROOT/target/release/firebreak
LOAD=$ROOT/target/release/fbload

RUN=$(mktemp -d /tmp/cdnbench-h3.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# One CA, one ECDSA P-256 leaf for bench.test (the same generation as tls.sh).
source bench/certs.sh
bench_certs "$RUN"

# The origin: a static file server (no freshness headers: the service's default_ttl_s makes
# the object cacheable); it serves one miss, everything measured is a hit.
mkdir -p "$RUN/www/static"
head -c 1024 /dev/urandom > "$RUN/www/static/1k.bin"
python3 -m http.server --bind 127.0.0.1 --directory "$RUN/www" "$ORIGIN_PORT" \
    > "$RUN/origin.log" 2>&1 &
PIDS+=($!)

cat > "$RUN/edge.toml" <<TOML
[[listener]]
addr = "127.0.0.1:$EDGE_PORT"
tls = true    # HTTPS on TCP and HTTP/3 on UDP, same port

[admin]
listen = "127.0.0.1:$ADMIN_PORT"
token = "$ADMIN_TOKEN"

[cache]
max_bytes = 268435456

[limits.clients]
max_connections_per_address = 10000

[[service]]
name = "bench"
hosts = ["bench.test"]
default = true

[service.origin]
servers = [{ addr = "127.0.0.1:$ORIGIN_PORT" }]

[service.cache]
default_ttl_s = 3600

[service.tls]
cert_file = "$RUN/leaf.pem"
key_file = "$RUN/leaf.key"
TOML
"$BIN" edge --config "$RUN/edge.toml" > "$RUN/edge.log" 2>&1 &
EDGE_PID=$!
PIDS+=($EDGE_PID)

https_get() { # curl args...
    curl -sf --cacert "$RUN/ca.pem" --resolve "bench.test:$EDGE_PORT:127.0.0.1" "$@" \
        "https://bench.test:$EDGE_PORT/static/1k.bin"
}
for _ in $(seq 100); do
    https_get -o /dev/null && break
    sleep 0.1
done
# Warm: the object is a hit from here on (checked over HTTPS, then over HTTP/3 by fbload,
# which exits non-zero when no request succeeds).
https_get -o /dev/null -D "$RUN/warm.headers" \
    || { echo "the edge does not answer over HTTPS on port $EDGE_PORT" >&2; cat "$RUN/edge.log" >&2; exit 1; }
grep -qi '^cache-status:.*hit' "$RUN/warm.headers" \
    || { echo "the warmed object is not a hit:" >&2; cat "$RUN/warm.headers" >&2; exit 1; }
grep -i '^alt-svc:' "$RUN/warm.headers" || echo "(no alt-svc header on the HTTPS answer)"
"$LOAD" h3 --addr "127.0.0.1:$EDGE_PORT" --sni bench.test --ca "$RUN/ca.pem" \
    --path /static/1k.bin --conns 1 --duration 0.5 > "$RUN/h3-check.log" 2>&1 \
    || { echo "the edge does not answer over HTTP/3 on UDP port $EDGE_PORT:" >&2; cat "$RUN/h3-check.log" >&2; exit 1; }

CSV=$RUN/results.csv
echo "rep,scenario,proto,rate,p99_ms,errors,requests,edge_ticks,client_ticks,seconds" > "$CSV"
# CPU time in clock ticks from /proc/PID/stat (fields after the command name): the edge's own
# (utime + stime), and this shell's waited-for children's (cutime + cstime: the client).
edge_ticks() { sed 's/.*) //' "/proc/$EDGE_PID/stat" | awk '{print $12 + $13}'; }
client_ticks() { sed 's/.*) //' "/proc/$$/stat" | awk '{print $14 + $15}'; }
measure() { # rep scenario proto args...
    local rep=$1 scenario=$2 proto=$3; shift 3
    local out e0 c0 t0 e1 c1 t1
    e0=$(edge_ticks); c0=$(client_ticks); t0=$(date +%s.%N)
    out=$("$LOAD" "$@" --addr "127.0.0.1:$EDGE_PORT" --sni bench.test --ca "$RUN/ca.pem" \
        --path /static/1k.bin --duration "$DURATION" | tee -a "$RUN/load.log" | grep '^RESULT')
    e1=$(edge_ticks); c1=$(client_ticks); t1=$(date +%s.%N)
    local rate p99 errors requests
    rate=$(sed -n 's/.* rate=\([0-9.]*\).*/\1/p' <<<"$out")
    p99=$(sed -n 's/.* p99_ms=\([0-9.]*\).*/\1/p' <<<"$out")
    errors=$(sed -n 's/.* errors=\([0-9]*\).*/\1/p' <<<"$out")
    requests=$(sed -n 's/.* requests=\([0-9]*\).*/\1/p' <<<"$out")
    echo "$rep,$scenario,$proto,$rate,$p99,$errors,$requests,$((e1 - e0)),$((c1 - c0)),$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" >> "$CSV"
    echo "rep $rep $scenario $proto: $rate req/s p99 $p99 ms errors $errors (edge $((e1 - e0)) ticks, client $((c1 - c0)) ticks)"
}
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for rep in $(seq "$REPS"); do
    measure "$rep" m1 h2 https --h2 --conns 16 --streams 1
    measure "$rep" m1 h3 h3 --conns 16 --streams 1
    measure "$rep" m10 h2 https --h2 --conns 16 --streams 10
    measure "$rep" m10 h3 h3 --conns 16 --streams 10
done
curl -sf -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.1:$ADMIN_PORT/metrics" \
    | grep '^firebreak_http3_' > "$RUN/metrics.txt" || true

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

COMMAND="REPS=$REPS DURATION=$DURATION bench/h3.sh"
python3 - "$CSV" "$RUN/metrics.txt" "$COMMAND" "$(getconf CLK_TCK)" "$LOAD_BEFORE" "$LOAD_AFTER" > "$ROOT/bench/H3_RESULTS.md" <<'PY'
import csv, statistics, sys, subprocess, datetime
rows = list(csv.DictReader(open(sys.argv[1])))
metrics = [l.strip() for l in open(sys.argv[2]) if l.strip()]
command, hz, load_before, load_after = sys.argv[3], float(sys.argv[4]), sys.argv[5], sys.argv[6]
cpu = "unknown"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip(); break
cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
print("# HTTP/3 benchmark: h3 vs h2 over TLS on the same firebreak edge\n")
print(f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {cpu} ({cores} cores), "
      f"`{command}`. One release edge, one TLS listener (HTTPS on TCP, HTTP/3 on UDP, same "
      "port), ECDSA P-256 certificate, the same 1 KiB object (a hit); client `fbload` (one "
      "thread; h3: quinn + h3 + h3-quinn, h2: hyper + rustls), protocols interleaved per "
      f"repetition; medians. Load average (1, 5, 15 min) {load_before} before the first cell, "
      f"{load_after} after the last: anything else running shares the cores.\n")
print("| connections x streams | h2-TLS req/s | h3 req/s | h3 / h2-TLS | h2-TLS p99 ms | h3 p99 ms | errors (h2/h3) |")
print("|---|---|---|---|---|---|---|")
shapes = {"m1": "16 x 1", "m10": "16 x 10"}
get = lambda sc, p, k: [float(r[k]) for r in rows if r["scenario"] == sc and r["proto"] == p and r[k]]
med = lambda v, f="{:.2f}": f.format(statistics.median(v)) if v else "-"
for sc, shape in shapes.items():
    a, b = get(sc, "h2", "rate"), get(sc, "h3", "rate")
    if not a or not b: continue
    ratios = [y / x for x, y in zip(a, b) if x > 0]
    errs = lambda p: int(sum(get(sc, p, "errors")))
    print(f"| {shape} | {statistics.median(a):,.0f} | {statistics.median(b):,.0f} | {statistics.median(ratios):.2f} | "
          f"{med(get(sc, 'h2', 'p99_ms'))} | {med(get(sc, 'h3', 'p99_ms'))} | {errs('h2')}/{errs('h3')} |")
print("\nCPU time over each cell (from /proc: the edge's, and the client's), medians:\n")
print("| connections x streams | protocol | edge CPU µs / request | edge cores busy | client cores busy |")
print("|---|---|---|---|---|")
for sc, shape in shapes.items():
    for proto, name in (("h2", "h2-TLS"), ("h3", "h3")):
        cells = [r for r in rows if r["scenario"] == sc and r["proto"] == proto and r["requests"]]
        if not cells: continue
        per_req = [float(r["edge_ticks"]) / hz * 1e6 / float(r["requests"]) for r in cells if float(r["requests"]) > 0]
        edge = [float(r["edge_ticks"]) / hz / float(r["seconds"]) for r in cells]
        client = [float(r["client_ticks"]) / hz / float(r["seconds"]) for r in cells]
        print(f"| {shape} | {name} | {med(per_req, '{:.0f}')} | {med(edge)} | {med(client)} |")
print("\nEach cell: keep-alive GETs of the 1 KiB hit for the run's DURATION, every stream in a "
      "loop (request, whole body, next). h3 / h2-TLS is the median of the per-repetition "
      "ratios. Client and edge share the machine's cores, and QUIC's packet processing runs "
      "in user space on both sides (no TCP stack doing it in the kernel), so h3 costs the "
      "client more too: edge CPU per request is the measure that does not depend on the "
      "client's share of the cores.")
if metrics:
    print("\nThe edge's HTTP/3 metrics after the run:\n\n```")
    print("\n".join(metrics))
    print("```")
PY
cat "$ROOT/bench/H3_RESULTS.md"
