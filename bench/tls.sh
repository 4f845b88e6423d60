#!/usr/bin/env bash
# HTTPS benchmark: the firebreak edge against nginx proxy_cache, both terminating TLS with
# the same ECDSA P-256 certificate, measured in one run with peers interleaved per
# repetition; writes bench/TLS_RESULTS.md (medians and the ratio firebreak / nginx).
#
#   bench/tls.sh                        # REPS=3 DURATION=10
#   REPS=1 DURATION=3 bench/tls.sh      # quick
#   BASE_BIN=/tmp/firebreak-before bench/tls.sh   # A/B: that build measured in the same rounds
#
# Scenarios (client: fbload, bench/load, one thread):
#   handshakes   full TLS 1.3 handshakes per second (resumption off), 32 connections at once
#   https-h1     1 KiB hits over HTTP/1.1 keep-alive, 64 connections
#   https-h2     1 KiB hits over h2, 64 connections x 1 stream, and 16 connections x 10 streams
# Everything listens on 127.0.0.1 (ports PORT_BASE=29080 and up); every process started
# here is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REPS=${REPS:-3}
DURATION=${DURATION:-10}
PORT_BASE=${PORT_BASE:-29080}
ORIGIN_PORT=$PORT_BASE
NGINX_PORT=$((PORT_BASE + 1))
EDGE_PORT=$((PORT_BASE + 2))
BASE_PORT=$((PORT_BASE + 3))
BASE_BIN=${BASE_BIN:-}
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx; }
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }

cargo build --release --locked -p firebreak -p firebreak-load
BIN=${BIN:-$ROOT/target/release/firebreak} # another build (an A/B) with BIN=
LOAD=$ROOT/target/release/fbload

RUN=$(mktemp -d /tmp/cdnbench-tls.XXXXXX)
chmod 755 "$RUN"   # nginx workers (www-data) read www/ and the certificate
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    [[ -f $RUN/nginx.pid ]] && kill "$(cat "$RUN/nginx.pid")" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    # The run's files (certificates, cache, logs) go with it unless KEEP_RUN is set.
    [[ -n ${KEEP_RUN:-} ]] || rm -rf "$RUN"
}
trap cleanup EXIT

# One CA, one ECDSA P-256 leaf for bench.test: both peers serve this pair.
source bench/certs.sh
bench_certs "$RUN"

mkdir -p "$RUN/www/static" "$RUN/tmp" "$RUN/cache"
head -c 1024 /dev/urandom > "$RUN/www/static/1k.bin"
sed -e "s|@RUN@|$RUN|g" -e "s|@ORIGIN_PORT@|$ORIGIN_PORT|g" -e "s|@NGINX_PORT@|$NGINX_PORT|g" \
    bench/tls/nginx.conf > "$RUN/nginx.conf"
nginx -c "$RUN/nginx.conf" -e "$RUN/nginx-error.log"

cat > "$RUN/edge.toml" <<TOML
[[listener]]
addr = "127.0.0.1:$EDGE_PORT"
tls = true

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

[service.tls]
cert_file = "$RUN/leaf.pem"
key_file = "$RUN/leaf.key"
TOML
"$BIN" edge --config "$RUN/edge.toml" > "$RUN/edge.log" 2>&1 &
PIDS+=($!)
ports=("$NGINX_PORT" "$EDGE_PORT")
peers=(nginx firebreak)
if [[ -n $BASE_BIN ]]; then
    sed "s|127.0.0.1:$EDGE_PORT\"|127.0.0.1:$BASE_PORT\"|" "$RUN/edge.toml" > "$RUN/base.toml"
    "$BASE_BIN" edge --config "$RUN/base.toml" > "$RUN/base.log" 2>&1 &
    PIDS+=($!)
    ports+=("$BASE_PORT")
    peers+=(base)
fi

for port in "${ports[@]}"; do
    for _ in $(seq 100); do
        curl -sf --cacert "$RUN/ca.pem" --resolve "bench.test:$port:127.0.0.1" \
            "https://bench.test:$port/static/1k.bin" -o /dev/null && break
        sleep 0.1
    done
    # Warm: the object is a hit from here on.
    curl -sf --cacert "$RUN/ca.pem" --resolve "bench.test:$port:127.0.0.1" \
        "https://bench.test:$port/static/1k.bin" -o /dev/null \
        || { echo "peer on port $port does not answer over HTTPS" >&2; exit 1; }
done

CSV=$RUN/results.csv
echo "rep,scenario,peer,rate,p99_ms,errors" > "$CSV"
measure() { # rep scenario peer port args...
    local rep=$1 scenario=$2 peer=$3 port=$4; shift 4
    local out
    out=$("$LOAD" "$@" --addr "127.0.0.1:$port" --sni bench.test --ca "$RUN/ca.pem" \
        --duration "$DURATION" | tee -a "$RUN/load.log" | grep '^RESULT')
    local rate p99 errors
    rate=$(sed -n 's/.* rate=\([0-9.]*\).*/\1/p' <<<"$out")
    p99=$(sed -n 's/.* p99_ms=\([0-9.]*\).*/\1/p' <<<"$out")
    errors=$(sed -n 's/.* errors=\([0-9]*\).*/\1/p' <<<"$out")
    echo "$rep,$scenario,$peer,$rate,${p99:-},$errors" >> "$CSV"
    echo "rep $rep $scenario $peer: $rate/s p99 ${p99:--} ms errors $errors"
}
for rep in $(seq "$REPS"); do
    for peer in "${peers[@]}"; do
        case $peer in nginx) port=$NGINX_PORT ;; firebreak) port=$EDGE_PORT ;; base) port=$BASE_PORT ;; esac
        measure "$rep" handshakes "$peer" "$port" handshakes --conns 32
        measure "$rep" https-h1 "$peer" "$port" https --path /static/1k.bin --conns 64
        measure "$rep" https-h2-m1 "$peer" "$port" https --path /static/1k.bin --conns 64 --h2
        measure "$rep" https-h2-m10 "$peer" "$port" https --path /static/1k.bin --conns 16 --h2 --streams 10
    done
done

python3 - "$CSV" > "$ROOT/bench/TLS_RESULTS.md" <<'PY'
import csv, statistics, sys, platform, subprocess, datetime
rows = list(csv.DictReader(open(sys.argv[1])))
cpu = "unknown"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip(); break
print("# HTTPS benchmark: firebreak edge vs nginx proxy_cache\n")
print(f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC on {cpu} ({subprocess.run(['nproc'],capture_output=True,text=True).stdout.strip()} cores), "
      f"`bench/tls.sh` (REPS={len({r['rep'] for r in rows})}). Same ECDSA P-256 certificate, same 1 KiB object "
      "(a hit), same client (`fbload`, one thread), peers interleaved per repetition; medians.\n")
print("| scenario | nginx /s | firebreak /s | firebreak / nginx | nginx p99 ms | firebreak p99 ms | errors (n/f) |")
print("|---|---|---|---|---|---|---|")
for sc in ["handshakes", "https-h1", "https-h2-m1", "https-h2-m10"]:
    get = lambda p, k: [float(r[k]) for r in rows if r["scenario"] == sc and r["peer"] == p and r[k]]
    n, f = get("nginx", "rate"), get("firebreak", "rate")
    if not n or not f: continue
    ratios = [b / a for a, b in zip(n, f) if a > 0]
    np99, fp99 = get("nginx", "p99_ms"), get("firebreak", "p99_ms")
    med = lambda v: f"{statistics.median(v):.2f}" if v else "-"
    errs = lambda p: int(sum(get(p, "errors")))
    print(f"| {sc} | {statistics.median(n):,.0f} | {statistics.median(f):,.0f} | {statistics.median(ratios):.2f} | {med(np99)} | {med(fp99)} | {errs('nginx')}/{errs('firebreak')} |")
print("\nhandshakes = full TLS 1.3 handshakes per second, resumption off, 32 connections at once "
      "(connect, handshake, close_notify, wait for the server's close). https-* = 1 KiB hits "
      "over keep-alive: HTTP/1.1 with 64 connections; h2 with 64 connections x 1 stream and "
      "16 x 10 streams. Target: firebreak / nginx >= 1.0 on handshakes and on HTTPS 1 KiB hits.")
if any(r["peer"] == "base" for r in rows):
    print("\nA/B (`BASE_BIN`, measured in the same rounds): firebreak / base, median of per-repetition pairs\n")
    print("| scenario | base /s | firebreak /s | firebreak / base |")
    print("|---|---|---|---|")
    for sc in ["handshakes", "https-h1", "https-h2-m1", "https-h2-m10"]:
        f = [float(r["rate"]) for r in rows if r["scenario"] == sc and r["peer"] == "firebreak" and r["rate"]]
        b = [float(r["rate"]) for r in rows if r["scenario"] == sc and r["peer"] == "base" and r["rate"]]
        if f and b:
            ab = [x / y for x, y in zip(f, b) if y > 0]
            print(f"| {sc} | {statistics.median(b):,.0f} | {statistics.median(f):,.0f} | {statistics.median(ab):.3f} |")
PY
cat "$ROOT/bench/TLS_RESULTS.md"
