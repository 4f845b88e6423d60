//! Test harness: a control plane in this process (redb or etcd store), edges under it, a
//! small origin, an etcd server process, and a plain HTTP client.

use bytes::Bytes;
use firebreak_control::{Plane, Store, Tokens};
use firebreak_edge::agent::{Agent, AgentOptions};
use firebreak_protocol::keys::{ControlKey, PublicKey};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const OPERATOR: &str = "operator-token-0123456789";
pub const EDGE: &str = "edge-token-0123456789abcd";

#[path = "../procs/temp_dir.rs"]
mod scratch;
pub use scratch::TempDir;

/// A fresh directory under the system's temp dir, removed when dropped unless the test is
/// failing ([`TempDir`]).
pub fn temp_dir(name: &str) -> TempDir {
    TempDir::new("fleet", name)
}

/// One HTTP exchange.
pub async fn http(
    method: Method,
    url: &str,
    token: &str,
    body: Option<String>,
) -> (StatusCode, Bytes) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("no answer in 30 s")
        .unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

/// A GET through an edge for `host`; returns status, the `x-version` header and the body.
pub async fn through(edge: SocketAddr, host: &str, path: &str) -> (u16, String, String) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(format!("http://{edge}{path}"))
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let version = resp
        .headers()
        .get("x-version")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, version, String::from_utf8_lossy(&body).into_owned())
}

/// An origin answering every GET with `origin says PATH`, cacheable for a minute; paths under
/// `/nocache/` with `cache-control: no-store` (every such request reaches it).
pub async fn origin() -> SocketAddr {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let path = req.uri().path().to_owned();
                    let cache = if path.starts_with("/nocache/") {
                        "no-store"
                    } else {
                        "max-age=60"
                    };
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .header("cache-control", cache)
                            .body(Full::new(Bytes::from(format!("origin says {path}"))))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A fleet document: services `a` (host a.test) and `b` (host b.test) in front of `origin`,
/// each answering with `x-version: <marker>`.
pub fn fleet_doc(origin: SocketAddr, marker: &str) -> String {
    let mut doc = String::from("[cache]\nmax_bytes = 67108864\nmax_object_bytes = 1048576\n");
    doc.push_str(FAST_ROLLOUT);
    for name in ["a", "b"] {
        doc.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nhosts = [\"{name}.test\"]\n[service.origin]\nservers = [{{ addr = \"{origin}\" }}]\n[[service.response_headers]]\nname = \"x-version\"\nop = \"set\"\nvalue = \"{marker}\"\n"
        ));
    }
    doc
}

/// Rollout settings for tests that are not about rollouts: one wave, one-second bake, no
/// traffic required (said explicitly with `min_requests = 0`).
pub const FAST_ROLLOUT: &str = "\n[rollout]\nedge_gone_s = 5\nstage_timeout_s = 15\n[[rollout.plan]]\nname = \"default\"\nwaves = [{ percent = 100 }]\nbake_s = 1\ninterval_s = 1\nmin_requests = 0\nmax_wait_s = 15\nactivate_timeout_s = 15\n";

/// A control plane in this process.
pub struct Control {
    pub url: String,
    pub plane: Arc<Plane>,
    pub store: Store,
    pub key_path: PathBuf,
    server: Option<firebreak_control::ControlServer>,
}

impl Control {
    /// Starts one over `store_spec` (`redb:PATH` or `etcd://...`), key in `dir`.
    pub async fn start(store_spec: &str, dir: &Path) -> Self {
        let key_path = dir.join("control.key");
        let key = ControlKey::load_or_create(&key_path).unwrap();
        let options = firebreak_control::plane::PlaneOptions {
            tick: Duration::from_millis(100),
            ..Default::default()
        };
        Self::serve_plane(store_spec, key_path, key, options, None).await
    }

    pub fn public(&self) -> PublicKey {
        self.plane.public_key()
    }

    /// The signing key (the same file the plane loaded).
    pub fn key(&self) -> ControlKey {
        ControlKey::load_or_create(&self.key_path).unwrap()
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let (status, bytes) = http(
            method,
            &format!("{}{path}", self.url),
            OPERATOR,
            body.map(|b| b.to_string()),
        )
        .await;
        let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
        (status, value)
    }

    /// Pushes a document and rolls it out (`activate`); waits until the rollout completes.
    /// Returns the version.
    pub async fn release(&self, doc: &str) -> u64 {
        let (status, v) = self
            .call(
                Method::POST,
                "/v1/versions",
                Some(serde_json::json!({"file": "fleet.toml", "document": doc, "message": "test", "activate": true})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        let version = v["version"].as_u64().unwrap();
        self.wait_rollout(version, "complete").await;
        version
    }

    /// Rolls a stored version out on the default plan and waits until it completes.
    #[allow(dead_code)]
    pub async fn deploy(&self, version: u64) {
        self.start_deploy(version).await;
        self.wait_rollout(version, "complete").await;
    }

    /// Points every edge at `version` behind the rollout machinery's back (as a buggy or
    /// compromised control plane might): for tests of the edge's own defences.
    pub async fn force_target(&self, version: u64, rollback: bool) {
        let mut state = self.store.state().await.unwrap().unwrap_or_default();
        let info = self.store.version(version).await.unwrap().unwrap();
        let target = firebreak_protocol::signed::Target {
            epoch: state.epoch,
            seq: state.seq + 1,
            expires_at_ms: firebreak_protocol::now_ms() + 3_600_000,
            audience: "*".into(),
            version,
            bundle_sha256: info.sha256,
            rollback,
            stage: None,
            rollout: None,
            set_at_ms: 1,
            set_by: "test".into(),
        };
        let signed = firebreak_protocol::signed::Signed::sign(&target, &self.key()).unwrap();
        let previous = state.seq;
        state.seq = target.seq;
        state.default = Some(firebreak_control::store::StoredTarget {
            seq: target.seq,
            version,
            signed,
        });
        state.cells.clear();
        state.edges.clear();
        assert!(self.store.set_state(previous, &state).await.unwrap());
    }

    /// Starts a rollout of a stored version on the default plan (does not wait).
    pub async fn start_deploy(&self, version: u64) {
        let (status, v) = self
            .call(
                Method::POST,
                "/v1/rollouts",
                Some(serde_json::json!({"version": version, "message": "test"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
    }

    /// Waits until the rollout of `version` reaches `phase`; returns the rollout view.
    pub async fn wait_rollout(&self, version: u64, phase: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let (_, view) = self.call(Method::GET, "/v1/rollout", None).await;
            let r = &view["rollout"];
            if r["version"].as_u64() == Some(version) && r["phase"].as_str() == Some(phase) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "rollout of version {version} never reached {phase}: {view:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the API server (edges then see the control plane as down).
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

/// An edge under `control`, listening on ephemeral ports.
pub async fn edge(control: &Control, data_dir: &Path, id: &str) -> Agent {
    edge_trusting(&control.url, control.public(), data_dir, id).await
}

pub async fn edge_trusting(url: &str, trust: PublicKey, data_dir: &Path, id: &str) -> Agent {
    edge_placed(url, trust, data_dir, id, "pop1", "c1").await
}

/// An edge under `control` in POP `pop` and cell `cell`.
pub async fn edge_in(control: &Control, data_dir: &Path, id: &str, pop: &str, cell: &str) -> Agent {
    edge_placed(&control.url, control.public(), data_dir, id, pop, cell).await
}

pub async fn edge_placed(
    url: &str,
    trust: PublicKey,
    data_dir: &Path,
    id: &str,
    pop: &str,
    cell: &str,
) -> Agent {
    let opts = AgentOptions {
        control: url.to_owned(),
        token: EDGE.into(),
        id: id.into(),
        pop: pop.into(),
        cell: cell.into(),
        data_dir: data_dir.to_owned(),
        trust,
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        listen_tls: Vec::new(),
        admin: Some("127.0.0.1:0".parse().unwrap()),
        keep: 3,
        heartbeat: Duration::from_millis(500),
        health_interval: Duration::from_millis(500),
        safe_mode: Default::default(),
    };
    tokio::time::timeout(Duration::from_secs(20), Agent::start(opts))
        .await
        .expect("edge did not start within 20 s")
        .unwrap()
}

pub fn addr(agent: &Agent) -> SocketAddr {
    agent.member.local_addrs()[0]
}

/// Waits until `check` holds for the agent's status.
pub async fn wait_for(
    agent: &Agent,
    what: &str,
    check: impl Fn(&firebreak_edge::agent::AgentStatus) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = agent.status();
        if check(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "edge never reached: {what}; status {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_applied(agent: &Agent, version: u64) {
    wait_for(agent, &format!("version {version} applied"), |s| {
        s.applied.as_ref().is_some_and(|a| a.version == version)
    })
    .await
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An etcd server process (Debian's `etcd-server`), killed by PID when dropped.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub struct Etcd {
    child: Option<Child>,
    pub endpoint: String,
    dir: TempDir,
}

#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
impl Etcd {
    pub fn start() -> Self {
        let dir = temp_dir("etcd");
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args([
                "--name",
                "test",
                "--data-dir",
                dir.join("data").to_str().unwrap(),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("test={peer_url}"),
                "--max-request-bytes",
                "8388608",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("etcd.log")).unwrap())
            .spawn()
            .expect("etcd is not installed (apt-get install etcd-server; .ci/run does)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            assert!(
                Instant::now() < deadline,
                "etcd did not start; see {}",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child: Some(child),
            endpoint: format!("etcd://127.0.0.1:{client}"),
            dir,
        }
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Control {
    /// [`Control::start`] with the key ring kept beside the key file (`control.key.ring`), as
    /// `firebreak control` runs it: rotations and revocations survive a restart.
    pub async fn start_with_ring(store_spec: &str, dir: &Path) -> Self {
        let key_path = dir.join("control.key");
        let key = ControlKey::load_or_create(&key_path).unwrap();
        let keys = firebreak_control::keys::ControlKeys::open(
            &key_path,
            key,
            firebreak_control::keys::DEFAULT_OVERLAP,
        )
        .unwrap();
        let options = firebreak_control::plane::PlaneOptions {
            tick: Duration::from_millis(100),
            ..Default::default()
        };
        Self::serve_plane(store_spec, key_path, keys, options, None).await
    }

    /// [`Control::start`] with targets that stay fresh for `freshness` only.
    pub async fn start_with_freshness(store_spec: &str, dir: &Path, freshness: Duration) -> Self {
        let key_path = dir.join("control.key");
        let key = ControlKey::load_or_create(&key_path).unwrap();
        let options = firebreak_control::plane::PlaneOptions {
            tick: Duration::from_millis(100),
            target_freshness: freshness,
            ..Default::default()
        };
        Self::serve_plane(store_spec, key_path, key, options, None).await
    }

    async fn serve_plane(
        store_spec: &str,
        key_path: std::path::PathBuf,
        key: impl Into<firebreak_control::keys::ControlKeys>,
        options: firebreak_control::plane::PlaneOptions,
        access: Option<firebreak_control::auth::Access>,
    ) -> Self {
        let store = Store::open(store_spec).await.unwrap();
        let plane = Plane::with_options(store.clone(), key, options)
            .await
            .unwrap();
        let access = access.unwrap_or_else(|| {
            Tokens {
                operator: OPERATOR.into(),
                edge: EDGE.into(),
            }
            .access()
            .unwrap()
        });
        let server =
            firebreak_control::serve("127.0.0.1:0".parse().unwrap(), plane.clone(), access)
                .await
                .unwrap();
        Self {
            url: format!("http://{}", server.local_addr()),
            plane,
            store,
            key_path,
            server: Some(server),
        }
    }
}

/// Waits (polling, up to 20 s) until `check` resolves to `true`; fails the test naming `what`.
#[allow(dead_code)]
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (polling, at most `secs` seconds) until `check` returns `Some`; fails the test naming
/// `what` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One plain GET (no token); status and body text. `None` when nothing answers.
pub async fn get_plain(url: &str) -> Option<(StatusCode, String)> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A control plane in this process with explicit operators and edge settings.
#[allow(dead_code)]
pub async fn control_with(
    store_spec: &str,
    dir: &Path,
    access: firebreak_control::auth::Access,
    edges: firebreak_control::registry::EdgeSettings,
) -> Control {
    let key_path = dir.join("control.key");
    let key = ControlKey::load_or_create(&key_path).unwrap();
    let options = firebreak_control::plane::PlaneOptions {
        tick: Duration::from_millis(100),
        edges,
        ..Default::default()
    };
    Control::serve_plane(store_spec, key_path, key, options, Some(access)).await
}

/// The credential a joined edge keeps in its data directory.
#[allow(dead_code)]
pub fn kept_credential(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("credential"))
        .unwrap_or_else(|e| panic!("no credential in {}: {e}", data_dir.display()))
        .trim()
        .to_owned()
}

/// Joins edge `id` over HTTP with `token`; returns the status and the JSON answer.
#[allow(dead_code)]
pub async fn join(
    control: &Control,
    id: &str,
    token: &str,
    admin_url: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let body = serde_json::json!({"pop": "p", "cell": "c", "admin_url": admin_url});
    let (status, bytes) = http(
        Method::POST,
        &format!("{}/v1/edges/{id}/join", control.url),
        token,
        Some(body.to_string()),
    )
    .await;
    let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
        String::from_utf8_lossy(&bytes).into_owned(),
    ));
    (status, value)
}

/// An operator's request with extra headers; the answer as JSON (a string if it is not JSON).
#[allow(dead_code)]
pub async fn http_with(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> (StatusCode, serde_json::Value) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {OPERATOR}"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("no answer in 30 s")
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
        String::from_utf8_lossy(&bytes).into_owned(),
    ));
    (status, value)
}

/// A child process killed (by its own handle) when dropped.
#[allow(dead_code)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A test CA (rcgen, ECDSA P-256) that issues server certificates.
#[allow(dead_code)]
pub struct TestCa {
    /// The CA certificate (PEM): what clients trust.
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

#[allow(dead_code)]
impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` and its key (PEM).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the CA certificate to `dir/NAME` and returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem).unwrap();
        path
    }
}

/// A control plane in this process serving its API over HTTPS with a certificate for `names`
/// issued by `ca` (through `firebreak control`'s own loader, `control::https`). Operator
/// calls go over HTTPS too, trusting `ca`.
#[allow(dead_code)]
pub struct HttpsControl {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    pub plane: Arc<Plane>,
    ca: String,
    server: Option<firebreak_control::ControlServer>,
}

#[allow(dead_code)]
impl HttpsControl {
    pub async fn start(dir: &Path, ca: &TestCa, names: &[&str]) -> Self {
        let (cert, key) = ca.issue(names);
        let (cert_file, key_file) = (dir.join("api-cert.pem"), dir.join("api-key.pem"));
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
        let tls = firebreak_control::https::server_config(&cert_file, &key_file).unwrap();
        let key_path = dir.join("control.key");
        let key = ControlKey::load_or_create(&key_path).unwrap();
        let store = Store::open(&format!("redb:{}", dir.join("control.redb").display()))
            .await
            .unwrap();
        let options = firebreak_control::plane::PlaneOptions {
            tick: Duration::from_millis(100),
            ..Default::default()
        };
        let plane = Plane::with_options(store, key, options).await.unwrap();
        let access = Tokens {
            operator: OPERATOR.into(),
            edge: EDGE.into(),
        }
        .access()
        .unwrap();
        let server = firebreak_control::serve_maybe_tls(
            "127.0.0.1:0".parse().unwrap(),
            plane.clone(),
            access,
            firebreak_control::ApiLimits::default(),
            Some(tls),
        )
        .await
        .unwrap();
        Self {
            url: format!("https://{}", server.local_addr()),
            plane,
            ca: ca.pem.clone(),
            server: Some(server),
        }
    }

    pub fn public(&self) -> PublicKey {
        self.plane.public_key()
    }

    /// An operator's call over HTTPS (trusting the CA); the answer as JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let client = firebreak_protocol::client::HttpClient::with_ca(
            Duration::from_secs(2),
            Some(self.ca.as_bytes()),
        )
        .unwrap();
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url))
            .header("authorization", format!("Bearer {OPERATOR}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let (status, bytes) = client
            .exchange(req, 16 << 20, Duration::from_secs(30))
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
        (status, value)
    }

    /// Pushes a document and rolls it out; waits until the rollout completes. Returns the
    /// version.
    pub async fn release(&self, doc: &str) -> u64 {
        let (status, v) = self
            .call(
                Method::POST,
                "/v1/versions",
                Some(serde_json::json!({"file": "fleet.toml", "document": doc, "message": "test", "activate": true})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        let version = v["version"].as_u64().unwrap();
        eventually(&format!("rollout of {version} complete"), 40, || async {
            let (_, view) = self.call(Method::GET, "/v1/rollout", None).await;
            let r = &view["rollout"];
            (r["version"].as_u64() == Some(version) && r["phase"] == "complete").then_some(())
        })
        .await;
        version
    }

    /// The ids of the edges the control plane knows.
    pub async fn fleet_ids(&self) -> Vec<String> {
        let (status, fleet) = self.call(Method::GET, "/v1/fleet", None).await;
        assert_eq!(status, StatusCode::OK, "{fleet}");
        fleet
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .collect()
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}
