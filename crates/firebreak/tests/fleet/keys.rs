//! Signing keys rotate and are revoked: edges under steady load keep serving through a
//! rotation, take versions signed by the new key, restart from their disks after the old key
//! is retired, and refuse what a revoked key signs.

use crate::harness::*;
use bytes::Bytes;
use firebreak_edge::agent::Agent;
use firebreak_protocol::keyring::KeyId;
use firebreak_protocol::signed::{
    sign_request, AUDIENCE_HEADER, EXPIRES_HEADER, NONCE_HEADER, SIGNATURE_HEADER,
};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Rotates with `overlap_ms`; returns (old key id, new key id).
async fn rotate(c: &Control, overlap_ms: u64) -> (String, String) {
    let (s, view) = c
        .call(
            Method::POST,
            "/v1/keys/rotate",
            Some(json!({"overlap_ms": overlap_ms, "message": "test rotation"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{view}");
    let old = view["current"].as_str().unwrap().to_owned();
    let new = view["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .find(|id| *id != old)
        .unwrap();
    (old, new)
}

/// Waits until the control plane signs with `key`.
async fn wait_signing(c: &Control, key: &str) {
    wait_until(
        &format!("the control plane signs with key {key}"),
        || async {
            let (_, view) = c.call(Method::GET, "/v1/keys/ring", None).await;
            view["current"] == json!(key)
        },
    )
    .await;
}

async fn wait_key_generation(agent: &Agent, generation: u64) {
    wait_for(agent, &format!("key set generation {generation}"), |s| {
        s.key_generation >= generation
    })
    .await;
}

/// The key id a stored version's bundle names.
async fn bundle_key(c: &Control, version: u64) -> String {
    let bytes = c.plane.bundle(version).await.unwrap();
    assert_eq!(&bytes[..4], b"FBB2");
    KeyId(bytes[4..12].try_into().unwrap()).to_string()
}

/// Pushes `doc` and rolls it out; returns the version.
async fn release_marked(c: &Control, origin: SocketAddr, marker: &str) -> u64 {
    c.release(&fleet_doc(origin, marker)).await
}

/// GETs through every edge in a loop until stopped, counting answers that are not a 200 with
/// an `x-version` header (connection errors included).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(edges: Vec<SocketAddr>) -> Self {
        let (stop, ok, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let task = {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let client: Client<HttpConnector, Full<Bytes>> =
                    Client::builder(TokioExecutor::new()).build_http();
                let mut errors = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for edge in &edges {
                        n += 1;
                        let req = Request::get(format!("http://{edge}/nocache/{n}"))
                            .header("host", "a.test")
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        let answer = tokio::time::timeout(
                            std::time::Duration::from_secs(5),
                            client.request(req),
                        )
                        .await;
                        match answer {
                            Ok(Ok(resp))
                                if resp.status() == StatusCode::OK
                                    && resp.headers().contains_key("x-version") =>
                            {
                                let _ = resp.into_body().collect().await;
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                if errors.len() < 10 {
                                    errors.push(format!("{edge}: {other:?}"));
                                }
                            }
                        }
                    }
                }
                errors
            })
        };
        Self {
            stop,
            ok,
            failed,
            task,
        }
    }

    /// Stops; returns (ok, failed, first errors).
    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.task.await.unwrap();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

/// Restarts an edge from its data dir, trusting `trust` (the control plane may be down).
async fn restart(
    url: &str,
    trust: firebreak_protocol::keys::PublicKey,
    dir: &Path,
    id: &str,
) -> Agent {
    edge_trusting(url, trust, dir, id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_without_downtime() {
    let dir = temp_dir("key-rotation");
    let origin = origin().await;
    let mut c =
        Control::start_with_ring(&format!("redb:{}", dir.join("c.redb").display()), &dir).await;
    let first_key = c.public();
    release_marked(&c, origin, "v1").await;
    let e1 = edge(&c, &dir.join("e1"), "e1").await;
    let e2 = edge(&c, &dir.join("e2"), "e2").await;
    wait_applied(&e1, 1).await;
    wait_applied(&e2, 1).await;
    let load = Load::start(vec![addr(&e1), addr(&e2)]);

    // Rotate with a 2 s overlap: the old key keeps signing while the edges fetch the set.
    let (old, new) = rotate(&c, 2_000).await;
    wait_key_generation(&e1, 1).await;
    wait_key_generation(&e2, 1).await;
    wait_signing(&c, &new).await;
    assert_eq!(
        c.public(),
        c.plane
            .keys()
            .set()
            .get(new.parse().unwrap())
            .unwrap()
            .public
    );

    // A version pushed now is sealed (and its target signed) by the new key only.
    let v2 = release_marked(&c, origin, "v2").await;
    assert_eq!(bundle_key(&c, v2).await, new);
    assert_ne!(
        bundle_key(&c, 1).await,
        new,
        "version 1 was sealed by {old}"
    );
    wait_applied(&e1, v2).await;
    wait_applied(&e2, v2).await;
    let (ok, failed, errors) = load.finish().await;
    assert!(ok > 0, "the load never got an answer");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed: {errors:?}",
        ok + failed
    );
    eprintln!("rotation under load: {ok} requests answered, {failed} failed");

    // Restart from disk with the control plane down, still started with the first key only.
    c.stop().await;
    e1.shutdown();
    drop(e1);
    let e1 = restart(&c.url, first_key, &dir.join("e1"), "e1").await;
    wait_applied(&e1, v2).await;
    let (status, version, _) = through(addr(&e1), "a.test", "/x").await;
    assert_eq!((status, version.as_str()), (200, "v2"));
    assert_eq!(e1.status().key_generation, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_key_signatures_are_refused() {
    let dir = temp_dir("key-revoked");
    let origin = origin().await;
    let c = Control::start_with_ring(&format!("redb:{}", dir.join("c.redb").display()), &dir).await;
    release_marked(&c, origin, "v1").await;
    let e = edge(&c, &dir.join("e"), "e").await;
    wait_applied(&e, 1).await;
    let (old, new) = rotate(&c, 500).await;
    wait_key_generation(&e, 1).await;
    wait_signing(&c, &new).await;
    let v2 = release_marked(&c, origin, "v2").await;
    wait_applied(&e, v2).await;

    // The old key (the thief has its file) is revoked from now, signed by the new key.
    let stolen = c.key();
    assert_eq!(KeyId::of(&stolen.public()).to_string(), old);
    let (s, view) = c
        .call(
            Method::POST,
            &format!("/v1/keys/{old}/revoke"),
            Some(json!({"after_ms": firebreak_protocol::now_ms(), "message": "stolen"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{view}");
    assert_eq!(view["current"], json!(new));
    wait_key_generation(&e, 2).await;

    // A target the thief signs, backdated to before the revocation, is refused; the edge
    // keeps serving what it runs and says why.
    c.force_target(1, true).await;
    wait_for(&e, "the forged target refused as revoked", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|m| m.contains("revoked"))
    })
    .await;
    assert_eq!(e.status().applied.unwrap().version, v2);
    let (status, version, _) = through(addr(&e), "a.test", "/x").await;
    assert_eq!((status, version.as_str()), (200, "v2"));

    // An admin request (purge) signed by the thief is refused; one from the control plane
    // (the new key) is accepted.
    let admin = e.member.admin_addr().unwrap();
    let path = "/purge/all?service=a";
    let at = firebreak_protocol::now_ms();
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    // Addressed to this edge, fresh and unexpired: only the key makes it a forgery.
    let auth = sign_request(&stolen, "POST", path, "e", at + 30_000).unwrap();
    let forged = Request::post(format!("http://{admin}{path}"))
        .header(SIGNATURE_HEADER, &auth.signature)
        .header(AUDIENCE_HEADER, &auth.audience)
        .header(NONCE_HEADER, &auth.nonce)
        .header(EXPIRES_HEADER, auth.expires_at_ms.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(forged).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (s, out) = c
        .call(
            Method::POST,
            "/v1/purge",
            Some(json!({"all": true, "service": "a"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{out}");
    assert_eq!(out["acknowledged"], json!(["e"]), "{out}");

    // The only good key cannot be revoked (nothing left to sign with), and the revoked key
    // is gone from the control plane's signing keys.
    let (s, body) = c
        .call(
            Method::POST,
            &format!("/v1/keys/{new}/revoke"),
            Some(json!({"after_ms": firebreak_protocol::now_ms()})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    let (_, audit) = c.call(Method::GET, "/v1/audit?limit=50", None).await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"key-rotate") && actions.contains(&"key-revoke"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_restarts_from_disk_after_old_key_retired() {
    let dir = temp_dir("key-retired");
    let origin = origin().await;
    let mut c =
        Control::start_with_ring(&format!("redb:{}", dir.join("c.redb").display()), &dir).await;
    let first_key = c.public();
    release_marked(&c, origin, "v1").await;
    let e = edge(&c, &dir.join("e"), "e").await;
    wait_applied(&e, 1).await;
    // Version 1 was sealed by the first key; rotate and let the overlap end.
    let (old, new) = rotate(&c, 1_000).await;
    assert_eq!(bundle_key(&c, 1).await, old);
    wait_key_generation(&e, 1).await;
    wait_signing(&c, &new).await;
    let ring: Value = c.call(Method::GET, "/v1/keys/ring", None).await.1;
    let retire = ring["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == json!(old))
        .and_then(|k| k["retire_after_ms"].as_u64())
        .unwrap();
    assert!(
        firebreak_protocol::now_ms() > retire,
        "the old key is retired"
    );

    // With the control plane down, the edge restarts from its disk: the bundle the old key
    // sealed before it retired still verifies, with the key set kept in the data dir.
    c.stop().await;
    e.shutdown();
    drop(e);
    let e = restart(&c.url, first_key, &dir.join("e"), "e").await;
    wait_applied(&e, 1).await;
    let (status, version, _) = through(addr(&e), "a.test", "/x").await;
    assert_eq!((status, version.as_str()), (200, "v1"));
    e.shutdown();
    drop(e);

    // Started with the new key instead (the operator updated --trust): the kept set verifies
    // from it too, and the old bundle still loads.
    let new_public = c
        .plane
        .keys()
        .set()
        .get(new.parse().unwrap())
        .unwrap()
        .public;
    let e = restart(&c.url, new_public, &dir.join("e"), "e").await;
    wait_applied(&e, 1).await;
    assert_eq!(e.status().key_generation, 1);
    let (status, version, _) = through(addr(&e), "a.test", "/x").await;
    assert_eq!((status, version.as_str()), (200, "v1"));
}
