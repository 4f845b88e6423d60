//! A push carrying a MaxMind database: verified with the DNS server's code, signed into the
//! version, refused (naming `dns.geoip_file`, storing nothing) when it would be refused by a
//! DNS server.

use super::*;
use firebreak_dns::testing::MmdbWriter;
use firebreak_protocol::keys::ControlKey;

/// The example DNS fleet, naming `geo.mmdb` when `named`.
fn document(named: bool) -> String {
    let text = include_str!("../../../examples/dns.toml");
    if named {
        text.replacen("[dns]\n", "[dns]\ngeoip_file = \"geo.mmdb\"\n", 1)
    } else {
        text.to_owned()
    }
}

fn database() -> Vec<u8> {
    MmdbWriter::new(128)
        .insert("198.18.0.0/15", Some("NL"), Some("EU"))
        .insert("2001:db8::/32", Some("US"), Some("NA"))
        .build()
}

fn request(named: bool, geoip: Option<Vec<u8>>) -> PushRequest {
    PushRequest {
        file: "fleet.toml".into(),
        document: document(named),
        message: "m".into(),
        author: None,
        activate: false,
        geoip: geoip.map(Binary::from),
        force: false,
    }
}

struct Fixture {
    plane: Arc<Plane>,
    key: ControlKey,
    dir: std::path::PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn plane(name: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("fb-plane-geoip-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&format!("redb:{}", dir.join("s.redb").display()))
        .await
        .unwrap();
    let key = ControlKey::generate().unwrap();
    let plane = Plane::new(store, key.clone()).await.unwrap();
    Fixture { plane, key, dir }
}

/// The single error of a refused push, after checking that nothing was stored.
async fn refused(f: &Fixture, req: PushRequest) -> firebreak_config::ConfigError {
    let e = match f.plane.push(req, "ops").await {
        Err(PlaneError::Invalid(e)) => e,
        other => panic!("not refused as invalid: {other:?}"),
    };
    assert_eq!(
        f.plane.versions(10).await.unwrap(),
        vec![],
        "nothing stored"
    );
    assert_eq!(e.errors.len(), 1, "{e}");
    e.errors[0].clone()
}

#[tokio::test]
async fn push_with_a_valid_database_signs_it_into_the_version() {
    let f = plane("valid").await;
    let db = database();
    let info = f
        .plane
        .push(request(true, Some(db.clone())), "ops")
        .await
        .unwrap();
    assert_eq!(
        info.geoip_sha256.as_deref(),
        Some(firebreak_protocol::sha256_hex(&db).as_str())
    );
    // The sealed bundle members download carries the same bytes under the signature.
    let sealed = f.plane.bundle(info.version).await.unwrap();
    let bundle = Bundle::open(&sealed, &f.key.public()).unwrap();
    assert_eq!(&bundle.geoip.as_ref().unwrap().bytes()[..], &db[..]);
    let config = bundle.validate("version 1").unwrap();
    assert_eq!(&config.geoip().unwrap()[..], &db[..]);
    // A document without a database still pushes as before.
    let info = f.plane.push(request(false, None), "ops").await.unwrap();
    assert_eq!(info.geoip_sha256, None);
    // The diff shows the database's change by its hashes.
    let diff = f.plane.diff(1, info.version).await.unwrap();
    assert!(
        diff.starts_with(&format!(
            "# MaxMind database (dns.geoip_file): sha256 {} -> none\n",
            firebreak_protocol::sha256_hex(&db)
        )),
        "{diff}"
    );
}

#[tokio::test]
async fn push_with_garbage_for_a_database_is_refused_naming_the_field() {
    let f = plane("garbage").await;
    let e = refused(&f, request(true, Some(b"not a database at all".to_vec()))).await;
    assert_eq!(e.file, "fleet.toml");
    assert_eq!(e.field, "dns.geoip_file", "{e}");
    assert!(e.line > 0, "located where the document names it: {e}");
    assert!(
        e.message
            .starts_with("geo.mmdb: not a valid MaxMind database"),
        "{e}"
    );
    // A valid database that places nobody (an ASN database, say) is refused as well.
    let asn = MmdbWriter::new(32).insert("10.0.0.0/8", None, None).build();
    let e = refused(&f, request(true, Some(asn))).await;
    assert!(e.message.contains("not usable to place clients"), "{e}");
    // Truncated: the DNS server's whole-file verification refuses it.
    let mut cut = database();
    cut.truncate(cut.len() - 40);
    let e = refused(&f, request(true, Some(cut))).await;
    assert_eq!(e.field, "dns.geoip_file", "{e}");
}

#[tokio::test]
async fn push_with_an_oversize_database_is_refused() {
    let f = plane("oversize").await;
    let big = vec![0u8; firebreak_config::MAX_GEOIP_BYTES as usize + 1];
    let e = refused(&f, request(true, Some(big))).await;
    assert_eq!(e.field, "dns.geoip_file", "{e}");
    assert!(
        e.message.contains(&format!(
            "the limit is {}",
            firebreak_config::MAX_GEOIP_BYTES
        )),
        "{e}"
    );
}

#[tokio::test]
async fn push_naming_a_database_without_sending_it_or_the_reverse_is_refused() {
    let f = plane("absent").await;
    let e = refused(&f, request(true, None)).await;
    assert_eq!(e.field, "dns.geoip_file", "{e}");
    assert!(e.message.contains("`geo.mmdb`, but none came"), "{e}");
    let e = refused(&f, request(false, Some(database()))).await;
    assert_eq!(e.field, "dns.geoip_file", "{e}");
    assert!(e.message.contains("names none"), "{e}");
}
