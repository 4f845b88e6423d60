#!/usr/bin/env bash
# Disk-tier benchmark (issue 14): disk hits with a working set twice the memory tier, firebreak
# against nginx proxy_cache and Apache Traffic Server on the same disk in the same run, and
# objects recovered per second at start. Writes bench/DISK_RESULTS.md.
#
#   bench/disk.sh                         # REPS=3, 10 s runs, 16 KiB objects, 64 MiB memory tier
#   REPS=1 DURATION=3s MEM_MIB=16 bench/disk.sh   # quick check while developing
#
# Knobs: SIZE (object size, bytes or 16k/1m; 16k), MEM_MIB (memory tier: firebreak --cache-mib,
#   ATS ram_cache.size; 64), OBJECTS (default: twice the memory tier / SIZE), DISK_MIB (disk
#   tier of every peer; 512), REPS (3), DURATION (10s), CONNS (64), THREADS (1), WARMUP (3s),
#   PEERS ("nginx ats firebreak", minus what is missing), RECOVERY (1: time the restarts),
#   PROBE (objects asked right after an nginx restart; 200), SETTLE (seconds between the warm-up
#   pass and the check pass; 2), PORT_BASE (29080), BUILD (1:
#   cargo build --release --locked -p firebreak first), FIREBREAK_BIN, OUT (bench/DISK_RESULTS.md;
#   OUT=- prints it only), KEEP (1: keep the temp dir), REFERENCE (1: add the row
#   firebreak-mem, the same binary with the whole set in memory and no disk tier, port +15).
# firebreak runs as `firebreak edge --origin URL --listen ADDR --cache-mib M --disk-dir DIR
#   --disk-mib D --admin ADDR --admin-token T` (T random per run: its /metrics needs it); a
#   binary without `edge --disk-dir` is skipped and the results say so.
# Ports: origin PORT_BASE, nginx +10, ats +12, firebreak +13, firebreak admin +14.
# Everything listens on 127.0.0.1; every process this script starts is stopped by its PID on
# exit, and its temp dir under /tmp is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
HERE=$ROOT/bench/disk
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}
LIB="python3 $SHARED/tools/benchlib.py"   # wrkparse, fill
DLIB="python3 $HERE/disklib.py"
COMMAND="bench/disk.sh"
for v in SIZE MEM_MIB OBJECTS DISK_MIB REPS DURATION CONNS THREADS PEERS RECOVERY; do
  [[ -n "${!v:-}" ]] && COMMAND="$v=$(printf %q "${!v}") $COMMAND"
done

SIZE=${SIZE:-16k}
MEM_MIB=${MEM_MIB:-64}
DISK_MIB=${DISK_MIB:-512}
REPS=${REPS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-3s}
RECOVERY=${RECOVERY:-1}
PROBE=${PROBE:-200}
FILL_CONNS=${FILL_CONNS:-16}
SETTLE=${SETTLE:-2}
FILL_TIMEOUT=${FILL_TIMEOUT:-300}
RECOVER_TIMEOUT=${RECOVER_TIMEOUT:-300}
PORT_BASE=${PORT_BASE:-29080}
BUILD=${BUILD:-1}
FIREBREAK_BIN=${FIREBREAK_BIN:-$ROOT/target/release/firebreak}
OUT=${OUT:-$ROOT/bench/DISK_RESULTS.md}
KEEP=${KEEP:-0}
REFERENCE=${REFERENCE:-1}

SIZE_BYTES=$($DLIB size "$SIZE")
OBJECTS=${OBJECTS:-$(( 2 * MEM_MIB * 1048576 / SIZE_BYTES ))}
(( OBJECTS >= 1 )) || { echo "OBJECTS must be at least 1" >&2; exit 1; }
(( SIZE_BYTES * OBJECTS <= DISK_MIB * 1048576 / 2 )) || {
  echo "the working set ($((SIZE_BYTES * OBJECTS / 1048576)) MiB) must be at most half of DISK_MIB ($DISK_MIB)" >&2; exit 1; }

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
[[ -f $SHARED/tools/benchlib.py ]] || { echo "no shared harness at $SHARED" >&2; exit 1; }
for t in wrk nginx curl python3; do
  have $t || { echo "missing $t: run $SHARED/install.sh" >&2; exit 1; }
done

# bearer token of firebreak's admin listener (its /metrics needs it), new for every run
FIREBREAK_ADMIN_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
export FIREBREAK_ADMIN_TOKEN
ORIGIN_PORT=$PORT_BASE
ORIGIN_URL="http://127.0.0.1:$ORIGIN_PORT"
declare -A PORT=([nginx]=$((PORT_BASE + 10)) [ats]=$((PORT_BASE + 12)) [firebreak]=$((PORT_BASE + 13))
                 [firebreak-mem]=$((PORT_BASE + 15)))
ADMIN_PORT=$((PORT_BASE + 14))
for p in "$ORIGIN_PORT" "${PORT[@]}" "$ADMIN_PORT"; do
  if [[ -n "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]]; then
    echo "port $p is already in use: choose another PORT_BASE" >&2; exit 1
  fi
done

# ---------- peers ----------
FIREBREAK_SKIP=""
if [[ -z "${PEERS:-}" ]]; then
  PEERS="nginx"
  if have traffic_server; then PEERS+=" ats"; else log "traffic_server not installed: no ats row"; fi
  PEERS+=" firebreak"
fi
if [[ " $PEERS " == *" firebreak "* ]]; then
  if [[ $BUILD == 1 ]]; then
    log "building the release binary (cargo build --release --locked -p firebreak)"
    cargo build --release --locked -p firebreak >&2
  fi
  if [[ ! -x $FIREBREAK_BIN ]]; then
    FIREBREAK_SKIP="no binary at $FIREBREAK_BIN"
  elif ! "$FIREBREAK_BIN" edge --help 2>/dev/null | grep -q -- '--disk-dir'; then
    FIREBREAK_SKIP="its binary (commit $(git rev-parse --short HEAD)) has no \`edge --disk-dir\` yet"
  fi
  if [[ -n $FIREBREAK_SKIP ]]; then
    log "firebreak skipped: $FIREBREAK_SKIP"
    PEERS=$(echo " $PEERS " | sed 's/ firebreak / /; s/^ *//; s/ *$//')
  fi
fi
# reference row: the same binary with the whole set in its memory tier and no disk tier
REF_MIB=$(( 2 * SIZE_BYTES * OBJECTS / 1048576 + 64 ))
if [[ $REFERENCE == 1 && " $PEERS " == *" firebreak "* && " $PEERS " != *" firebreak-mem "* ]]; then
  PEERS+=" firebreak-mem"
fi
[[ -n $PEERS ]] || { echo "no peer to measure" >&2; exit 1; }

BENCH_DIR=$(mktemp -d /tmp/firebreak-diskbench.XXXXXX)
chmod 755 "$BENCH_DIR"
RUN=$BENCH_DIR/run
CSV=$BENCH_DIR/results.csv
META=$BENCH_DIR/meta.txt
mkdir -p "$RUN/conf" "$RUN/data" "$RUN/origin-tmp"
chmod 755 "$RUN" "$RUN/data"
echo "rep,section,peer,variant,metric,value" > "$CSV"
csv() { echo "$1,$2,$3,$4,$5,$6" >> "$CSV"; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------- process bookkeeping: only our own PIDs are ever signalled ----------
declare -A PID=()
stop_pid() {  # name [signal]
  local name=$1 sig=${2:-TERM} pid=${PID[$1]:-}
  [[ -z "$pid" ]] && return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -"$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  unset "PID[$name]"
}
cleanup() {
  local n
  for n in "${!PID[@]}"; do [[ $n == origin ]] || stop_pid "$n"; done
  stop_pid origin
  if [[ $KEEP == 1 ]]; then log "kept $BENCH_DIR"; else rm -rf "$BENCH_DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

render() {  # template output [port]
  sed -e "s#@RUN@#$RUN#g" -e "s#@DATA@#$RUN/data#g" -e "s#@ORIGIN_PORT@#$ORIGIN_PORT#g" \
      -e "s#@PORT@#${3:-}#g" -e "s#@DISK_MIB@#$DISK_MIB#g" \
      -e "s#@RAM_BYTES@#$((MEM_MIB * 1048576))#g" \
      -e "s#@ATS_LIBDIR@#${ATS_LIBDIR:-}#g" -e "s#@ATS_PLUGINDIR@#${ATS_PLUGINDIR:-}#g" \
      -e "s#@ATS_BINDIR@#${ATS_BINDIR:-}#g" -e "s#@ATS_PREFIX@#${ATS_PREFIX:-}#g" "$1" > "$2"
}
wait_http() {  # port seconds [pid]: 1 after the deadline, or as soon as pid has exited
  local deadline=$(( $(date +%s) + $2 ))
  while (( $(date +%s) < deadline )); do
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/" && return 0
    [[ -n ${3:-} ]] && ! kill -0 "$3" 2>/dev/null && return 1
    sleep 0.05
  done
  return 1
}
origin_reqs() { curl -s --max-time 5 "$ORIGIN_URL/__origin_status" | awk 'NR==3{print $3}'; }
now() { date +%s.%N; }

start_origin() {
  head -c "$SIZE_BYTES" /dev/urandom > "$RUN/data/object.bin"
  chmod 644 "$RUN/data/object.bin"
  render "$HERE/origin-nginx.conf" "$RUN/conf/origin-nginx.conf"
  nginx -p "$RUN" -e "$RUN/origin-error.log" -c "$RUN/conf/origin-nginx.conf" -g 'daemon off;' &
  PID[origin]=$!
  wait_http "$ORIGIN_PORT" 10 || { log "origin did not start"; exit 1; }
}

# start_peer NAME [keep]: with "keep", the peer's disk cache of an earlier start is kept
start_peer() {
  local n=$1 keep=${2:-} p=${PORT[$1]}
  case $n in
    nginx)
      [[ $keep == keep ]] || rm -rf "$RUN/nginx-cache-store"
      rm -rf "$RUN/nginx-cache-tmp"; mkdir -p "$RUN/nginx-cache-tmp"
      render "$HERE/nginx-cache.conf" "$RUN/conf/nginx-cache.conf" "$p"
      nginx -p "$RUN" -e "$RUN/nginx-cache-error.log" -c "$RUN/conf/nginx-cache.conf" -g 'daemon off;' &
      PID[$n]=$! ;;
    ats)
      local sysconf info
      info=$(traffic_layout info 2>/dev/null)
      sysconf=$(awk '/^SYSCONFDIR:/{print $2}' <<< "$info")
      ATS_LIBDIR=$(awk '/^LIBDIR:/{print $2}' <<< "$info")
      ATS_PLUGINDIR=$(awk '/^PLUGINDIR:/{print $2}' <<< "$info")
      ATS_BINDIR=$(awk '/^BINDIR:/{print $2}' <<< "$info")
      ATS_PREFIX=$(awk '/^PREFIX:/{print $2}' <<< "$info")
      [[ $keep == keep ]] || rm -rf "$RUN/ats"
      mkdir -p "$RUN/ats/etc" "$RUN/ats/cache" "$RUN/ats/log" "$RUN/ats/run" "$RUN/ats/var"
      cp -r "$sysconf"/. "$RUN/ats/etc/"
      for f in records.config remap.config storage.config plugin.config; do
        render "$HERE/ats/$f" "$RUN/ats/etc/$f" "$p"
      done
      render "$HERE/ats/runroot.yaml" "$RUN/ats/runroot.yaml"
      traffic_server --run-root="$RUN/ats/runroot.yaml" > "$RUN/ats/stdout.log" 2>&1 &
      PID[$n]=$! ;;
    firebreak)
      [[ $keep == keep ]] || { rm -rf "$RUN/firebreak-disk"; mkdir -p "$RUN/firebreak-disk"; }
      "$FIREBREAK_BIN" edge --origin "$ORIGIN_URL" --listen "127.0.0.1:$p" --cache-mib "$MEM_MIB" \
        --disk-dir "$RUN/firebreak-disk" --disk-mib "$DISK_MIB" --admin "127.0.0.1:$ADMIN_PORT" \
        --admin-token "$FIREBREAK_ADMIN_TOKEN" >> "$RUN/firebreak.log" 2>&1 &
      PID[$n]=$! ;;
    firebreak-mem)
      "$FIREBREAK_BIN" edge --origin "$ORIGIN_URL" --listen "127.0.0.1:$p" --cache-mib "$REF_MIB" \
        >> "$RUN/firebreak-mem.log" 2>&1 &
      PID[$n]=$! ;;
    *) log "unknown peer $n"; exit 1 ;;
  esac
}
wait_peer() {  # name
  wait_http "${PORT[$1]}" 120 "${PID[$1]:-}" && return 0
  log "peer $1 did not come up on port ${PORT[$1]}"
  tail -20 "$RUN"/*.log "$RUN"/ats/stdout.log 2>/dev/null >&2 || true
  exit 1
}
disk_kib() {  # name -> KiB used by the peer's disk cache ("" for ATS: its span is preallocated)
  case $1 in
    nginx) du -sk "$RUN/nginx-cache-store" | awk '{print $1}' ;;
    firebreak) du -sk "$RUN/firebreak-disk" | awk '{print $1}' ;;
    *) echo "" ;;
  esac
}
# every object of the set once; prints the requests that reached the origin
pass_misses() {  # name
  local before after out
  before=$(origin_reqs)
  out=$($LIB fill "${PORT[$1]}" ws "$OBJECTS" "$FILL_CONNS" "$FILL_TIMEOUT")
  after=$(origin_reqs)
  read -r ndone ok secs <<< "$out"
  (( ndone == OBJECTS && ok == OBJECTS )) || log "WARNING: $1: $ok of $OBJECTS answered 200 ($ndone done in ${secs}s)"
  echo "$((after - before - 1)) $secs"
}
# ATS's RAM-cache hits and misses so far, from the stats_over_http plugin (plugin.config):
# "hits misses", or "" when it cannot say
ats_ram() {
  { curl -s --max-time 5 "http://127.0.0.1:${PORT[ats]}/_stats" || true; } | python3 -c '
import json, sys
try:
    g = json.load(sys.stdin)["global"]
    print(int(g["proxy.process.cache.ram_cache.hits"]), int(g["proxy.process.cache.ram_cache.misses"]))
except (ValueError, KeyError):
    pass'
}
# firebreak's disk hits and all its hits so far: "disk_hits hits"
fb_hits() {
  $DLIB metrics "http://127.0.0.1:$ADMIN_PORT/metrics" firebreak_disk_hits_total \
    'firebreak_requests_total:cache="hit"' 2>/dev/null || true
}
wait_recovered() {  # t0 -> "secs objects"
  $DLIB waitmetric "http://127.0.0.1:$ADMIN_PORT/metrics" firebreak_disk_recovering 0 "$1" \
    "$RECOVER_TIMEOUT" firebreak_disk_recovered_objects_total "${PID[firebreak]:-}"
}

# ---------- run ----------
CPU=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
log "peers: $PEERS | $OBJECTS objects of $SIZE_BYTES B = $((SIZE_BYTES * OBJECTS / 1048576)) MiB," \
  "memory tier $MEM_MIB MiB, disk $DISK_MIB MiB | reps=$REPS duration=$DURATION conns=$CONNS | cpu: $CPU"
start_origin
for peer in $PEERS; do start_peer "$peer"; done
for peer in $PEERS; do wait_peer "$peer"; done
if [[ " $PEERS " == *" firebreak "* ]] && ! wait_recovered "$(now)" > /dev/null; then
  # the other peers' numbers are still worth having: go on without firebreak
  FIREBREAK_SKIP="it never showed \`firebreak_disk_recovering 0\` on http://127.0.0.1:$ADMIN_PORT/metrics"
  log "firebreak skipped: $FIREBREAK_SKIP (its log: $RUN/firebreak.log, kept with KEEP=1)"
  tail -5 "$RUN/firebreak.log" >&2 || true
  stop_pid firebreak
  PEERS=$(echo " $PEERS " | sed 's/ firebreak / /; s/^ *//; s/ *$//')
fi

for peer in $PEERS; do
  read -r m s < <(pass_misses "$peer")
  log "warm $peer: first pass of $OBJECTS objects in ${s}s, origin requests $m"
  sleep "$SETTLE"  # writes to disk may be asynchronous: let them land before the check
  read -r m s < <(pass_misses "$peer")
  csv 0 warm "$peer" "" misses "$m"; csv 0 warm "$peer" "" disk_kib "$(disk_kib "$peer")"
  log "warm $peer: second pass in ${s}s, origin requests $m (misses; ~0 = every object stored)"
  if [[ $peer == firebreak ]] && w=$($DLIB metrics "http://127.0.0.1:$ADMIN_PORT/metrics" \
      'firebreak_disk_writes_total:result="ok"' 'firebreak_disk_writes_total:result="queue_full"' \
      'firebreak_disk_writes_total:result="error"' firebreak_disk_objects); then
    read -r w_ok w_full w_err d_obj <<< "$w"
    csv 0 warm firebreak "" writes_ok "$w_ok"; csv 0 warm firebreak "" writes_queue_full "$w_full"
    csv 0 warm firebreak "" writes_error "$w_err"; csv 0 warm firebreak "" disk_objects "$d_obj"
    log "warm firebreak: disk writes ok=$w_ok queue_full=$w_full error=$w_err, firebreak_disk_objects=$d_obj"
  fi
  wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" -s "$HERE/random.lua" "http://127.0.0.1:${PORT[$peer]}" -- "$OBJECTS" > /dev/null
done

for rep in $(seq 1 "$REPS"); do
  for peer in $PEERS; do
    f="$BENCH_DIR/hit-$peer-$rep.txt"
    [[ $peer == ats ]] && ram0=$(ats_ram)
    [[ $peer == firebreak ]] && fb0=$(fb_hits)
    before=$(origin_reqs)
    perf_pid=""
    if [[ -n ${PERF_OUT:-} && $peer == firebreak && $rep == 1 ]] && have perf; then
      perf record -F 999 -g -p "${PID[firebreak]}" -o "$PERF_OUT" -- sleep 5 > /dev/null 2>&1 &
      perf_pid=$!
    fi
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$HERE/random.lua" \
      "http://127.0.0.1:${PORT[$peer]}" -- "$OBJECTS" > "$f" 2>&1 || true
    [[ -n $perf_pid ]] && { wait "$perf_pid" || true; log "perf profile of firebreak's first run: $PERF_OUT"; }
    after=$(origin_reqs)
    read -r rps mib p50 p99 err < <($LIB wrkparse "$f") || { log "hit $peer rep $rep: wrk failed:"; cat "$f" >&2; continue; }
    orig=$((after - before - 1))
    for kv in "rps $rps" "mib_s $mib" "p50_ms $p50" "p99_ms $p99" "errors $err" "origin_reqs $orig"; do
      csv "$rep" hit "$peer" "" $kv
    done
    log "hit rep=$rep peer=$peer rps=$rps MiB/s=$mib p50=${p50}ms p99=${p99}ms errors=$err origin_reqs=$orig"
    if [[ $peer == ats && -n ${ram0:-} ]] && ram1=$(ats_ram) && [[ -n $ram1 ]]; then
      read -r h0 m0 <<< "$ram0"; read -r h1 m1 <<< "$ram1"
      if (( h1 + m1 > h0 + m0 )); then
        pct=$(awk -v h=$((h1 - h0)) -v m=$((m1 - m0)) 'BEGIN{printf "%.1f", 100 * h / (h + m)}')
        csv "$rep" hit ats "" ram_hit_pct "$pct"
        log "hit rep=$rep peer=ats: $pct% of cache reads were RAM-cache hits, the rest read the span"
      fi
    fi
    if [[ $peer == firebreak && -n ${fb0:-} ]] && fb1=$(fb_hits) && [[ -n $fb1 ]]; then
      read -r d0 h0 <<< "$fb0"; read -r d1 h1 <<< "$fb1"
      if (( h1 > h0 )); then
        pct=$(awk -v d=$((d1 - d0)) -v h=$((h1 - h0)) 'BEGIN{printf "%.1f", 100 * d / h}')
        csv "$rep" hit firebreak "" disk_hit_pct "$pct"
        log "hit rep=$rep peer=firebreak: $pct% of hits came from the disk tier"
      fi
    fi
  done
done

if [[ $RECOVERY == 1 && " $PEERS " == *" firebreak "* ]]; then
  for sig in TERM KILL; do
    stop_pid firebreak "$sig"
    t0=$(now); start_peer firebreak keep
    if out=$(wait_recovered "$t0"); then
      read -r secs objs <<< "$out"
      wait_peer firebreak
      read -r m _ < <(pass_misses firebreak)
      csv 0 recover firebreak "SIG$sig" secs "$secs"; csv 0 recover firebreak "SIG$sig" objects "$objs"
      csv 0 recover firebreak "SIG$sig" misses_after "$m"
      own=$(sed 's/\x1b\[[0-9;]*m//g' "$RUN/firebreak.log" | grep 'disk tier recovered' | tail -1 \
        | grep -o 'objects=[0-9]* removed=[0-9]* ms=[0-9]*' || true)
      [[ -n $own ]] && echo "note_firebreak_SIG$sig=its log: \`$own\`" >> "$META"
      log "recover firebreak after SIG$sig: $objs objects in ${secs}s (its log: ${own:-nothing}), then $m of $OBJECTS objects missed"
    else
      log "recover firebreak after SIG$sig: did not finish within ${RECOVER_TIMEOUT}s"
      echo "note_firebreak_SIG$sig=did not finish within ${RECOVER_TIMEOUT} s" >> "$META"
    fi
  done
fi
if [[ $RECOVERY == 1 && " $PEERS " == *" nginx "* ]]; then
  files=$(find "$RUN/nginx-cache-store" -type f | wc -l)
  stop_pid nginx TERM
  t0=$(now); start_peer nginx keep; wait_peer nginx
  master=${PID[nginx]}
  # objects asked right after the restart, before the loader (which starts 60 s later) ran
  before=$(origin_reqs)
  probe=$($LIB fill "${PORT[nginx]}" ws "$PROBE" "$FILL_CONNS" 60)
  probe_m=$(( $(origin_reqs) - before - 1 ))
  log "recover nginx: $PROBE objects asked before the loader ran: $probe_m reached the origin ($probe)"
  log "recover nginx: waiting for the cache loader (nginx starts it 60 s after the start)"
  if out=$($DLIB nginxloader "$master" "$t0" $((RECOVER_TIMEOUT + 60))); then
    read -r started exited cpu <<< "$out"
    secs=$(awk -v a="$started" -v e="$exited" 'BEGIN{printf "%.3f", e - a}')
    read -r m _ < <(pass_misses nginx)
    csv 0 recover nginx SIGTERM secs "$secs"; csv 0 recover nginx SIGTERM objects "$files"
    csv 0 recover nginx SIGTERM probe_misses "$probe_m"; csv 0 recover nginx SIGTERM misses_after "$m"
    echo "note_nginx_SIGTERM=walk began ${started} s after nginx started, took ${cpu} s of CPU; \`$(grep -o 'http file cache: .*' "$RUN/nginx-cache-error.log" | tail -1 | sed "s#$RUN/##")\`" >> "$META"
    log "recover nginx: the loader walked $files files from ${started}s to ${exited}s after the start (${secs}s, ${cpu}s CPU); then $m of $OBJECTS missed"
  else
    log "recover nginx: the loader did not finish in time"
  fi
fi

# ---------- report ----------
{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "cpu=${CPU:-unknown}"; echo "nproc=$(nproc)"
  echo "load=$LOAD0 at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
  echo "mem_gib=$(awk '/MemTotal/{printf "%.0f", $2 / 1048576}' /proc/meminfo)"
  echo "commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- bench || echo ' + uncommitted bench/ changes')"
  echo "command=$COMMAND"
  echo "fs=$(df -T "$BENCH_DIR" | awk 'NR==2{print $2 " on " $1}')"
  echo "nginx_version=$(nginx -v 2>&1 | sed 's/^nginx version: //')"
  echo "ats_version=$( (traffic_server --version 2>/dev/null || echo 'ATS not installed') | head -1 | awk '{print $1, $2, $3}')"
  echo "wrk_version=$(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}')"
  echo "size_bytes=$SIZE_BYTES"; echo "objects=$OBJECTS"; echo "mem_mib=$MEM_MIB"; echo "disk_mib=$DISK_MIB"
  echo "ref_mib=$REF_MIB"
  echo "reps=$REPS"; echo "duration=$DURATION"; echo "conns=$CONNS"; echo "threads=$THREADS"
  echo "warmup=$WARMUP"; echo "settle=$SETTLE"; echo "fill_conns=$FILL_CONNS"; echo "probe=$PROBE"; echo "peers=$PEERS"
  [[ -n $FIREBREAK_SKIP ]] && echo "firebreak_skip=$FIREBREAK_SKIP"
  true
} >> "$META"
# The shield's origin requests: the process drill (firebreak up's 3 POPs x 2 edges, the demo
# service shielded by one POP). SHIELD=0 leaves it out.
if [[ ${SHIELD:-1} == 1 ]]; then
  log "shield drill (cargo test -p firebreak --test shield_drill)"
  if shield=$(cargo test --locked -q -p firebreak --test shield_drill -- --nocapture 2>&1); then
    echo "$shield" | grep -o 'origin requests for one cold object.*' | sed 's/^/shield=/' >> "$META"
  else
    echo "shield=the drill failed" >> "$META"
  fi
fi
if [[ $OUT == - ]]; then
  $DLIB report "$CSV" "$META"
else
  $DLIB report "$CSV" "$META" > "$OUT"
  log "wrote $OUT"
  cat "$OUT"
fi
