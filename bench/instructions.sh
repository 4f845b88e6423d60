#!/usr/bin/env bash
# Instructions per cache hit, counted by valgrind (callgrind): the hit path's exact regression
# guard (issue 15). On a shared 2-core machine req/s moves by 20-30% between repetitions, so
# a change worth 3% cannot be seen in `bench/quick.sh`; the edge's own user-space instructions
# per request can, to within 0.1% between runs. They leave the kernel out (system calls, the
# TCP stack): count those with `strace -c`.
#
# The edge runs under callgrind in front of an nginx origin; h2load (`-c4 -t1`) asks it for a
# warm object twice, WARM requests then WARM+N on fresh connections, and the counters are
# dumped after each: the difference is N requests' worth, with connection setup and TLS
# handshakes (the same in both runs) taken out.
#
#   bench/instructions.sh                              # HTTP/1.1, 1 KiB, ~30 s
#   CLIENT=h2c STREAMS=1 bench/instructions.sh         # h2 with prior knowledge
#   CLIENT=h2tls bench/instructions.sh                 # h2 over TLS 1.3 (ALPN h2)
#   BASE_BIN=/tmp/firebreak-before bench/instructions.sh   # A/B: prints new / base
#   SIZE=16384 N=20000 bench/instructions.sh
#
# Needs valgrind, nginx, h2load and openssl (`apt-get install valgrind nginx-light
# nghttp2-client openssl`); starts and stops only its own processes (by PID) on 127.0.0.1
# ports INSTR_PORT (28480) .. +1.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-1024}
N=${N:-20000}
WARM=${WARM:-2000}
CLIENT=${CLIENT:-h1}
STREAMS=${STREAMS:-1}
PORT=${INSTR_PORT:-28480}
BIN=${BIN:-target/release/firebreak}
BASE_BIN=${BASE_BIN:-}
case $CLIENT in
  h1 | h2c | h2tls) ;;
  *) echo "instructions.sh: CLIENT is h1, h2c or h2tls, not $CLIENT" >&2; exit 2 ;;
esac
source bench/run_dir.sh
bench_need instructions.sh "valgrind nginx-light nghttp2-client openssl curl" \
  valgrind callgrind_control nginx h2load openssl curl
[[ -n ${SKIP_BUILD:-} ]] || cargo build --release --locked -p firebreak >&2
bench_run_dir instr "$SIZE"
cat > "$RUN/nginx.conf" <<EOF
worker_processes 1;
pid $RUN/nginx.pid;
error_log $RUN/nginx-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $RUN/tmp/body; proxy_temp_path $RUN/tmp/proxy;
    fastcgi_temp_path $RUN/tmp/fastcgi; uwsgi_temp_path $RUN/tmp/uwsgi; scgi_temp_path $RUN/tmp/scgi;
    server {
        listen 127.0.0.1:$PORT;
        root $RUN/www;
        location /static/ { add_header Cache-Control "public, max-age=3600" always; }
    }
}
EOF
nginx -p "$RUN" -e "$RUN/nginx-error.log" -c "$RUN/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

EDGE_PORT=$((PORT + 1))
args=(edge --origin "127.0.0.1:$PORT" --listen "127.0.0.1:$EDGE_PORT")
url="http://127.0.0.1:$EDGE_PORT/static/obj.bin"
curl_args=()
load_args=(-c4 -m"$STREAMS" -t1)
case $CLIENT in
  h1) load_args+=(--h1) ;;
  h2tls)
    source bench/certs.sh
    bench_certs "$RUN"
    cat > "$RUN/edge.toml" <<EOF
[[listener]]
addr = "127.0.0.1:$EDGE_PORT"
tls = true
[[service]]
name = "bench"
hosts = ["bench.test"]
default = true
[service.origin]
servers = [{ addr = "127.0.0.1:$PORT" }]
[service.tls]
cert_file = "$RUN/leaf.pem"
key_file = "$RUN/leaf.key"
EOF
    args=(edge --config "$RUN/edge.toml")
    url="https://bench.test:$EDGE_PORT/static/obj.bin"
    curl_args=(--cacert "$RUN/ca.pem" --resolve "bench.test:$EDGE_PORT:127.0.0.1")
    load_args+=(--connect-to="127.0.0.1:$EDGE_PORT")
    ;;
esac

# The total instructions of one callgrind dump.
total() { awk '/^(summary|totals):/{print $2; exit}' "$1"; }

# Instructions per request of one build: prints the number.
measure() { # name binary
  local out="$RUN/$1.cg"
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" "$2" "${args[@]}" \
    >"$RUN/$1.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  local ok=
  for _ in $(seq 300); do
    if curl -sf "${curl_args[@]}" -o /dev/null "$url"; then ok=1; break; fi
    sleep 0.1
  done
  [[ -n $ok ]] || { echo "instructions.sh: $1 did not answer" >&2; cat "$RUN/$1.log" >&2; exit 1; }
  local status
  status=$(curl -s "${curl_args[@]}" -o /dev/null -D - "$url" | tr -d '\r' | awk -F': ' 'tolower($1)=="cache-status"{print $2}')
  [[ $status == *"; hit"* ]] || { echo "instructions.sh: $1 does not answer hits (Cache-Status: $status)" >&2; exit 1; }
  callgrind_control -i on "$pid" >/dev/null 2>&1
  for n in "$WARM" $((WARM + N)); do
    local res
    res=$(h2load "${load_args[@]}" -n"$n" "$url")
    grep -q "$n succeeded, 0 failed" <<<"$res" || { echo "instructions.sh: h2load against $1: $res" >&2; exit 1; }
    callgrind_control -d "$pid" >/dev/null 2>&1
  done
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  local a b
  a=$(total "$out.1")
  b=$(total "$out.2")
  awk -v a="$a" -v b="$b" -v n="$N" 'BEGIN{printf "%.0f\n", (b - a) / n}'
}

edge=$(measure edge "$BIN")
label="$CLIENT"
[[ $CLIENT == h1 ]] || label+=" m$STREAMS"
echo "instructions per hit: $SIZE B object, $label, h2load -c4, $N requests (valgrind $(valgrind --version | sed 's/valgrind-//'))"
printf "edge  %8d\n" "$edge"
if [[ -n $BASE_BIN ]]; then
  base=$(measure base "$BASE_BIN")
  printf "base  %8d\n" "$base"
  awk -v a="$edge" -v b="$base" 'BEGIN{printf "edge / base %.3f\n", a / b}'
fi
