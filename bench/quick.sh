#!/usr/bin/env bash
# The hit path's regression guard (issue 15): under a minute, one machine, ratios in one run.
#
# An nginx origin serves a 1 KiB object (`SIZE`); the release edge caches it in front. wrk
# (`-t1 -c64`, `SECS` seconds) asks origin-direct and the edge in turn, `REPS` times, and the
# medians and the ratio edge / origin-direct are printed. With `BASE_BIN=path/to/firebreak`
# (a build of the commit before a change) that binary is measured in the same rounds and the
# ratio new / base is printed too: a change that costs 10% shows.
#
#   bench/quick.sh                                  # ~40 s
#   BASE_BIN=/tmp/firebreak-before bench/quick.sh   # A/B, ~55 s
#   SIZE=16384 REPS=5 SECS=5 bench/quick.sh
#   CLIENT=h2c STREAMS=1 bench/quick.sh             # h2load over cleartext HTTP/2 instead of wrk
#
# With `CLIENT=h2c`, h2load (`-c64 -m$STREAMS -t1`) asks origin-direct on nginx's h2c server
# (port +3) and the edges with prior knowledge; h2load gives no percentiles, so the latency
# column is its mean time per request.
#
# Needs nginx and wrk, and h2load for `CLIENT=h2c` (`apt-get install nginx-light wrk nghttp2-client`); starts and stops only its own
# processes (by PID) on 127.0.0.1 ports QUICK_PORT (28380) .. +3.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
SECS=${SECS:-5}
SIZE=${SIZE:-1024}
PORT=${QUICK_PORT:-28380}
BIN=${BIN:-target/release/firebreak}
BASE_BIN=${BASE_BIN:-}
CLIENT=${CLIENT:-wrk}
STREAMS=${STREAMS:-1}
case $CLIENT in
  wrk) tools=(nginx wrk) ;;
  h2c) tools=(nginx h2load) ;;
  *) echo "quick.sh: CLIENT is wrk or h2c, not $CLIENT" >&2; exit 2 ;;
esac
source bench/run_dir.sh
bench_need quick.sh "nginx-light wrk nghttp2-client" "${tools[@]}"
[[ -n ${SKIP_BUILD:-} ]] || cargo build --release --locked -p firebreak >&2
bench_run_dir quick "$SIZE"
cat > "$RUN/nginx.conf" <<EOF
worker_processes auto;
pid $RUN/nginx.pid;
error_log $RUN/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_requests 1000000;
    open_file_cache max=100 inactive=60s;
    client_body_temp_path $RUN/tmp/body; proxy_temp_path $RUN/tmp/proxy;
    fastcgi_temp_path $RUN/tmp/fastcgi; uwsgi_temp_path $RUN/tmp/uwsgi; scgi_temp_path $RUN/tmp/scgi;
    server {
        listen 127.0.0.1:$PORT backlog=4096 reuseport;
        root $RUN/www;
        location /static/ { add_header Cache-Control "public, max-age=3600" always; }
    }
    server {
        # h2c origin-direct for CLIENT=h2c; sendfile off: with it nginx stalls ~40 ms per
        # response on h2c with one stream per connection (as in the shared harness's origin).
        listen 127.0.0.1:$((PORT + 3)) http2 backlog=4096 reuseport;
        sendfile off;
        root $RUN/www;
        location /static/ { add_header Cache-Control "public, max-age=3600" always; }
    }
}
EOF
nginx -p "$RUN" -e "$RUN/nginx-error.log" -c "$RUN/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

declare -A URL=([origin]="http://127.0.0.1:$PORT/static/obj.bin")
peers=(origin)
start_edge() { # name binary port
  "$2" edge --origin "127.0.0.1:$PORT" --listen "127.0.0.1:$3" >"$RUN/$1.log" 2>&1 &
  PIDS+=($!)
  URL[$1]="http://127.0.0.1:$3/static/obj.bin"
  peers+=("$1")
}
start_edge edge "$BIN" $((PORT + 1))
[[ -z $BASE_BIN ]] || start_edge base "$BASE_BIN" $((PORT + 2))

for peer in "${peers[@]}"; do
  ok=
  for _ in $(seq 100); do
    if curl -sf -o /dev/null "${URL[$peer]}"; then ok=1; break; fi
    sleep 0.1
  done
  [[ -n $ok ]] || { echo "quick.sh: $peer did not answer" >&2; cat "$RUN/$peer.log" >&2 || true; exit 1; }
  status=$(curl -s -o /dev/null -D - "${URL[$peer]}" | tr -d '\r' | awk -F': ' 'tolower($1)=="cache-status"{print $2}')
  if [[ $peer != origin && $status != *"; hit"* ]]; then
    echo "quick.sh: $peer does not answer hits (Cache-Status: $status)" >&2; exit 1
  fi
done

# Converts h2load's or wrk's "12.34us" / "1.2ms" / "0.5s" to milliseconds.
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}'; }
measure() { # url -> "req/s latency-ms"
  local out
  if [[ $CLIENT == h2c ]]; then
    out=$(h2load -c64 -m"$STREAMS" -t1 -D"$SECS" "$1")
    grep -q ' 0 failed, 0 errored, 0 timeout' <<<"$out" || { echo "quick.sh: h2load saw errors: $out" >&2; exit 1; }
    echo "$(awk '/^finished in/{print $4}' <<<"$out") $(awk '/^time for request:/{print $6}' <<<"$out" | to_ms)"
  else
    out=$(wrk -t1 -c64 -d"${SECS}s" --latency "$1")
    echo "$(awk '/^Requests\/sec/{print $2}' <<<"$out") $(awk '$1=="99%"{print $2}' <<<"$out" | to_ms)"
  fi
}
[[ $CLIENT == h2c ]] && { URL[origin]="http://127.0.0.1:$((PORT + 3))/static/obj.bin"; LAT="mean"; } || LAT="p99"

declare -A RPS=() P99=()
for rep in $(seq "$REPS"); do
  for peer in "${peers[@]}"; do
    read -r rps p99 < <(measure "${URL[$peer]}")
    RPS[$peer]+="$rps "
    P99[$peer]+="$p99 "
    echo "rep $rep $peer: $rps req/s, $LAT $p99 ms" >&2
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
[[ $CLIENT == h2c ]] && client="h2load h2c -c64 -m$STREAMS -t1" || client="wrk -t1 -c64"
echo "quick hit bench: $SIZE B object, $client ${SECS}s x $REPS, $(nproc) cores, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
origin=$(median <<<"${RPS[origin]}")
for peer in "${peers[@]}"; do
  r=$(median <<<"${RPS[$peer]}"); p=$(median <<<"${P99[$peer]}")
  printf "%-7s %10.0f req/s  $LAT %6.2f ms  / origin-direct %.3f\n" "$peer" "$r" "$p" "$(awk -v a="$r" -v b="$origin" 'BEGIN{print a/b}')"
done
if [[ -n $BASE_BIN ]]; then
  # Paired per repetition: new / base in the same round, then the median.
  paste <(tr ' ' '\n' <<<"${RPS[edge]}") <(tr ' ' '\n' <<<"${RPS[base]}") | awk 'NF==2 && $2>0{print $1/$2}' \
    | median | xargs printf 'edge / base (paired median) %.3f\n'
fi
