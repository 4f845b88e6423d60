# Sourced by bench/quick.sh and bench/instructions.sh: a run directory holding the object an
# nginx origin serves, and every process the script starts (added to PIDS) stopped by PID
# when it exits.
#
#   bench_run_dir NAME SIZE   # sets RUN (/tmp/fb-NAME.*, kept with KEEP_RUN=1) and PIDS;
#                             # writes SIZE random bytes to $RUN/www/static/obj.bin
bench_run_dir() {
  RUN=$(mktemp -d "/tmp/fb-$1.XXXXXX")
  chmod 755 "$RUN" # nginx workers (www-data) read the object
  PIDS=()
  trap bench_cleanup EXIT
  mkdir -p "$RUN/www/static" "$RUN/tmp"
  head -c "$2" /dev/urandom > "$RUN/www/static/obj.bin"
}

bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [[ -n ${KEEP_RUN:-} ]] || rm -rf "$RUN"
}

# Exits 2, naming the packages to install, when a tool is missing.
#
#   bench_need SCRIPT "apt packages" TOOL...
bench_need() {
  local script=$1 packages=$2
  shift 2
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$script: needs $tool (apt-get install $packages)" >&2; exit 2; }
  done
}
