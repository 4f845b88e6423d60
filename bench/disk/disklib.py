#!/usr/bin/env python3
"""Helpers for bench/disk.sh (stdlib only). Subcommands:

  size SIZE                       -> bytes ("16k" -> 16384, "1m" -> 1048576, "4096" -> 4096)
  waitmetric URL NAME VALUE T0 TIMEOUT [OTHER [PID]]
                                  -> polls the Prometheus text at URL every 5 ms until the
                                     gauge NAME equals VALUE; prints "secs other_value" where
                                     secs is counted from T0 (epoch seconds, taken by the
                                     caller just before it started the process) and
                                     other_value is the metric OTHER at that moment ("nan"
                                     when absent). $FIREBREAK_ADMIN_TOKEN, when set, is sent
                                     as the bearer token. Exit 1 after TIMEOUT seconds, or as soon
                                     as PID has exited.
  metrics URL SPEC...             -> one value per SPEC (NAME, or NAME:LABEL to sum only the
                                     label sets containing LABEL, e.g. 'cache="hit"')
  nginxloader MASTER_PID T0 TIMEOUT
                                  -> finds the "cache loader process" child of the nginx
                                     master and polls its CPU time (every 1 ms from T0+55 s);
                                     prints "start_s end_s cpu_s": when its directory walk
                                     began and when it exited (from T0), and the CPU seconds
                                     the walk took. Exit 1 after TIMEOUT seconds.
  report CSV META                 -> DISK_RESULTS.md on stdout (META: key=value lines)
All traffic goes to 127.0.0.1 only.
"""
import csv
import os
import re
import statistics
import sys
import time
import urllib.request
from collections import defaultdict


def size(tok):
    m = re.fullmatch(r"(\d+)([kKmM]?)", tok.strip())
    if not m:
        sys.exit(f"SIZE {tok!r}: give bytes, or a number with k or m")
    mult = {"": 1, "k": 1024, "m": 1048576}[m.group(2).lower()]
    print(int(m.group(1)) * mult)


def _metric(text, name, label=None):
    """The value of NAME in Prometheus text, summed over its label sets (only those whose
    labels contain LABEL, e.g. 'cache="hit"', when given); None when absent."""
    total = None
    for ln in text.splitlines():
        if ln.startswith("#"):
            continue
        parts = ln.rsplit(None, 1)
        if len(parts) != 2:
            continue
        key = parts[0]
        if key != name and not key.startswith(name + "{"):
            continue
        if label and label not in key:
            continue
        try:
            total = (total or 0.0) + float(parts[1])
        except ValueError:
            pass
    return total


def _fetch(url):
    """GET url; the bearer token in $FIREBREAK_ADMIN_TOKEN is sent when set."""
    req = urllib.request.Request(url)
    token = os.environ.get("FIREBREAK_ADMIN_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=2) as resp:
        return resp.read().decode(errors="replace")


def metrics(url, *specs):
    """Prints one value per SPEC (NAME or NAME:LABEL), 0 when absent."""
    text = _fetch(url)
    vals = []
    for spec in specs:
        name, _, label = spec.partition(":")
        vals.append(_metric(text, name, label or None) or 0.0)
    print(" ".join(f"{v:.0f}" for v in vals))


def waitmetric(url, name, value, t0, timeout, other=None, pid=None):
    value, t0, deadline = float(value), float(t0), time.time() + float(timeout)
    while time.time() < deadline:
        if pid and _cpu_ns(int(pid)) is None:
            sys.exit(f"process {pid} exited before {name} reached {value}")
        try:
            text = _fetch(url)
            now = time.time()
            v = _metric(text, name)
            if v is not None and v == value:
                o = _metric(text, other) if other else None
                print(f"{now - t0:.3f} {'nan' if o is None else f'{o:.0f}'}")
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.005)
    sys.exit(f"{name} did not reach {value} within {timeout} s at {url}")


def _loader_pid(master):
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
            if int(s[s.rfind(")") + 2:].split()[1]) != master:
                continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if b"cache loader" in f.read():
                    return int(d)
        except (OSError, ValueError, IndexError):
            pass
    return None


def _cpu_ns(pid):
    """CPU time of pid in ns (/proc/PID/schedstat), None once it has exited (or is a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return None
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def nginxloader(master, t0, timeout):
    """nginx forks its cache loader at start; the loader sleeps 60 s, walks the cache
    directory, and exits. Its work starts when its CPU time starts to grow again after that
    sleep, and ends when it exits: prints "start_s end_s cpu_s" (start and end from T0)."""
    master, t0, deadline = int(master), float(t0), time.time() + float(timeout)
    pid = None
    while pid is None and time.time() < deadline:
        pid = _loader_pid(master)
        time.sleep(0.01)
    if pid is None:
        sys.exit("no nginx cache loader process")
    last = _cpu_ns(pid)
    last_change = time.time()
    work_start = work_cpu0 = None
    while time.time() < deadline:
        # the loader is idle for 60 s after it starts: poll slowly until close to that
        time.sleep(0.1 if time.time() < t0 + 55 else 0.001)
        cpu, now = _cpu_ns(pid), time.time()
        if cpu is None:
            if work_start is None:
                sys.exit("the nginx cache loader exited before it was seen working")
            print(f"{work_start - t0:.3f} {now - t0:.3f} {(last - work_cpu0) / 1e9:.3f}")
            return
        if cpu != last:
            if now - last_change > 5:  # first activity after the long sleep: the walk begins
                work_start, work_cpu0 = now, last
            last, last_change = cpu, now
    sys.exit(f"the nginx cache loader did not finish within {timeout} s")


def _med(xs):
    return statistics.median(xs) if xs else float("nan")


def _fmt(x, spec="{:.2f}"):
    return "–" if x != x else spec.format(x)


def _rng(xs, fmt):
    return f"{fmt.format(min(xs))}–{fmt.format(max(xs))}" if xs else "–"


def report(path, meta_path):
    meta = {}
    for ln in open(meta_path):
        if "=" in ln:
            k, v = ln.rstrip("\n").split("=", 1)
            meta[k] = v
    rows = list(csv.DictReader(open(path)))
    data = defaultdict(lambda: defaultdict(list))  # (section, peer, variant) -> metric -> [v]
    byrep = defaultdict(dict)  # rep -> peer -> (rps, p99)
    order = []
    for r in rows:
        key = (r["section"], r["peer"], r["variant"])
        if key not in order:
            order.append(key)
        try:
            v = float(r["value"])
        except ValueError:
            continue
        data[key][r["metric"]].append(v)
        if r["section"] == "hit" and r["metric"] in ("rps", "p99_ms"):
            byrep[r["rep"]].setdefault(r["peer"], {})[r["metric"]] = v

    def ratios(peer, metric):
        return [p[peer][metric] / p["nginx"][metric] for p in byrep.values()
                if peer in p and metric in p[peer] and p.get("nginx", {}).get(metric)]

    m = meta
    obj, objects = int(m["size_bytes"]), int(m["objects"])
    ws_mib = obj * objects / 1048576
    p = print
    p("# Disk-tier benchmark (issue 14): disk hits, recovery at start")
    p()
    p(f"Written by `bench/disk.sh` on {m['date']} · CPU: {m['cpu']} ({m['nproc']} cores, "
      f"{m['mem_gib']} GiB RAM) · commit `{m['commit']}`")
    p()
    p(f"Command: `{m['command']}`")
    p()
    p(f"Versions: {m['nginx_version']}; {m['ats_version']}; {m['wrk_version']}. Load average "
      f"(1, 5, 15 min): {m['load']} — the machine is shared with other builds: compare "
      "ratios within this run, not absolute numbers across runs.")
    p()
    p("## Setup")
    p()
    p(f"- Working set: {objects} distinct objects of {obj} bytes = {ws_mib:.0f} MiB, "
      f"{ws_mib / int(m['mem_mib']):.1f}× the memory tier of {m['mem_mib']} MiB "
      f"(firebreak `--cache-mib {m['mem_mib']}`, ATS `proxy.config.cache.ram_cache.size` "
      f"= {m['mem_mib']} MiB). nginx has no memory tier of its own: keys live in its "
      "shared-memory zone and every body is read from its cache file, through the kernel's "
      "page cache.")
    p(f"- Disk tier: {m['disk_mib']} MiB for each peer on the same filesystem ({m['fs']}): nginx "
      f"`proxy_cache_path ... max_size={m['disk_mib']}m`, ATS one file span of "
      f"{m['disk_mib']} MiB in `storage.config`, firebreak `--disk-dir DIR --disk-mib "
      f"{m['disk_mib']}`. Configurations: `bench/disk/`.")
    p(f"- This machine has {m['mem_gib']} GiB of RAM, so every peer's disk files stay in the "
      "page cache: a \"disk hit\" here is a hit served from the peer's disk tier "
      "(file reads, its own index, its own copy to the socket), not a read from the device. "
      "That is the cost the comparison measures; device latency is not in it.")
    p(f"- Warm-up: every object fetched once from each peer ({m['fill_conns']} connections), "
      f"then, {m['settle']} s later, fetched once more while counting the requests that reach "
      "the origin (`warm misses`: ~0 means every object was stored; an object missed there was fetched and "
      "stored again by that pass, so the measured runs can still see 0 origin requests), then a "
      f"{m['warmup']} wrk run with the same random script (not measured).")
    p(f"- Measured: `wrk -t{m['threads']} -c{m['conns']} -d{m['duration']} --latency -s "
      f"bench/disk/random.lua URL -- {objects}` (each request a uniformly random object of the "
      f"set), peers interleaved per repetition ({m['peers']}), {m['reps']} repetitions, "
      "medians. `orig` = requests that reached the origin during the measured runs (median "
      "per run; must be ~0).")
    p()
    p("## Disk hits")
    p()
    p("ratio = median over repetitions of the paired ratio peer / nginx in the same repetition.")
    p()
    p("| peer | runs | req/s median | [min–max] | MiB/s | p50 ms | p99 ms | req/s ÷ nginx | "
      "p99 ÷ nginx | errors | orig/run | warm misses | disk use MiB |")
    p("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (sec, peer, _) in [k for k in order if k[0] == "hit"]:
        d = data[(sec, peer, "")]
        w = data[("warm", peer, "")]
        rr, pr = ratios(peer, "rps"), ratios(peer, "p99_ms")
        disk = w.get("disk_kib")
        p(f"| {peer} | {len(d['rps'])} | {_med(d['rps']):.0f} | {_rng(d['rps'], '{:.0f}')} | "
          f"{_med(d['mib_s']):.1f} | {_med(d['p50_ms']):.2f} | {_med(d['p99_ms']):.2f} | "
          f"{_fmt(_med(rr))} | {_fmt(_med(pr))} | {sum(d['errors']):.0f} | "
          f"{_med(d['origin_reqs']):.0f} | {_med(w.get('misses', [])):.0f} | "
          f"{f'{_med(disk) / 1024:.0f}' if disk else ('– (preallocated span)' if peer == 'ats' else '–')} |")
    ram = data[("hit", "ats", "")].get("ram_hit_pct")
    if ram:
        p()
        p(f"ATS: {_med(ram):.0f}% [{_rng(ram, '{:.0f}')}] of its cache reads during the measured "
          "runs were RAM-cache hits (`proxy.process.cache.ram_cache.hits` / (hits + misses)); "
          "the rest were read from the span.")
    fw = data[("warm", "firebreak", "")]
    if fw.get("writes_ok"):
        p()
        p(f"firebreak after the warm-up: `firebreak_disk_writes_total` ok "
          f"{_med(fw['writes_ok']):.0f}, queue_full {_med(fw.get('writes_queue_full', [0])):.0f}, "
          f"error {_med(fw.get('writes_error', [0])):.0f}; `firebreak_disk_objects` "
          f"{_med(fw.get('disk_objects', [0])):.0f} (of {objects}).")
        if _med(fw.get("writes_queue_full", [0])) > 0:
            p("queue_full = writes the disk tier's write queue turned away while the set was "
              f"fetched the first time ({m['fill_conns']} connections); such an object is then "
              "missed (`warm misses`) once the memory tier has evicted it, and written by the "
              "check pass.")
    if data[("hit", "firebreak-mem", "")].get("rps"):
        p()
        p(f"firebreak-mem is a reference, not a contender: the same binary with the whole set "
          f"in its memory tier (`--cache-mib {m['ref_mib']}`, no disk tier), asked the same "
          "random URLs in the same repetitions; firebreak ÷ firebreak-mem is what the disk tier "
          "costs.")
        cost = [r["firebreak"]["rps"] / r["firebreak-mem"]["rps"] for r in byrep.values()
                if "rps" in r.get("firebreak", {}) and r.get("firebreak-mem", {}).get("rps")]
        if cost:
            p(f"firebreak ÷ firebreak-mem, req/s, paired per repetition: median {_med(cost):.2f} "
              f"[{_rng(cost, '{:.2f}')}].")
    dsk = data[("hit", "firebreak", "")].get("disk_hit_pct")
    if dsk:
        p()
        p(f"firebreak: {_med(dsk):.0f}% [{_rng(dsk, '{:.0f}')}] of its hits during the measured "
          "runs came from the disk tier (`firebreak_disk_hits_total` / "
          "`firebreak_requests_total{cache=\"hit\"}`); the rest from the memory tier.")
    p()
    fb = data[("hit", "firebreak", "")]
    others = [q for q in ("nginx", "ats") if data[("hit", q, "")].get("rps")]
    if fb.get("rps") and others:
        rps_ok = all(_med(fb["rps"]) >= _med(data[("hit", q, "")]["rps"]) for q in others)
        p99_ok = all(_med(fb["p99_ms"]) <= _med(data[("hit", q, "")]["p99_ms"]) for q in others)
        def vals(metric, fmt):
            return ", ".join(f"{q} {fmt.format(_med(data[('hit', q, '')][metric]))}"
                             for q in ["firebreak"] + others)
        p(f"Target (firebreak ≥ {' and '.join(others)}): req/s {'met' if rps_ok else 'NOT met'} "
          f"({vals('rps', '{:.0f}')}), p99 {'met' if p99_ok else 'NOT met'} "
          f"({vals('p99_ms', '{:.2f} ms')}); medians of this run.")
    elif fb.get("rps"):
        p("Target: no nginx or ATS row in this run to compare with.")
    else:
        p(f"firebreak: not measured in this run — {m.get('firebreak_skip', 'not in PEERS')}. "
          "The target (firebreak disk-hit req/s ≥ nginx and ATS, p99 ≤ both) is open until "
          "`bench/disk.sh` is run with a binary that has the disk tier.")
    p()
    p("## Recovery at start")
    p()
    p("The peer is filled with the working set (above), stopped, and started again on the same "
      "disk directory. firebreak: time from spawning the process to its admin `/metrics` "
      "showing `firebreak_disk_recovering 0` (polled every 5 ms), objects = "
      "`firebreak_disk_recovered_objects_total` then. nginx: its cache loader process starts "
      "60 s after nginx (fixed in nginx) and walks the cache directory to rebuild the keys "
      "zone; time = from the moment the loader's CPU time starts to grow after that 60 s sleep "
      "to its exit (its `/proc/PID/schedstat` polled every 1 ms), objects = the files in the "
      "cache directory (its directory entries and inodes are in the kernel's caches, as the "
      "data is). nginx was run with `loader_files=1000000 loader_threshold=60s "
      "loader_sleep=1ms` (unthrottled; the defaults 100 files / 200 ms / 50 ms allow at most "
      "~2,000 files/s). nginx does not need its loader to serve hits: while the zone is "
      "\"cold\" a key it does not know is looked up as a file, so `cold-probe misses` (origin "
      f"requests for {m['probe']} objects asked right after the restart, before the loader) "
      "shows that. `misses after` = origin requests when every object of the set is asked "
      "once after recovery (0 = everything came back as a hit). ATS keeps its directory in "
      "the span (synced every 60 s by default) and is not timed here.")
    p()
    p("| peer | stop | objects recovered | of | seconds | objects/s | cold-probe misses | "
      "misses after | note |")
    p("|---|---|---|---|---|---|---|---|---|")
    any_rec = False
    for (sec, peer, variant) in [k for k in order if k[0] == "recover"]:
        any_rec = True
        d = {k: _med(v) for k, v in data[(sec, peer, variant)].items()}
        secs = d.get("secs", float("nan"))
        objs = d.get("objects", float("nan"))
        rate = objs / secs if secs and secs > 0 else float("nan")
        note = m.get(f"note_{peer}_{variant}", "")
        probe = d.get("probe_misses", float("nan"))
        p(f"| {peer} | {variant} | {objs:.0f} | {objects} | {secs:.3f} | {rate:.0f} | "
          f"{'–' if probe != probe else f'{probe:.0f}'} | {d.get('misses_after', float('nan')):.0f} | {note} |")
    if not any_rec:
        p("| – | – | – | – | – | – | – | – | no peer was timed |")
    p()
    if not fb.get("rps"):
        p(f"firebreak: not timed — {m.get('firebreak_skip', 'not in PEERS')}.")
        p()
    p("## Shield: origin requests")
    p()
    p("`cargo test -p firebreak --test shield_drill -- --nocapture`: real processes (control "
      "plane, the demo origin, 3 POPs x 2 edges as `firebreak up` runs them, the demo service "
      "shielded by one POP); the demo origin counts the requests for the object's path. "
      "Target: exactly one origin request for a cold object asked of every edge of every POP.")
    p()
    shield = [v for k, v in meta_lines(meta_path) if k == "shield"]
    if not shield:
        p("Not run (SHIELD=0).")
    for line in shield:
        p(f"- {line}")
    p()


def meta_lines(path):
    """Every `key=value` line of the meta file, repeated keys included."""
    out = []
    for ln in open(path):
        if "=" in ln:
            k, v = ln.rstrip("\n").split("=", 1)
            out.append((k, v))
    return out


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "size":
        size(args[0])
    elif cmd == "waitmetric":
        waitmetric(*args[:5], other=args[5] if len(args) > 5 else None,
                   pid=args[6] if len(args) > 6 else None)
    elif cmd == "metrics":
        metrics(args[0], *args[1:])
    elif cmd == "nginxloader":
        nginxloader(*args[:3])
    elif cmd == "report":
        report(args[0], args[1])
    else:
        sys.exit(f"unknown subcommand {cmd}")
