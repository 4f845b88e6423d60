#!/usr/bin/env python3
"""Turns one run of the shared harness into bench/RESULTS.md: tables plus the issue's targets.

usage: report.py RUN.log RESULTS.csv > bench/RESULTS.md
"""
import csv
import os
import platform
import statistics
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timezone

CANDIDATE = "firebreak"
PEERS = ("nginx", "varnish", "ats")


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def machine():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem_gib = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), {mem_gib}, {platform.system()} {platform.release()}"


def main(log_path, csv_path):
    data = defaultdict(lambda: defaultdict(list))
    for r in csv.DictReader(open(csv_path)):
        try:
            v = float(r["value"])
        except ValueError:
            continue
        data[(r["scenario"], r["object"], r["peer"])][r["metric"]].append(v)

    log = open(log_path).read()
    tables = log[log.find("== cache-hit"):] if "== cache-hit" in log else log[log.find("=="):]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    reps = max((len(v.get("rps", [])) for v in data.values()), default=0)

    out = []
    out.append("# Benchmark results\n")
    out.append(f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    out.append(f"- Machine: {machine()}")
    out.append(f"- Commit: {commit}; harness: `../shared/bench/run.sh` via `bench/run.sh`; reps per peer: {reps}")
    out.append("- Candidate: `firebreak edge --origin {origin} --listen 127.0.0.1:{port} --cache-mib 1024`")
    out.append("- Peers run interleaved in the same run; ratios compare them under the same noise.\n")

    out.append("## Targets (issue: Edge purge, metrics, memory store, speed)\n")
    out.append("| target | measured | met |")
    out.append("|---|---|---|")

    def row(name, measured, ok):
        out.append(f"| {name} | {measured} | {'yes' if ok else 'NO'} |")

    for size in ("1k", "16k"):
        fb = data.get(("hit", size, CANDIDATE))
        if not fb:
            continue
        fb_rps, fb_p99 = med(fb["rps"]), med(fb["p99_ms"])
        peers = {p: data[("hit", size, p)] for p in PEERS if ("hit", size, p) in data}
        if not peers:
            continue
        best = max(peers, key=lambda p: med(peers[p]["rps"]))
        best_rps = med(peers[best]["rps"])
        row(f"{size} hit req/s ≥ best peer ({best})", f"{fb_rps:.0f} vs {best_rps:.0f} ({fb_rps / best_rps:.2f}×)",
            fb_rps >= best_rps)
        if "varnish" in peers:
            v = med(peers["varnish"]["rps"])
            row(f"{size} hit req/s ≥ 1.3× Varnish", f"{fb_rps / v:.2f}× ({fb_rps:.0f} vs {v:.0f})", fb_rps >= 1.3 * v)
        best_p99 = med(peers[best]["p99_ms"])
        row(f"{size} hit p99 ≤ best peer's ({best})", f"{fb_p99:.2f} ms vs {best_p99:.2f} ms", fb_p99 <= best_p99)
    st = data.get(("stampede", "-", CANDIDATE)) or next(
        (v for k, v in data.items() if k[0] == "stampede" and k[2] == CANDIDATE), None)
    if st:
        reqs, mx = med(st["origin_reqs"]), med(st["max_ms"])
        row("stampede of 200 → exactly 1 origin request", f"{reqs:.0f}", reqs == 1)
        row("slowest waiter within 30 ms of the 100 ms origin", f"{mx:.0f} ms", mx <= 130)
    mm = next((v for k, v in data.items() if k[0] == "mem" and k[2] == CANDIDATE), None)
    if mm:
        b = med(mm["pss_b_per_obj"])
        row("≤ 2,000 bytes of memory per cached 1 KiB object", f"{b:.0f} B (PSS)", b <= 2000)
    out.append("")
    out.append("## Tables\n")
    out.append("```")
    out.append(tables.strip())
    out.append("```")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
