//! Services' private keys under the control plane: moved out of the bundle into a secret
//! document at push, served only to edges with their own credential, kept 0600 on the edge,
//! never shown by the API; expired certificates refused at push; expiry in the fleet view.

use crate::harness::*;
use firebreak_protocol::bundle::{Bundle, ServiceDocument};
use http::{Method, StatusCode};
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;

fn redb(dir: &Path) -> String {
    format!("redb:{}", dir.join("store.redb").display())
}

/// A certificate for `host` valid from `from_s` to `to_s` (seconds from now) and its key.
fn cert_and_key(host: &str, from_s: i64, to_s: i64) -> (String, String, i64) {
    let now = i64::try_from(firebreak_protocol::now_ms() / 1000).unwrap();
    let at = |offset: i64| {
        rcgen::date_time_ymd(1970, 1, 1)
            + std::time::Duration::from_secs(u64::try_from(now + offset).unwrap())
    };
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap();
    params.not_before = at(from_s);
    params.not_after = at(to_s);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (
        cert.pem(),
        key.serialize_pem(),
        params.not_after.unix_timestamp(),
    )
}

/// The harness's fleet document plus service `s` (host s.test) with a certificate and its
/// inline key.
fn doc_with_tls(origin: SocketAddr, marker: &str, cert: &str, key: &str) -> String {
    let mut doc = fleet_doc(origin, marker);
    doc.push_str(&format!(
        "\n[[service]]\nname = \"s\"\nhosts = [\"s.test\"]\n[service.origin]\nservers = [{{ addr = \"{origin}\" }}]\n[service.tls]\ncert = \"\"\"\n{cert}\"\"\"\nkey = \"\"\"\n{key}\"\"\"\n"
    ));
    doc
}

async fn push(c: &Control, doc: &str) -> (StatusCode, serde_json::Value) {
    c.call(
        Method::POST,
        "/v1/versions",
        Some(json!({"file": "fleet.toml", "document": doc, "message": "test"})),
    )
    .await
}

/// The PEM text the control plane stores and edges keep: the key as pushed, between the
/// string's delimiters (a newline right after `"""` is not part of it).
fn pem_sha(key: &str) -> String {
    firebreak_protocol::sha256_hex(key.as_bytes())
}

async fn scenario(store: &str, dir: &Path) {
    let origin = origin().await;
    let mut c = Control::start(store, dir).await;
    let (cert, key, not_after) = cert_and_key("s.test", -3600, 30 * 86_400);
    let sha = pem_sha(&key);
    let v = c.release(&doc_with_tls(origin, "v1", &cert, &key)).await;
    let e1 = edge(&c, &dir.join("e1"), "e1").await;
    let e2 = edge(&c, &dir.join("e2"), "e2").await;
    wait_applied(&e1, v).await;
    wait_applied(&e2, v).await;
    let (cred1, cred2) = (
        kept_credential(&dir.join("e1")),
        kept_credential(&dir.join("e2")),
    );

    // The bundle every edge downloads holds no private key; the document names its secret.
    let (status, bundle) = http(
        Method::GET,
        &format!("{}/v1/versions/{v}/bundle", c.url),
        &cred1,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&bundle);
    assert!(
        !text.contains("PRIVATE KEY"),
        "a bundle holds a private key"
    );
    assert!(text.contains(&sha), "the bundle does not name the secret");

    // The edge kept the key 0600 and serves the service with it.
    let kept = dir.join("e1").join("secrets").join(format!("{sha}.pem"));
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), key);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", kept.display());
    }
    assert_eq!(through(addr(&e1), "s.test", "/x").await.0, 200);

    // Served to the edge itself only; anything else is 404 (unknown) or refused.
    let secret_url = |id: &str, sha: &str| format!("{}/v1/edges/{id}/secrets/{sha}", c.url);
    let (status, body) = http(Method::GET, &secret_url("e2", &sha), &cred2, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, key.as_bytes());
    let unknown = firebreak_protocol::sha256_hex(b"no such key");
    for asked in [unknown.as_str(), "not-a-sha", &sha.to_uppercase()] {
        let (status, body) = http(Method::GET, &secret_url("e1", asked), &cred1, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{asked}");
        assert!(!String::from_utf8_lossy(&body).contains("PRIVATE KEY"));
    }
    let (status, _) = http(Method::GET, &secret_url("e2", &sha), &cred1, None).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "an edge asked for another's secret"
    );
    let (status, body) = http(Method::GET, &secret_url("e1", &sha), OPERATOR, None).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "an admin operator read a key"
    );
    assert!(!String::from_utf8_lossy(&body).contains("PRIVATE KEY"));
    let (status, _) = http(Method::GET, &secret_url("e1", &sha), "", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = http(Method::GET, &secret_url("e1", &sha), EDGE, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the join token read a key");

    // Documents shown by the API: no key, no PEM; the certificate described.
    let (status, detail) = c
        .call(Method::GET, &format!("/v1/versions/{v}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let shown = detail["document"].as_str().unwrap();
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    assert!(!shown.contains("BEGIN CERTIFICATE"), "{shown}");
    assert!(shown.contains("subject: CN=s.test"), "{shown}");
    assert!(shown.contains("SANs: s.test"), "{shown}");
    let expires = firebreak_protocol::secrets::rfc3339(not_after);
    assert!(shown.contains(&expires), "{shown}");
    assert!(
        shown.contains(&format!("key_sha256 = \"{sha}\"")),
        "{shown}"
    );
    // As stored (`?certs=pem`, what `firebreak drill` pushes again): the certificate's PEM,
    // still no key; pushed back, it is a valid version.
    let (status, stored) = c
        .call(Method::GET, &format!("/v1/versions/{v}?certs=pem"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let stored = stored["document"].as_str().unwrap();
    assert!(stored.contains("BEGIN CERTIFICATE"), "{stored}");
    assert!(!stored.contains("PRIVATE KEY"), "{stored}");
    let (status, again) = push(&c, stored).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    let (status, _) = c
        .call(Method::GET, &format!("/v1/versions/{v}?certs=der"), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A rotated certificate: stored, the diff shows the change, never a key or a PEM.
    let (cert2, key2, _) = cert_and_key("s.test", -3600, 60 * 86_400);
    let (status, pushed) = push(&c, &doc_with_tls(origin, "v2", &cert2, &key2)).await;
    assert_eq!(status, StatusCode::CREATED, "{pushed}");
    let v2 = pushed["version"].as_u64().unwrap();
    let (status, diff) = c
        .call(Method::GET, &format!("/v1/diff?from={v}&to={v2}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let diff = diff.as_str().unwrap();
    assert!(
        !diff.contains("PRIVATE KEY") && !diff.contains("BEGIN"),
        "{diff}"
    );
    assert!(
        diff.contains(&format!("+key_sha256 = \"{}\"", pem_sha(&key2))),
        "{diff}"
    );

    // An expired certificate is refused at push, located; a future one is a warning.
    let (old, old_key, _) = cert_and_key("s.test", -60 * 86_400, -86_400);
    let (status, refused) = push(&c, &doc_with_tls(origin, "v3", &old, &old_key)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    let e = &refused["errors"][0];
    assert_eq!(e["file"], "fleet.toml", "{refused}");
    assert_eq!(e["field"], "service[2].tls.cert", "{refused}");
    assert!(e["line"].as_u64().unwrap() > 0, "{refused}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("certificate expired at "),
        "{refused}"
    );
    assert!(!refused.to_string().contains("PRIVATE KEY"));
    let (soon, soon_key, _) = cert_and_key("s.test", 86_400, 30 * 86_400);
    let (status, warned) = push(&c, &doc_with_tls(origin, "v4", &soon, &soon_key)).await;
    assert_eq!(status, StatusCode::CREATED, "{warned}");
    assert!(
        warned["warnings"][0]
            .as_str()
            .unwrap()
            .contains("service[2].tls.cert: certificate not valid before"),
        "{warned}"
    );

    // The fleet view carries each edge's earliest certificate expiry.
    let expiry = eventually("e1 reports its certificate expiry", 20, || async {
        let (_, fleet) = c.call(Method::GET, "/v1/fleet", None).await;
        fleet
            .as_array()?
            .iter()
            .find(|e| e["id"] == "e1")?
            .get("cert_expiry_ms")?
            .as_u64()
    })
    .await;
    assert_eq!(expiry, u64::try_from(not_after).unwrap() * 1000);

    // With the control plane down, a restarted edge comes back with its version and key
    // (read from its data directory).
    e1.shutdown();
    drop(e1);
    e2.shutdown();
    drop(e2);
    c.stop().await;
    let again = edge_trusting("http://127.0.0.1:9", c.public(), &dir.join("e1"), "e1").await;
    assert_eq!(again.status().applied.unwrap().version, v);
    assert_eq!(through(addr(&again), "s.test", "/y").await.0, 200);
    again.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_key_travels_as_a_secret_only_to_edges_and_is_never_shown() {
    let dir = temp_dir("secrets");
    scenario(&redb(&dir), &dir).await;
    std::fs::remove_dir_all(&dir).ok();
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_key_travels_as_a_secret_over_etcd() {
    let etcd = Etcd::start();
    let dir = temp_dir("secrets-etcd");
    scenario(&etcd.endpoint, &dir).await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_whose_secret_cannot_be_fetched_cannot_stage_and_nothing_changes() {
    let dir = temp_dir("secrets-missing");
    let origin = origin().await;
    let c = Control::start(&redb(&dir), &dir).await;
    let v1 = c.release(&fleet_doc(origin, "v1")).await;
    let e = edge(&c, &dir.join("e"), "e").await;
    wait_applied(&e, v1).await;

    // A version naming a secret the store does not hold, written behind the API's back (a
    // store restored without its secrets, say).
    let (cert, _, _) = cert_and_key("s.test", -3600, 86_400);
    let missing = firebreak_protocol::sha256_hex(b"a key nobody stored");
    let docs = firebreak_protocol::document::split(&fleet_doc(origin, "v2")).unwrap();
    let mut services = docs.services;
    services.push(ServiceDocument {
        name: "s".into(),
        document: format!(
            "[[service]]\nname = \"s\"\nhosts = [\"s.test\"]\n[service.origin]\nservers = [{{ addr = \"{origin}\" }}]\n[service.tls]\ncert = \"\"\"\n{cert}\"\"\"\nkey_sha256 = \"{missing}\"\n"
        ),
    });
    let bundle = Bundle {
        version: v1 + 1,
        parent: Some(v1),
        created_at_ms: firebreak_protocol::now_ms(),
        author: "test".into(),
        message: "missing secret".into(),
        fleet: docs.fleet,
        services,
        geoip: None,
    };
    let sealed = bundle.seal(&c.key()).unwrap();
    assert!(c
        .store
        .insert_version(&bundle.describe(&sealed), &sealed)
        .await
        .unwrap());
    c.start_deploy(v1 + 1).await;
    let view = c.wait_rollout(v1 + 1, "stage_failed").await;
    assert!(view.to_string().contains("cannot be fetched"), "{view:#}");
    wait_for(&e, "cannot stage reported", |s| {
        s.staged
            .as_ref()
            .and_then(|s| s.error.as_deref())
            .is_some_and(|m| m.contains(&missing))
    })
    .await;
    // Nothing half-applied: the edge serves v1, keeps no file for the secret.
    assert_eq!(e.status().applied.unwrap().version, v1);
    assert_eq!(through(addr(&e), "a.test", "/").await.1, "v1");
    assert!(!dir
        .join("e/secrets")
        .join(format!("{missing}.pem"))
        .exists());
    e.shutdown();
    std::fs::remove_dir_all(&dir).ok();
}
