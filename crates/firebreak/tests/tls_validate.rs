//! `firebreak config validate` and certificates: an expired one is refused with its place in
//! the file (an edge loading the same file would only warn), a future one is a warning.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_firebreak");

fn pair(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn document((cert, key): &(String, String)) -> String {
    format!(
        "[[service]]\nname = \"a\"\nhosts = [\"a.example\"]\n[service.origin]\nservers = [{{ addr = \"127.0.0.1:9000\" }}]\n[service.tls]\ncert = '''\n{cert}'''\nkey = '''\n{key}'''\n"
    )
}

fn validate(name: &str, text: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("fb-tls-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["config", "validate", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn config_validate_refuses_an_expired_certificate_and_warns_of_a_future_one() {
    let (ok, out) = validate("expired.toml", &document(&pair((2020, 1, 1), (2021, 1, 1))));
    assert!(!ok, "{out}");
    assert!(
        out.contains("expired.toml:7:8: service[0].tls.cert: the certificate (CN=rcgen self signed cert) expired on"),
        "{out}"
    );

    let (ok, out) = validate("future.toml", &document(&pair((2090, 1, 1), (2091, 1, 1))));
    assert!(ok, "{out}");
    assert!(out.contains("warning: "), "{out}");
    assert!(out.contains("is not valid before"), "{out}");
    assert!(out.contains("ok (fleet document)"), "{out}");

    let (ok, out) = validate("fine.toml", &document(&pair((2020, 1, 1), (2090, 1, 1))));
    assert!(ok, "{out}");
    assert!(!out.contains("warning"), "{out}");
}
