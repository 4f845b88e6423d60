//! `firebreak up`: a whole local network on 127.0.0.1 — the control plane, three POPs of two
//! edges each (separate processes with their own ports and data directories; each POP is a
//! cell), and the demo origin — with the example fleet configuration rolled out through the
//! control plane like any version (staged, canary edge first, gated). A small synthetic load
//! keeps every edge busy so that the gates have traffic to judge, and edge processes that exit
//! are restarted, as a supervisor would.
//!
//! The control API runs over HTTPS: a local CA ([`crate::local_ca`], kept in `DATA_DIR/ca`,
//! reused across runs) issues the control plane's certificate (`127.0.0.1`, `::1`,
//! `localhost`); edges get the CA with `--control-ca`, the CLI with `FIREBREAK_CA`. The same CA
//! issues each example service's certificate (its hosts), pushed in the fleet document like
//! any version: the certificate travels in the signed bundle, the private key as a secret
//! document only edges can read; every edge serves HTTPS on a second listener.
//!
//! The demo service names POP `sin` as its origin shield (`[service.shield]` in the example
//! document): the other POPs' edges send its misses to sin's edges, so a cold object costs
//! the demo origin one request for the whole fleet (`/__origin/stats?path=...` counts them).
//!
//! A DNS server (`firebreak dns --control`, POP `ams`, its own cell `dns`) serves the fleet
//! document's `[dns]` zone (`cdn.localhost`) as a fleet member: it takes the version through
//! the same rollout and checks each POP's edges (their admin `/healthz`, the URLs written
//! into the document here) itself.
//!
//! Ports for `--port P` (default 8080): edges P..P+5, their HTTPS listeners P+30..P+35, their
//! admin listeners P+10..P+15, the demo origin P+20, the DNS server P+53 (UDP and TCP) and its
//! admin listener P+54, the control plane P-1080 (7000 by default, the CLI's default).

use crate::api_client::Api;
use crate::demo_origin;
use firebreak_protocol::api::EdgeStatus;
use http::Method;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The example fleet configuration.
const FLEET_CONFIG: &str = include_str!("../../../examples/fleet.toml");
const POPS: [&str; 3] = ["ams", "nyc", "sin"];
/// Edges per POP.
const EDGES_PER_POP: usize = 2;
/// The DNS server's port (UDP and TCP) and its admin port, from `--port`.
const DNS_PORT: i32 = 53;
const DNS_ADMIN_PORT: i32 = 54;
/// Synthetic DNS queries per second to the DNS server (its gates' traffic).
const DNS_LOAD: u32 = 20;
/// The names the DNS load asks, and the client subnets it asks from (one per region of the
/// example document: this machine, america, asia).
const DNS_LOAD_NAMES: [&str; 2] = ["demo.cdn.localhost", "assets.cdn.localhost"];
const DNS_LOAD_SUBNETS: [([u8; 4], u8); 3] = [
    ([127, 0, 0, 1], 32),
    ([203, 0, 113, 0], 24),
    ([192, 0, 2, 0], 24),
];
/// A client prefix of another region than this machine's, for the second `dig` line.
const DIG_SUBNET: &str = "203.0.113.0/24";
/// Synthetic requests per second and edge.
const LOAD_PER_EDGE: u32 = 20;

/// A child process and how to start it again.
struct Spec {
    name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// The running children, and the program they run (resolved once at start: if the file is
/// replaced while `up` runs, restarts still find it by path).
struct Children(Vec<(String, Child)>, PathBuf);

impl Children {
    fn spawn(
        &mut self,
        name: &str,
        args: &[String],
        logs: &Path,
        env: &[(&str, &str)],
    ) -> Result<(), String> {
        let exe = self.1.clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("{name}.log")))
            .map_err(|e| format!("log file for {name}: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // The children stop with us even if we are killed without a chance to clean up.
            // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        self.0.push((name.to_owned(), child));
        Ok(())
    }

    /// SIGTERM to each child (by PID), then wait up to `limit`, then SIGKILL.
    fn stop(&mut self, limit: Duration) {
        for (_, child) in &self.0 {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: sending a signal to a process we started and have not reaped.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + limit;
        for (name, child) in &mut self.0 {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        tracing::warn!(%name, "did not stop in time; killing");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        self.0.clear();
    }

    /// The first child that has exited, no longer tracked.
    fn exited(&mut self) -> Option<String> {
        let i = self
            .0
            .iter_mut()
            .position(|(_, c)| matches!(c.try_wait(), Ok(Some(_))))?;
        let (name, _) = self.0.remove(i);
        Some(name)
    }

    fn start(&mut self, spec: &Spec, logs: &Path) -> Result<(), String> {
        let env: Vec<(&str, &str)> = spec
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.spawn(&spec.name, &spec.args, logs, &env)
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

fn token() -> Result<String, String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn port(base: u16, delta: i32) -> Result<u16, String> {
    u16::try_from(i32::from(base) + delta)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("--port {base} leaves no room for the other ports (1081..65515)"))
}

async fn wait_until<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{what} did not happen within {} s",
                limit.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The local CA (kept in `DATA_DIR/ca`) and a fresh certificate for the control plane
/// (`127.0.0.1`, `::1`, `localhost`; key 0600 in `DATA_DIR/control-tls`): the CA file, the
/// certificate file and the key file.
async fn control_certificate(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let ca =
            crate::local_ca::LocalCa::load_or_create(&dir.join("ca")).map_err(|e| e.to_string())?;
        let names = ["127.0.0.1", "::1", "localhost"].map(String::from);
        let (cert, key) = ca.issue(&names).map_err(|e| e.to_string())?;
        let (cert_file, key_file) = (
            dir.join("control-tls").join("cert.pem"),
            dir.join("control-tls").join("key.pem"),
        );
        firebreak_protocol::durable::write_private(&key_file, key.as_bytes())
            .map_err(|e| format!("{}: {e}", key_file.display()))?;
        firebreak_protocol::durable::write_atomic(&cert_file, cert.as_bytes())
            .map_err(|e| format!("{}: {e}", cert_file.display()))?;
        Ok((ca.cert_path().to_owned(), cert_file, key_file))
    })
    .await
    .map_err(|e| format!("making the control plane's certificate: {e}"))?
}

/// The fleet document with each `[[dns.pop]]`'s `checks` set to the admin `/healthz` URLs of
/// that POP's edges (`admin_ports` by POP name). Returns the document and each POP's first
/// answer address (for the printed `dig` lines).
fn with_dns_checks(
    text: &str,
    admin_ports: &[(&str, Vec<u16>)],
) -> Result<(String, Vec<(String, String)>), String> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| format!("the example fleet document: {e}"))?;
    let pops = doc
        .get_mut("dns")
        .and_then(|d| d.get_mut("pop"))
        .and_then(|p| p.as_array_of_tables_mut())
        .ok_or("the example fleet document has no [[dns.pop]]")?;
    let mut answers = Vec::new();
    for pop in pops.iter_mut() {
        let name = pop
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_owned();
        if let Some(first) = pop
            .get("answers")
            .and_then(|a| a.as_array())
            .and_then(|a| a.iter().find_map(|v| v.as_str()))
        {
            answers.push((name.clone(), first.to_owned()));
        }
        if let Some((_, ports)) = admin_ports.iter().find(|(p, _)| *p == name) {
            let urls: toml_edit::Array = ports
                .iter()
                .map(|port| format!("http://127.0.0.1:{port}/healthz"))
                .collect();
            pop.insert("checks", toml_edit::value(urls));
        }
    }
    Ok((doc.to_string(), answers))
}

/// The fleet document with a `[service.tls]` for every service: a certificate for the
/// service's hosts from the local CA and its key (inline: the control plane moves the key into
/// a secret document at push). The first service's certificate is the default one (answers
/// handshakes without SNI, such as `https://127.0.0.1:…`).
async fn with_certificates(dir: &Path, text: String) -> Result<String, String> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let ca =
            crate::local_ca::LocalCa::load_or_create(&dir.join("ca")).map_err(|e| e.to_string())?;
        let mut doc: toml_edit::DocumentMut = text
            .parse()
            .map_err(|e| format!("the example fleet document: {e}"))?;
        let services = doc
            .get_mut("service")
            .and_then(|s| s.as_array_of_tables_mut())
            .ok_or("the example fleet document has no [[service]]")?;
        for (i, service) in services.iter_mut().enumerate() {
            let hosts: Vec<String> = service
                .get("hosts")
                .and_then(|h| h.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if hosts.is_empty() {
                continue;
            }
            let (cert, key) = ca.issue(&hosts).map_err(|e| e.to_string())?;
            let mut tls = toml_edit::Table::new();
            tls.insert("cert", toml_edit::value(cert));
            tls.insert("key", toml_edit::value(key));
            if i == 0 {
                tls.insert("default", toml_edit::value(true));
            }
            service.insert("tls", toml_edit::Item::Table(tls));
        }
        Ok(doc.to_string())
    })
    .await
    .map_err(|e| format!("making the services' certificates: {e}"))?
}

/// Runs the network until Ctrl-C.
pub async fn run(base: u16, data_dir: Option<PathBuf>) -> Result<(), String> {
    let control_port = port(base, -1080)?;
    let origin_port = port(base, 20)?;
    let dir = match data_dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("firebreak-up-{}", std::process::id())),
    };
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let (operator, edge_token) = (token()?, token()?);
    let origin = demo_origin::start(([127, 0, 0, 1], origin_port).into())
        .await
        .map_err(|e| format!("demo origin on port {origin_port}: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut children = Children(Vec::new(), exe);
    let (ca_file, tls_cert, tls_key) = control_certificate(&dir).await?;
    let control_url = format!("https://127.0.0.1:{control_port}");
    children.spawn(
        "control",
        &[
            "control".into(),
            "--listen".into(),
            format!("127.0.0.1:{control_port}"),
            "--data-dir".into(),
            dir.join("control").display().to_string(),
            "--tls-cert".into(),
            tls_cert.display().to_string(),
            "--tls-key".into(),
            tls_key.display().to_string(),
        ],
        &logs,
        &[
            ("FIREBREAK_TOKEN", &operator),
            ("FIREBREAK_EDGE_TOKEN", &edge_token),
        ],
    )?;
    let api = Api::with_ca(&control_url, &operator, Some(&ca_file)).map_err(|e| e.message)?;
    let public = wait_until(
        "the control plane starting",
        Duration::from_secs(15),
        async || api.call(Method::GET, "/v1/public-key", None).await.ok(),
    )
    .await
    .map_err(|e| format!("{e}; see {}", logs.join("control.log").display()))?;
    let public = String::from_utf8_lossy(&public).trim().to_owned();

    let fleet_file = dir.join("fleet.toml");
    // The fleet document carries only the admin token's SHA-256; the token is printed below.
    let admin_token = token()?;
    let text = FLEET_CONFIG
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{origin_port}"))
        .replace(
            "0000000000000000000000000000000000000000000000000000000000000000",
            &firebreak_control::auth::token_sha256(&admin_token),
        );
    let admin_ports: Vec<(&str, Vec<u16>)> = POPS
        .iter()
        .enumerate()
        .map(|(p, pop)| {
            let ports = (0..EDGES_PER_POP)
                .map(|n| port(base, 10 + (p * EDGES_PER_POP + n) as i32))
                .collect::<Result<Vec<u16>, String>>()?;
            Ok((*pop, ports))
        })
        .collect::<Result<_, String>>()?;
    let (text, dns_answers) = with_dns_checks(&text, &admin_ports)?;
    let text = with_certificates(&dir, text).await?;
    // The document now holds private keys: only its owner may read it.
    firebreak_protocol::durable::write_private(&fleet_file, text.as_bytes())
        .map_err(|e| format!("{}: {e}", fleet_file.display()))?;

    let mut specs = Vec::new();
    let mut edges = Vec::new();
    for (p, pop) in POPS.iter().enumerate() {
        for n in 0..EDGES_PER_POP {
            let i = (p * EDGES_PER_POP + n) as i32;
            let (listen, admin, https) = (port(base, i)?, port(base, 10 + i)?, port(base, 30 + i)?);
            let id = format!("{pop}-{}", n + 1);
            specs.push(Spec {
                name: format!("edge-{id}"),
                args: vec![
                    "edge".into(),
                    "--control".into(),
                    control_url.clone(),
                    "--control-ca".into(),
                    ca_file.display().to_string(),
                    "--trust".into(),
                    public.clone(),
                    "--pop".into(),
                    (*pop).into(),
                    "--cell".into(),
                    (*pop).into(),
                    "--id".into(),
                    id.clone(),
                    "--data-dir".into(),
                    dir.join("edges").join(&id).display().to_string(),
                    "--listen".into(),
                    format!("127.0.0.1:{listen}"),
                    "--listen-tls".into(),
                    format!("127.0.0.1:{https}"),
                    "--admin".into(),
                    format!("127.0.0.1:{admin}"),
                    "--heartbeat-ms".into(),
                    "1000".into(),
                    "--health-interval-ms".into(),
                    "1000".into(),
                    "--safe-mode-window-s".into(),
                    "120".into(),
                ],
                env: vec![("FIREBREAK_EDGE_TOKEN".into(), edge_token.clone())],
            });
            edges.push((id, listen, admin, https));
        }
    }
    // The DNS server: a fleet member in its own cell, UDP and TCP on one port.
    let (dns_port, dns_admin) = (port(base, DNS_PORT)?, port(base, DNS_ADMIN_PORT)?);
    let dns_id = "dns-1";
    specs.push(Spec {
        name: dns_id.into(),
        args: vec![
            "dns".into(),
            "--control".into(),
            control_url.clone(),
            "--control-ca".into(),
            ca_file.display().to_string(),
            "--trust".into(),
            public.clone(),
            "--pop".into(),
            "ams".into(),
            "--cell".into(),
            "dns".into(),
            "--id".into(),
            dns_id.into(),
            "--data-dir".into(),
            dir.join("dns").join(dns_id).display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{dns_port}"),
            "--admin".into(),
            format!("127.0.0.1:{dns_admin}"),
            "--heartbeat-ms".into(),
            "1000".into(),
            "--health-interval-ms".into(),
            "1000".into(),
        ],
        env: vec![("FIREBREAK_EDGE_TOKEN".into(), edge_token.clone())],
    });
    for spec in &specs {
        children.start(spec, &logs)?;
    }
    let expected = edges.len() + 1;
    wait_until(
        "every edge and the DNS server registering",
        Duration::from_secs(30),
        async || {
            let fleet: Vec<EdgeStatus> = api.json(Method::GET, "/v1/fleet", None).await.ok()?;
            (fleet.len() >= expected).then_some(())
        },
    )
    .await
    .map_err(|e| format!("{e}; see the logs in {}", logs.display()))?;
    let targets: Vec<(String, std::net::SocketAddr)> = edges
        .iter()
        .map(|(id, listen, _, _)| (id.clone(), ([127, 0, 0, 1], *listen).into()))
        .collect();
    let _load = crate::load::Load::start(&targets, LOAD_PER_EDGE);
    // The DNS server binds when its first version arrives; queries before that are lost.
    let dns_load = crate::dns_load::DnsLoad::start(
        ([127, 0, 0, 1], dns_port).into(),
        &DNS_LOAD_NAMES.map(String::from),
        &DNS_LOAD_SUBNETS.map(|(a, p)| (std::net::IpAddr::from(a), p)),
        DNS_LOAD,
    );
    out!(
        "rolling the example configuration out: staged on every edge, then the canary edge, its cell, the rest (gated; about half a minute)…"
    );
    crate::ops::push(
        &api,
        &fleet_file,
        "firebreak up: example configuration",
        true,
        4,
    )
    .await
    .map_err(|e| e.message)?;
    wait_until(
        "the first rollout completing",
        Duration::from_secs(180),
        async || {
            let view: firebreak_control::rollout::RolloutView =
                api.json(Method::GET, "/v1/rollout", None).await.ok()?;
            let r = view.rollout?;
            (r.phase.is_end() || r.held.is_some()).then_some(())
        },
    )
    .await
    .map_err(|e| format!("{e}; see the logs in {}", logs.display()))?;
    crate::rollouts::status(&api).await.map_err(|e| e.message)?;
    // The DNS server binds its port when its first version is applied (wave 3: its cell):
    // ready when the DNS load gets answers.
    wait_until(
        "the DNS server answering",
        Duration::from_secs(30),
        async || (dns_load.snapshot().0 > 0).then_some(()),
    )
    .await
    .map_err(|e| format!("{e}; see {}", logs.join(format!("{dns_id}.log")).display()))?;

    let first = edges.first().map(|e| e.1).unwrap_or(base);
    out!(
        "firebreak is up: a control plane, {} POPs of {} edges (one cell each), a DNS server, a demo origin.",
        POPS.len(),
        EDGES_PER_POP
    );
    out!("  control plane  {control_url}   (OpenAPI: {control_url}/v1/openapi.json)");
    out!("  status page    {control_url}/status   (public; Atom feed: {control_url}/status/feed.atom)");
    out!(
        "  dashboard      {control_url}/ui/   (sign in with FIREBREAK_TOKEN below; the browser must trust the local CA, or accept its warning)"
    );
    out!(
        "  local CA       {}   (the control plane's and the services' certificates)",
        ca_file.display()
    );
    for (id, listen, admin, https) in &edges {
        out!(
            "  edge {id:<8}  http://127.0.0.1:{listen}/   https://localhost:{https}/ (+HTTP/3, udp)   admin http://127.0.0.1:{admin}/"
        );
    }
    out!(
        "  dns {dns_id:<9}  udp+tcp 127.0.0.1:{dns_port} (zone cdn.localhost)   admin http://127.0.0.1:{dns_admin}/"
    );
    out!("  demo origin    http://{}/", origin.addr);
    out!("  data and logs  {}", dir.display());
    out!(
        "  synthetic load {LOAD_PER_EDGE} req/s per edge, {DNS_LOAD} queries/s to the DNS server (feeds the rollout gates)"
    );
    out!();
    out!("Use the CLI against it:");
    out!(
        "  export FIREBREAK_CONTROL={control_url} FIREBREAK_TOKEN={operator} FIREBREAK_CA={}",
        ca_file.display()
    );
    out!("  firebreak fleet");
    out!("  firebreak config versions");
    out!(
        "  firebreak config push {} -m 'my change'   # then: firebreak deploy N",
        fleet_file.display()
    );
    out!("  firebreak rollout status | firebreak audit");
    out!("  firebreak drill          # a broken version: caught in the canary, rolled back");
    out!("  firebreak purge http://localhost:{first}/static/hello.txt");
    out!(
        "  curl -s --cacert {} -H 'Authorization: Bearer {operator}' {control_url}/v1/fleet   # the control API over HTTPS",
        ca_file.display()
    );
    out!("  curl -s -H 'Authorization: Bearer {admin_token}' http://127.0.0.1:{}/metrics   # an edge's admin API", edges.first().map(|e| e.2).unwrap_or(base));
    out!("Try:");
    out!("  curl -si http://127.0.0.1:{first}/static/hello.txt   # twice: miss, then hit");
    out!("  curl -si -H 'Host: assets.localhost' http://127.0.0.1:{first}/static/app.css");
    out!("  curl -si http://127.0.0.1:{first}/api/data           # stale-while-revalidate");
    out!(
        "  curl -s 'http://{}/__origin/stats?path=/static/hello.txt'   # origin requests for one object: 1 for the whole fleet (shield: sin)",
        origin.addr
    );
    let answer = |pop: &str| {
        dns_answers
            .iter()
            .find(|(p, _)| p == pop)
            .map(|(_, a)| a.as_str())
            .unwrap_or("?")
    };
    out!(
        "  dig @127.0.0.1 -p {dns_port} demo.cdn.localhost A +short   # {}: ams (this machine's region; answers are data, the edges listen on 127.0.0.1)",
        answer("ams")
    );
    out!(
        "  dig @127.0.0.1 -p {dns_port} demo.cdn.localhost A +short +subnet={DIG_SUBNET}   # {}: nyc (a client in america, EDNS Client Subnet)",
        answer("nyc")
    );
    let first_https = edges.first().map(|e| e.3).unwrap_or(base);
    out!(
        "  curl -si --cacert {} https://localhost:{first_https}/static/hello.txt   # HTTPS (h2), the demo service's certificate; Alt-Svc offers HTTP/3",
        ca_file.display()
    );
    out!();
    out!("Ctrl-C stops everything.");
    let mut restarts: Vec<Instant> = Vec::new();
    loop {
        tokio::select! {
            _ = crate::wait_for_ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if let Some(name) = children.exited() {
                    match specs.iter().find(|s| s.name == name) {
                        Some(spec) => {
                            restarts.retain(|t| t.elapsed() < Duration::from_secs(60));
                            restarts.push(Instant::now());
                            tracing::warn!(%name, "exited; restarting it (see {})", logs.display());
                            if let Err(e) = children.start(spec, &logs) {
                                tracing::warn!(%name, error = %e, "cannot restart");
                            }
                        }
                        None => tracing::warn!("{name} exited; the rest keeps running (see {})", logs.display()),
                    }
                }
            }
        }
    }
    out!("stopping…");
    children.stop(Duration::from_secs(10));
    Ok(())
}
