#!/usr/bin/env python3
"""Measures what a large path_regex rule set costs: the push (control plane validation) and
the apply (an edge staging and activating it). Usage:
    bench/regex_rules.py FIREBREAK_BINARY SERVICES RULES_PER_SERVICE
Starts a control plane and one edge (real processes) in a temp dir, pushes a fleet document
with SERVICES x RULES path_regex rules (--activate), and prints the push's wall time and the
time from the edge's start until it reports the version applied."""
import json, os, subprocess, sys, tempfile, time, urllib.request, socket

binary, services, rules = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tok, etok = "operator-token-0123456789", "edge-token-0123456789abcd"

def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def call(url, path, body=None, method=None):
    req = urllib.request.Request(url + path, data=body, method=method,
                                 headers={"authorization": "Bearer " + tok, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()

d = tempfile.mkdtemp(prefix="fb-regex-")
doc = "[cache]\nmax_bytes = 67108864\n[rollout]\nedge_gone_s = 5\nstage_timeout_s = 600\n[[rollout.plan]]\nname = \"default\"\nwaves = [{ percent = 100 }]\nbake_s = 1\ninterval_s = 1\nmin_requests = 0\nmax_wait_s = 600\nactivate_timeout_s = 600\n"
for s in range(services):
    doc += f'\n[[service]]\nname = "s{s}"\nhosts = ["s{s}.test"]\n[service.origin]\nservers = [{{ addr = "127.0.0.1:9" }}]\n[service.cache]\nrules = [\n'
    for r in range(rules):
        doc += '  { path_regex = "^/r%d/[a-z0-9_]{1,40}/(img|css|js)/[a-z0-9_.-]{1,80}\\\\.(png|jpg|css|js)$", ttl_s = 60 },\n' % r
    doc += "]\n"
cp = port()
url = f"http://127.0.0.1:{cp}"
control = subprocess.Popen([binary, "control", "--listen", f"127.0.0.1:{cp}", "--data-dir", d + "/control",
                            "--token", tok, "--edge-token", etok], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
edge = None
try:
    for _ in range(200):
        try:
            if call(url, "/healthz")[0] == 200: break
        except Exception: time.sleep(0.05)
    t = time.monotonic()
    status, body = call(url, "/v1/versions", json.dumps({"file": "rules.toml", "document": doc, "message": "m", "activate": True}).encode())
    push = time.monotonic() - t
    print(f"rules={services*rules} doc_bytes={len(doc)} push_status={status} push_s={push:.2f}")
    if status != 201:
        print(body.decode()[:400]); sys.exit(0)
    key = call(url, "/v1/public-key")[1].decode().strip()
    key = json.loads(key)["public_key"] if key.startswith("{") else key
    t = time.monotonic()
    edge = subprocess.Popen([binary, "edge", "--control", url, "--token", etok, "--trust", key, "--id", "e1",
                             "--data-dir", d + "/edge", "--listen", f"127.0.0.1:{port()}", "--admin", f"127.0.0.1:{port()}",
                             "--heartbeat-ms", "200"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while time.monotonic() - t < 900:
        st, fleet = call(url, "/v1/fleet")
        if st == 200 and any(e.get("applied_version") == 1 or e.get("report", {}).get("applied_version") == 1 for e in json.loads(fleet)):
            break
        time.sleep(0.1)
    print(f"apply_s={time.monotonic() - t:.2f}")
finally:
    for p in (edge, control):
        if p: p.kill()
