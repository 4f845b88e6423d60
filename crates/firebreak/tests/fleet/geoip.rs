//! A MaxMind database in the signed version: pushed with its document (a body larger than any
//! other API body), verified by the control plane, stored (redb, etcd), downloaded and
//! composed by the edges, kept on their disk with its version.

use crate::harness::*;
use firebreak_dns::testing::MmdbWriter;
use firebreak_protocol::binary::Binary;
use firebreak_protocol::bundle::Bundle;
use http::{Method, StatusCode};
use serde_json::json;

/// A valid database of `networks` IPv4 /24s: about 75 bytes each.
fn database(networks: u32) -> Vec<u8> {
    const CODES: [(&str, &str); 4] = [("NL", "EU"), ("US", "NA"), ("DE", "EU"), ("JP", "AS")];
    let mut w = MmdbWriter::new(32);
    for i in 0..networks {
        let (country, continent) = CODES[(i % 4) as usize];
        w.insert(
            &format!("{}.{}.{}.0/24", 1 + (i >> 16), (i >> 8) & 255, i & 255),
            Some(country),
            Some(continent),
        );
    }
    w.build()
}

/// The test fleet with the example's DNS data, naming `geo.mmdb`.
fn document(origin: std::net::SocketAddr) -> String {
    let example = include_str!("../../../../examples/dns.toml");
    let start = example.find("[dns]\n").unwrap();
    let end = example.find("[[service]]").unwrap();
    let dns = example[start..end].replacen("[dns]\n", "[dns]\ngeoip_file = \"geo.mmdb\"\n", 1);
    let switch =
        "[[switch]]\nname = \"a-bypass\"\nservice = \"a\"\naction = \"bypass_cache\"\non = false\n";
    format!("{}\n{dns}\n{switch}", fleet_doc(origin, "v1"))
}

fn push(doc: &str, db: &[u8]) -> serde_json::Value {
    json!({
        "file": "fleet.toml",
        "document": doc,
        "message": "with a database",
        "activate": true,
        "geoip": serde_json::to_value(Binary::from(db.to_vec())).unwrap(),
    })
}

fn geoip_of(s: &firebreak_edge::agent::AgentStatus) -> Option<Vec<u8>> {
    s.applied
        .as_ref()?
        .geoip
        .as_ref()
        .map(|g| g.bytes().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_travels_in_the_version_to_the_edges_and_their_disk() {
    let dir = temp_dir("geoip");
    let origin = origin().await;
    let mut c = Control::start(&format!("redb:{}", dir.join("c.redb").display()), &dir).await;
    let db = database(40_000);
    let body = push(&document(origin), &db);
    assert!(
        body.to_string().len() > firebreak_protocol::api::MAX_API_BODY_BYTES,
        "the push is larger than any other API body may be"
    );
    let (status, v) = c.call(Method::POST, "/v1/versions", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(
        v["geoip_sha256"],
        json!(firebreak_protocol::sha256_hex(&db)),
        "{v}"
    );
    c.wait_rollout(1, "complete").await;
    let e = edge(&c, &dir.join("e"), "e").await;
    wait_for(&e, "the version's database composed", |s| {
        geoip_of(s).as_deref() == Some(&db[..])
    })
    .await;
    // The same bytes under the version's signature.
    let (status, sealed) = http(
        Method::GET,
        &format!("{}/v1/versions/1/bundle", c.url),
        OPERATOR,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let bundle = Bundle::open(&sealed, &c.public()).unwrap();
    assert_eq!(&bundle.geoip.unwrap().bytes()[..], &db[..]);
    // A kill switch makes the next version from this one: with its database.
    let (status, v) = c
        .call(
            Method::POST,
            "/v1/switches/a-bypass",
            Some(json!({"on": true, "message": "test"})),
        )
        .await;
    assert!(status.is_success(), "{v}");
    let (_, v) = c.call(Method::GET, "/v1/versions/2", None).await;
    assert_eq!(
        v["geoip_sha256"],
        json!(firebreak_protocol::sha256_hex(&db)),
        "{v}"
    );
    wait_for(&e, "the switch's version with the database", |s| {
        s.applied.as_ref().is_some_and(|a| a.version == 2)
            && geoip_of(s).as_deref() == Some(&db[..])
    })
    .await;
    // Other routes keep their bound.
    let (status, v) = c
        .call(
            Method::POST,
            "/v1/purge",
            Some(json!({ "pad": "x".repeat(firebreak_protocol::api::MAX_API_BODY_BYTES) })),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    // Restarted with the control plane gone, the edge has the database from its disk.
    e.shutdown();
    drop(e);
    c.stop().await;
    let again = edge_trusting("http://127.0.0.1:9", c.public(), &dir.join("e"), "e").await;
    assert_eq!(geoip_of(&again.status()).as_deref(), Some(&db[..]));
    std::fs::remove_dir_all(&dir).ok();
}

/// A bundle over gRPC's default 4 MiB answer: etcd stores it (the test server accepts 8 MiB
/// requests) and the control plane reads it back.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stores_and_serves_a_version_over_four_mebibytes() {
    let dir = temp_dir("geoip-etcd");
    let etcd = Etcd::start();
    let origin = origin().await;
    let c = Control::start(&etcd.endpoint, &dir).await;
    let db = database(60_000);
    assert!(
        db.len() * 4 / 3 > 4 * 1024 * 1024,
        "{} bytes: not over gRPC's default",
        db.len()
    );
    let (status, v) = c
        .call(
            Method::POST,
            "/v1/versions",
            Some(push(&document(origin), &db)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (status, sealed) = http(
        Method::GET,
        &format!("{}/v1/versions/1/bundle", c.url),
        OPERATOR,
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&sealed)
    );
    let bundle = Bundle::open(&sealed, &c.public()).unwrap();
    assert_eq!(&bundle.geoip.unwrap().bytes()[..], &db[..]);
    std::fs::remove_dir_all(&dir).ok();
}
