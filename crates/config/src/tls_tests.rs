use super::*;
use crate::{load_file, parse_managed_str, parse_str, ConfigRejected};
use rcgen::{date_time_ymd, CertificateParams, DnType, KeyPair};

struct Pair {
    cert: String,
    key: String,
}

fn pair_with(names: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> Pair {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, names.first().copied().unwrap_or("none"));
    edit(&mut params);
    let cert = params.self_signed(&key).unwrap();
    Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn pair(names: &[&str]) -> Pair {
    pair_with(names, |_| {})
}

fn tls_table(p: &Pair, extra: &str) -> String {
    format!(
        "[service.tls]\ncert = '''\n{}'''\nkey = '''\n{}'''\n{extra}",
        p.cert, p.key
    )
}

/// A standalone file with a TLS listener and one service per `(name, hosts, tls table)`.
fn config(services: &[(&str, &[&str], String)]) -> String {
    let mut out = String::from("[[listener]]\naddr = \"127.0.0.1:8443\"\ntls = true\n");
    for (name, hosts, tls) in services {
        let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
        out.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nhosts = [{}]\n[service.origin]\nservers = [{{ addr = \"127.0.0.1:9000\" }}]\n{tls}",
            hosts.join(", ")
        ));
    }
    out
}

fn reject(text: &str) -> ConfigRejected {
    match parse_str("edge.toml", text) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e,
    }
}

/// The line of `text` (1-based) holding `needle` first.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn a_certificate_and_matching_key_are_accepted_and_the_key_is_never_printed() {
    let p = pair(&["a.example", "*.b.example"]);
    let text = config(&[(
        "a",
        &["a.example", "x.b.example"],
        tls_table(&p, "default = true\n"),
    )]);
    let c = parse_str("edge.toml", &text).unwrap();
    assert!(c.listeners[0].tls);
    let tls = c.services[0].tls.as_ref().unwrap();
    assert!(tls.default);
    assert_eq!(tls.cert_pem(), Some(p.cert.as_str()));
    assert_eq!(tls.key_pem().unwrap().expose(), p.key);
    let debug = format!("{c:?}");
    let key_body = p.key.lines().nth(1).unwrap();
    assert!(!debug.contains(key_body), "the key leaked into Debug");
    assert!(debug.contains("<redacted>"));
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused_at_the_key() {
    let p = pair(&["a.example"]);
    let other = pair(&["a.example"]);
    let mixed = Pair {
        cert: p.cert.clone(),
        key: other.key.clone(),
    };
    let text = config(&[("a", &["a.example"], tls_table(&mixed, ""))]);
    let e = reject(&text);
    assert_eq!(e.errors.len(), 1, "{e}");
    let err = &e.errors[0];
    assert_eq!(err.field, "service[0].tls.key");
    assert_eq!(err.line, line_of(&text, "key = '''"), "{e}");
    assert!(
        err.message
            .contains("private key does not match the certificate"),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with(&format!("edge.toml:{}:", err.line)),
        "{e}"
    );
    let key_body = other.key.lines().nth(1).unwrap();
    assert!(!e.to_string().contains(key_body));
}

#[test]
fn a_certificate_whose_names_do_not_cover_a_host_is_refused() {
    let p = pair(&["a.example", "*.w.example"]);
    // `deep.x.w.example` is two labels below the wildcard; `w.example` is not covered by it.
    let text = config(&[(
        "a",
        &[
            "a.example",
            "c.example",
            "x.w.example",
            "deep.x.w.example",
            "w.example",
        ],
        tls_table(&p, ""),
    )]);
    let e = reject(&text);
    let msgs: Vec<String> = e.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(e.errors.len(), 3, "{e}");
    for (err, host) in e
        .errors
        .iter()
        .zip(["c.example", "deep.x.w.example", "w.example"])
    {
        assert_eq!(err.field, "service[0].tls.cert");
        assert_eq!(err.line, line_of(&text, "cert = '''"));
        assert!(
            err.message
                .contains(&format!("does not cover host `{host}`")),
            "{msgs:?}"
        );
        assert!(err.message.contains("a.example, *.w.example"), "{msgs:?}");
    }
}

#[test]
fn wildcard_hosts_route_and_need_a_wildcard_name() {
    // A wildcard host is a routing host too (no TLS needed).
    let plain = config(&[("a", &["*.a.example"], String::new())]).replace("tls = true\n", "");
    let c = parse_str("edge.toml", &plain).unwrap();
    assert_eq!(c.services[0].hosts, ["*.a.example"]);

    for bad in [
        "*.*.a.example",
        "a.*.example",
        "*",
        "*.",
        "*a.example",
        "*.[::1]",
    ] {
        let text = config(&[("a", &[bad], String::new())]).replace("tls = true\n", "");
        let e = reject(&text);
        assert_eq!(e.errors[0].field, "service[0].hosts[0]", "{bad}: {e}");
    }

    // The host `*.a.example` is covered by the name `*.a.example` only.
    let exact = pair(&["x.a.example"]);
    let e = reject(&config(&[("a", &["*.a.example"], tls_table(&exact, ""))]));
    assert!(
        e.errors[0]
            .message
            .contains("a wildcard host needs the same wildcard name"),
        "{e}"
    );
    let wild = pair(&["*.a.example"]);
    parse_str(
        "edge.toml",
        &config(&[("a", &["*.a.example", "x.a.example"], tls_table(&wild, ""))]),
    )
    .unwrap();
}

#[test]
fn two_default_certificates_are_refused() {
    let a = pair(&["a.example"]);
    let b = pair(&["b.example"]);
    let text = config(&[
        ("a", &["a.example"], tls_table(&a, "default = true\n")),
        ("b", &["b.example"], tls_table(&b, "default = true\n")),
    ]);
    let e = reject(&text);
    assert_eq!(e.errors.len(), 1, "{e}");
    assert_eq!(e.errors[0].field, "service[1].tls.default");
    let second = text.rfind("default = true").unwrap();
    assert_eq!(e.errors[0].line, text[..second].lines().count() + 1, "{e}");
    assert!(e.errors[0].message.contains("service[0]"), "{e}");
}

#[test]
fn files_are_refused_in_a_fleet_document() {
    let p = pair(&["a.example"]);
    let text = "[[service]]\nname = \"a\"\nhosts = [\"a.example\"]\n[service.origin]\nservers = [{ addr = \"127.0.0.1:9000\" }]\n[service.tls]\ncert_file = \"site.pem\"\nkey_file = \"site.key\"\n";
    let e = parse_managed_str("fleet.toml", text).unwrap_err();
    let fields: Vec<&str> = e.errors.iter().map(|e| e.field.as_str()).collect();
    assert!(fields.contains(&"service[0].tls.cert_file"), "{e}");
    assert!(fields.contains(&"service[0].tls.key_file"), "{e}");
    let err = e
        .errors
        .iter()
        .find(|e| e.field == "service[0].tls.cert_file")
        .unwrap();
    assert_eq!(err.line, 7);
    assert!(err.message.contains("files do not"), "{e}");

    // Inline PEM is fine in a fleet document.
    let inline = config(&[("a", &["a.example"], tls_table(&p, ""))])
        .replace("[[listener]]\naddr = \"127.0.0.1:8443\"\ntls = true\n", "");
    parse_managed_str("fleet.toml", &inline).unwrap();
}

#[test]
fn key_sha256_is_for_fleet_documents_only_and_skips_the_key_match() {
    let p = pair(&["a.example"]);
    let hash = "ab".repeat(32);
    let tls = format!(
        "[service.tls]\ncert = '''\n{}'''\nkey_sha256 = \"{hash}\"\n",
        p.cert
    );
    let standalone = config(&[("a", &["a.example"], tls.clone())]);
    let e = reject(&standalone);
    assert_eq!(e.errors[0].field, "service[0].tls.key_sha256", "{e}");
    assert_eq!(e.errors[0].line, line_of(&standalone, "key_sha256"), "{e}");

    let fleet = standalone.replace("[[listener]]\naddr = \"127.0.0.1:8443\"\ntls = true\n", "");
    let c = parse_managed_str("fleet.toml", &fleet).unwrap();
    assert!(c.services[0].tls.as_ref().unwrap().key_pem().is_none());

    let bad = fleet.replace(&hash, "not-hex");
    let e = parse_managed_str("fleet.toml", &bad).unwrap_err();
    assert_eq!(e.errors[0].field, "service[0].tls.key_sha256", "{e}");

    let both = fleet.replace(
        "key_sha256",
        &format!("key = '''\n{}'''\nkey_sha256", p.key),
    );
    let e = parse_managed_str("fleet.toml", &both).unwrap_err();
    assert!(e.to_string().contains("give one of key"), "{e}");
}

#[test]
fn bad_pem_is_refused_without_quoting_the_key() {
    let p = pair(&["a.example"]);
    let bad_cert = Pair {
        cert: "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n".into(),
        key: p.key.clone(),
    };
    let text = config(&[("a", &["a.example"], tls_table(&bad_cert, ""))]);
    let e = reject(&text);
    assert_eq!(e.errors[0].field, "service[0].tls.cert", "{e}");
    assert_eq!(e.errors[0].line, line_of(&text, "cert = '''"));
    assert!(
        e.errors[0].message.contains("not a PEM certificate chain"),
        "{e}"
    );

    let no_block = Pair {
        cert: "hello\n".into(),
        key: p.key.clone(),
    };
    let e = reject(&config(&[("a", &["a.example"], tls_table(&no_block, ""))]));
    assert!(e.errors[0].message.contains("no CERTIFICATE block"), "{e}");

    let secret_line = "c2VjcmV0IGtleSBtYXRlcmlhbCBkbyBub3QgcHJpbnQ=";
    let bad_key = Pair {
        cert: p.cert.clone(),
        key: format!("-----BEGIN PRIVATE KEY-----\n{secret_line}\n-----END PRIVATE KEY-----\n"),
    };
    let text = config(&[("a", &["a.example"], tls_table(&bad_key, ""))]);
    let e = reject(&text);
    assert_eq!(e.errors[0].field, "service[0].tls.key", "{e}");
    assert_eq!(e.errors[0].line, line_of(&text, "key = '''"));
    assert!(!e.to_string().contains(secret_line), "{e}");
    assert!(
        e.errors[0].message.contains("not usable")
            || e.errors[0].message.contains("not supported")
            || e.errors[0].message.contains("not a PEM private key"),
        "{e}"
    );

    // A certificate where the key belongs.
    let swapped = Pair {
        cert: p.cert.clone(),
        key: p.cert.clone(),
    };
    let e = reject(&config(&[("a", &["a.example"], tls_table(&swapped, ""))]));
    assert!(e.errors[0].message.contains("not a PEM private key"), "{e}");
}

#[test]
fn oversize_pem_is_refused() {
    let p = pair(&["a.example"]);
    let mut chain = String::new();
    while chain.len() <= MAX_CERT_CHAIN_PEM_BYTES {
        chain.push_str(&p.cert);
    }
    let big = Pair {
        cert: chain,
        key: p.key.clone(),
    };
    let e = reject(&config(&[("a", &["a.example"], tls_table(&big, ""))]));
    assert_eq!(e.errors[0].field, "service[0].tls.cert", "{e}");
    assert!(e.errors[0].message.contains("the limit is 65536"), "{e}");

    let big_key = Pair {
        cert: p.cert.clone(),
        key: format!("{}{}", p.key, "#".repeat(MAX_KEY_PEM_BYTES)),
    };
    let e = reject(&config(&[("a", &["a.example"], tls_table(&big_key, ""))]));
    assert_eq!(e.errors[0].field, "service[0].tls.key", "{e}");
    assert!(e.errors[0].message.contains("the limit is 16384"), "{e}");

    // A key file over the bound is refused before it is read.
    let dir = scratch("oversize");
    std::fs::write(dir.join("site.pem"), &p.cert).unwrap();
    std::fs::write(dir.join("site.key"), vec![b'#'; MAX_KEY_PEM_BYTES + 1]).unwrap();
    let text = config(&[(
        "a",
        &["a.example"],
        "[service.tls]\ncert_file = \"site.pem\"\nkey_file = \"site.key\"\n".into(),
    )]);
    std::fs::write(dir.join("edge.toml"), &text).unwrap();
    let e = load_file(&dir.join("edge.toml")).unwrap_err();
    assert_eq!(e.errors[0].field, "service[0].tls.key_file", "{e}");
    assert!(e.errors[0].message.contains("the limit is 16384"), "{e}");
    let _ = std::fs::remove_dir_all(&dir); // kept when the test fails
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fb-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    dir
}

#[test]
fn files_are_read_relative_to_the_config_file() {
    let p = pair(&["a.example"]);
    let dir = scratch("relative");
    std::fs::write(dir.join("certs/site.pem"), &p.cert).unwrap();
    std::fs::write(dir.join("certs/site.key"), &p.key).unwrap();
    let text = config(&[(
        "a",
        &["a.example"],
        "[service.tls]\ncert_file = \"certs/site.pem\"\nkey_file = \"certs/site.key\"\n".into(),
    )]);
    std::fs::write(dir.join("edge.toml"), &text).unwrap();
    let c = load_file(&dir.join("edge.toml")).unwrap();
    let tls = c.services[0].tls.as_ref().unwrap();
    assert_eq!(tls.cert_pem(), Some(p.cert.as_str()));
    assert_eq!(tls.key_pem().unwrap().expose(), p.key);

    std::fs::remove_file(dir.join("certs/site.key")).unwrap();
    let e = load_file(&dir.join("edge.toml")).unwrap_err();
    assert_eq!(e.errors[0].field, "service[0].tls.key_file", "{e}");
    assert_eq!(e.errors[0].line, line_of(&text, "key_file"), "{e}");
    assert!(e.errors[0].message.contains("cannot read"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tls_listener_needs_a_certificate_and_a_tls_table_needs_its_parts() {
    let text = config(&[("a", &["a.example"], String::new())]);
    let e = reject(&text);
    assert_eq!(e.errors[0].field, "listener[0].tls", "{e}");
    assert_eq!(e.errors[0].line, 3, "{e}");

    let p = pair(&["a.example"]);
    let no_key = format!("[service.tls]\ncert = '''\n{}'''\n", p.cert);
    let e = reject(&config(&[("a", &["a.example"], no_key)]));
    assert!(e.to_string().contains("needs the private key"), "{e}");

    let both = format!("{}cert_file = \"x.pem\"\n", tls_table(&p, ""));
    let e = reject(&config(&[("a", &["a.example"], both)]));
    assert!(
        e.errors
            .iter()
            .any(|e| e.message.contains("give cert or cert_file, not both")),
        "{e}"
    );
}

#[test]
fn an_expired_certificate_loads_but_check_validity_refuses_it() {
    let expired = pair_with(&["a.example"], |p| {
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2021, 1, 1);
    });
    let future = pair_with(&["b.example"], |p| {
        p.not_before = date_time_ymd(2090, 1, 1);
        p.not_after = date_time_ymd(2091, 1, 1);
    });
    let fine = pair(&["c.example"]);
    let text = config(&[
        ("a", &["a.example"], tls_table(&expired, "")),
        ("b", &["b.example"], tls_table(&future, "")),
        ("c", &["c.example"], tls_table(&fine, "")),
    ]);
    let c = parse_str("edge.toml", &text).unwrap();
    let problems = check_validity(&c, SystemTime::now());
    assert_eq!(problems.len(), 2, "{problems:?}");
    let err = &problems[0];
    assert_eq!(err.severity, Severity::Error);
    assert_eq!(err.service, "a");
    assert_eq!(err.field, "service[0].tls.cert");
    assert!(err.message.contains("expired on"), "{err}");
    let located = err.located("edge.toml", &text);
    assert_eq!(located.line, line_of(&text, "cert = '''"));
    assert!(
        located.to_string().starts_with(&format!(
            "edge.toml:{}:8: service[0].tls.cert: the certificate (CN=a.example) expired on",
            located.line
        )),
        "{located}"
    );
    assert_eq!(problems[1].severity, Severity::Warning);
    assert_eq!(problems[1].service, "b");
    assert!(
        problems[1].message.contains("not valid before"),
        "{}",
        problems[1]
    );
    let names = c.expired_certificates(SystemTime::now());
    assert_eq!(names.len(), 1);
    assert_eq!(&*names[0], "a");
}

#[test]
fn inspect_describes_the_leaf() {
    let p = pair_with(&["a.example", "*.b.example", "127.0.0.1"], |p| {
        p.not_before = date_time_ymd(2024, 1, 1);
        p.not_after = date_time_ymd(2030, 1, 1);
    });
    let info = inspect(&p.cert).unwrap();
    assert_eq!(info.subject, "CN=a.example");
    assert_eq!(info.issuer, "CN=a.example");
    assert_eq!(info.sans, ["a.example", "*.b.example", "127.0.0.1"]);
    assert_eq!(info.not_before, 1_704_067_200);
    assert_eq!(info.not_after, 1_893_456_000);
    let then = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_893_456_000 - 10);
    assert_eq!(info.expires_in(then), 10);
    assert!(inspect("garbage").is_err());
}

#[test]
fn with_tls_listeners_adds_tls_listeners_to_a_localised_config() {
    let p = pair(&["a.example"]);
    let fleet = config(&[("a", &["a.example"], tls_table(&p, ""))])
        .replace("[[listener]]\naddr = \"127.0.0.1:8443\"\ntls = true\n", "");
    let c = parse_managed_str("fleet.toml", &fleet)
        .unwrap()
        .localize(&["127.0.0.1:80".parse().unwrap()], None, String::new)
        .with_tls_listeners(&["127.0.0.1:443".parse().unwrap()]);
    assert_eq!(c.listeners.len(), 2);
    assert!(!c.listeners[0].tls);
    assert!(c.listeners[1].tls);
}
