use crate::*;

const EXAMPLE: &str = include_str!("../../../examples/firebreak.toml");

fn reject(text: &str) -> ConfigRejected {
    match parse_str("edge.toml", text) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e,
    }
}

fn minimal(extra_service: &str) -> String {
    format!(
        r#"
[[listener]]
addr = "127.0.0.1:8080"

[[service]]
name = "a"
hosts = ["a.example"]
{extra_service}
[service.origin]
servers = [{{ addr = "127.0.0.1:9000" }}]
"#
    )
}

#[test]
fn example_config_is_valid() {
    let c = parse_str("example", EXAMPLE).unwrap();
    assert_eq!(c.services.len(), 1);
    assert_eq!(c.services[0].cache.rules.len(), 2);
    assert_eq!(c.services[0].cache.default_ttl_s, None);
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse_str("m", &minimal("")).unwrap();
    let s = &c.services[0];
    assert!(s.cache.serve_stale_on_origin_failure);
    assert!(
        !s.cache.strip_cdn_cache_control,
        "CDN-Cache-Control is forwarded by default"
    );
    assert!(s.cache.heuristic_freshness);
    assert_eq!(s.cache.heuristic_freshness_max_s, 86_400);
    assert_eq!(s.origin.servers[0].weight, 1);
    assert_eq!(c.cache, CacheConfig::default());
}

#[test]
fn unknown_field_names_file_line_column_and_field() {
    let text = minimal("colour = \"blue\"\n");
    let e = reject(&text);
    let err = &e.errors[0];
    assert_eq!(err.file, "edge.toml");
    assert_eq!(err.line, 8, "{err}");
    assert!(err.message.contains("unknown field `colour`"), "{err}");
    assert!(err.field.starts_with("service[0]"), "{err}");
    assert!(e.to_string().starts_with("edge.toml:8:"), "{e}");
}

#[test]
fn wrong_type_names_the_field_path() {
    let text = minimal("").replace(
        "{ addr = \"127.0.0.1:9000\" }",
        "{ addr = \"127.0.0.1:9000\", weight = \"heavy\" }",
    );
    let e = reject(&text);
    assert_eq!(
        e.errors[0].field, "service[0].origin.servers[0].weight",
        "{e}"
    );
    assert_eq!(e.errors[0].line, 10, "{e}");
    assert!(e.errors[0].message.contains("invalid type"), "{e}");
}

#[test]
fn syntax_error_is_located() {
    let e = reject("[[listener]]\naddr = \n");
    assert_eq!(e.errors[0].line, 2, "{e}");
}

#[test]
fn semantic_error_is_located_by_path() {
    let text = minimal("").replace("127.0.0.1:9000", "127.0.0.1");
    let e = reject(&text);
    assert_eq!(e.errors.len(), 1, "{e}");
    let err = &e.errors[0];
    assert_eq!(err.field, "service[0].origin.servers[0].addr");
    assert_eq!((err.line, err.column), (10, 21), "{err}");
    assert!(err.message.contains("host:port"));
}

#[test]
fn duplicate_host_across_services_is_refused() {
    let mut text = minimal("");
    text.push_str(
        r#"
[[service]]
name = "b"
hosts = ["other.example", "A.example"]
[service.origin]
servers = [{ addr = "127.0.0.1:9001" }]
"#,
    );
    let e = reject(&text);
    let err = &e.errors[0];
    assert_eq!(err.field, "service[1].hosts[1]");
    assert_eq!((err.line, err.column), (14, 27), "{err}");
    assert!(
        err.message.contains("already claimed by service `a`"),
        "{err}"
    );
}

#[test]
fn origin_with_no_address_is_refused() {
    let text = minimal("").replace("[{ addr = \"127.0.0.1:9000\" }]", "[]");
    let e = reject(&text);
    assert_eq!(e.errors[0].field, "service[0].origin.servers");
    assert!(e.errors[0].message.contains("at least 1"), "{e}");
}

#[test]
fn only_backups_is_refused() {
    let text = minimal("").replace(
        "{ addr = \"127.0.0.1:9000\" }",
        "{ addr = \"127.0.0.1:9000\", backup = true }",
    );
    let e = reject(&text);
    assert!(e.errors[0].message.contains("must not be a backup"), "{e}");
}

#[test]
fn oversized_config_is_refused_before_parsing() {
    let mut text = minimal("");
    text.push_str(&"#".repeat(MAX_CONFIG_BYTES as usize));
    let e = reject(&text);
    assert!(e.errors[0].message.contains("limit"), "{e}");
}

#[test]
fn oversized_file_is_refused_before_reading() {
    let dir = std::env::temp_dir().join(format!("fb-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.toml");
    std::fs::write(&path, vec![b'#'; MAX_CONFIG_BYTES as usize + 10]).unwrap();
    let e = load_file(&path).unwrap_err();
    assert!(e.errors[0].file.ends_with("big.toml"));
    assert!(e.errors[0].message.contains("limit"), "{e}");
    let missing = load_file(&dir.join("missing.toml")).unwrap_err();
    assert!(missing.errors[0].message.contains("cannot read"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn too_many_rules_is_refused() {
    let rules: Vec<String> = (0..=MAX_CACHE_RULES)
        .map(|i| format!("{{ path_prefix = \"/p{i}\", bypass = true }}"))
        .collect();
    let text = format!(
        "{}\n[service.cache]\nrules = [{}]\n",
        minimal(""),
        rules.join(", ")
    );
    let e = reject(&text);
    assert_eq!(e.errors[0].field, "service[0].cache.rules");
}

#[test]
fn rule_needs_exactly_one_action() {
    let text = format!(
        "{}\n[service.cache]\nrules = [{{ path_prefix = \"/x\" }}, {{ path_prefix = \"y\", ttl_s = 5 }}]\n",
        minimal("")
    );
    let e = reject(&text);
    assert_eq!(e.errors.len(), 2, "{e}");
    assert_eq!(e.errors[0].field, "service[0].cache.rules[0]");
    assert_eq!(e.errors[1].field, "service[0].cache.rules[1].path_prefix");
}

#[test]
fn header_rules_are_checked() {
    let text = format!(
        "{}\n[[service.response_headers]]\nname = \"bad header\"\nop = \"set\"\nvalue = \"x\"\n\
         [[service.response_headers]]\nname = \"transfer-encoding\"\nop = \"remove\"\n\
         [[service.response_headers]]\nname = \"x-a\"\nop = \"explode\"\n",
        minimal("")
    );
    let e = reject(&text);
    assert!(
        e.errors[0].message.contains("unknown variant `explode`"),
        "{e}"
    );
    let text = text.replace("explode", "add");
    let e = reject(&text);
    let fields: Vec<_> = e.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "service[0].response_headers[0].name",
            "service[0].response_headers[1].name",
            "service[0].response_headers[2]"
        ],
        "{e}"
    );
}

#[test]
fn header_rules_that_would_corrupt_responses_are_refused() {
    for name in [
        "content-encoding",
        "Content-Length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
    ] {
        for op in ["set", "remove"] {
            let text = format!(
                "{}\n[[service.response_headers]]\nname = \"{name}\"\nop = \"{op}\"\n{}",
                minimal(""),
                if op == "set" { "value = \"x\"\n" } else { "" }
            );
            let e = reject(&text);
            assert_eq!(e.errors.len(), 1, "{name} {op}: {e}");
            assert_eq!(
                e.errors[0].field, "service[0].response_headers[0].name",
                "{e}"
            );
            assert!(e.errors[0].message.contains("managed by the proxy"), "{e}");
        }
    }
}

#[test]
fn two_defaults_and_hostless_service_are_refused() {
    let text = r#"
[[listener]]
addr = "127.0.0.1:8080"
[[service]]
name = "a"
default = true
[service.origin]
servers = [{ addr = "o:80" }]
[[service]]
name = "a"
default = true
[service.origin]
servers = [{ addr = "o:80" }]
[[service]]
name = "Bad Name"
[service.origin]
servers = [{ addr = "o:80" }]
"#;
    let e = reject(text);
    let msgs: Vec<_> = e.errors.iter().map(|e| e.to_string()).collect();
    assert!(
        msgs.iter().any(|m| m.contains("only one default")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("already used by service[0]")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("not a valid name")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("at least one host")),
        "{msgs:?}"
    );
}

#[test]
fn missing_listener_is_refused() {
    let text = minimal("").replace("[[listener]]\naddr = \"127.0.0.1:8080\"\n", "");
    let e = reject(&text);
    assert_eq!(e.errors[0].field, "listener");
}

#[test]
fn host_name_validation() {
    use crate::validate::valid_host_name;
    assert!(valid_host_name("example.com"));
    assert!(valid_host_name("[::1]"));
    assert!(!valid_host_name("example.com:80"));
    assert!(!valid_host_name("exa mple.com"));
    assert!(!valid_host_name("a..b"));
    assert!(!valid_host_name(&"a".repeat(300)));
    for bad in [
        "", ".", "a.", ".a", "a..b", "a b", "a/b", "é.com", "[::1", "[x]",
    ] {
        assert!(!valid_host_name(bad), "{bad:?}");
    }
    for good in ["a", "a.b", "a-b_c.D9", "127.0.0.1", "xn--bcher-kva.example"] {
        assert!(valid_host_name(good), "{good:?}");
    }
    assert!(valid_host_name(&"a".repeat(63)));
    assert!(!valid_host_name(&"a".repeat(64)));
    assert!(valid_host_name(&format!(
        "{}.{}",
        "a".repeat(63),
        "b".repeat(63)
    )));
}

mod properties {
    use crate::parse_str;
    use proptest::prelude::*;

    const EXAMPLE: &str = include_str!("../../../examples/firebreak.toml");

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn host_names_are_judged_label_by_label(s in "[a-c0-9._/ -]{0,70}", long in 0usize..3) {
            // The split-by-label definition the one-pass check must agree with.
            let s = if long > 0 { format!("{}{s}", "x".repeat(60 * long)) } else { s };
            let by_labels = !s.is_empty()
                && s.len() <= crate::limits::MAX_HOST_LEN
                && s.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            prop_assert_eq!(crate::validate::valid_host_name(&s), by_labels, "{:?}", s);
        }

        #[test]
        fn arbitrary_text_is_refused_or_accepted_never_a_panic(s in "\\PC{0,400}") {
            if let Err(e) = parse_str("fuzz.toml", &s) {
                prop_assert!(!e.errors.is_empty());
            }
        }

        #[test]
        fn mutated_example_configs_never_panic(pos in 0usize..4000, insert in "[ -~\\n]{0,12}") {
            let mut text = EXAMPLE.to_owned();
            let pos = pos.min(text.len());
            if text.is_char_boundary(pos) {
                text.insert_str(pos, &insert);
            }
            if let Err(e) = parse_str("mutated.toml", &text) {
                for err in &e.errors {
                    prop_assert!(err.line <= text.lines().count() + 1, "{err}");
                }
            }
        }
    }
}

#[test]
fn admin_and_access_log_are_checked() {
    let ok = format!("{}\n[admin]\nlisten = \"127.0.0.1:9080\"\ntoken = \"0123456789abcdef\"\n[access_log]\npath = \"-\"\n", minimal(""));
    let c = parse_str("a.toml", &ok).unwrap();
    assert_eq!(c.admin.as_ref().unwrap().listen.unwrap().port(), 9080);
    let short = ok.replace("0123456789abcdef", "short");
    let e = reject(&short);
    assert_eq!(e.errors[0].field, "admin.token");
    let clash = ok.replace("127.0.0.1:9080", "127.0.0.1:8080");
    assert_eq!(reject(&clash).errors[0].field, "admin.listen");
}

#[test]
fn regex_rules_the_linear_time_engine_cannot_run_are_refused() {
    for (pattern, says) in [
        (r"^/(?=admin)", "look-around"),
        (r"^/(a)\\1", "backreference"),
        (r"^/\\w{1000}{1000}", "size limit"),
    ] {
        let text = format!(
            "{}\n[service.cache]\nrules = [{{ path_regex = \"{pattern}\", bypass = true }}]\n",
            minimal("")
        );
        let e = reject(&text);
        let err = &e.errors[0];
        assert_eq!(err.field, "service[0].cache.rules[0].path_regex", "{e}");
        assert!(err.message.contains("linear-time regex engine"), "{e}");
        assert!(err.message.contains(says), "{pattern}: {e}");
        assert_eq!(err.line, 13, "{e}");
    }
}

#[test]
fn a_rule_has_exactly_one_matcher() {
    let text = format!(
        "{}\n[service.cache]\nrules = [{{ path_prefix = \"/a\", path_regex = \"^/a\", bypass = true }}, {{ bypass = true }}]\n",
        minimal("")
    );
    let e = reject(&text);
    assert_eq!(e.errors.len(), 2, "{e}");
    assert!(e.errors[0].message.contains("exactly one"), "{e}");
    let ok = format!(
        "{}\n[service.cache]\nrules = [{{ path_regex = \"^/img/.*\\\\.png$\", ttl_s = 60 }}]\n",
        minimal("")
    );
    parse_str("ok", &ok).unwrap();
}

#[test]
fn fleet_documents_carry_the_admin_token_only_as_its_hash() {
    let without = minimal("").replace("[[listener]]\naddr = \"127.0.0.1:8080\"\n", "");
    let plain = format!("{without}\n[admin]\ntoken = \"0123456789abcdef\"\n");
    let e = parse_managed_str("fleet.toml", &plain).unwrap_err();
    assert_eq!(e.errors.len(), 1, "{e}");
    assert_eq!(e.errors[0].field, "admin.token", "{e}");
    assert!(e.errors[0].message.contains("token_sha256"), "{e}");
    assert!(e.errors[0].line > 1, "{e}");
    let both = format!(
        "{without}\n[admin]\ntoken = \"0123456789abcdef\"\ntoken_sha256 = \"{}\"\n",
        "0".repeat(64)
    );
    assert_eq!(reject_managed(&both).errors[0].field, "admin.token_sha256");
    let bad = format!("{without}\n[admin]\ntoken_sha256 = \"abc\"\n");
    assert_eq!(reject_managed(&bad).errors[0].field, "admin.token_sha256");
    let none = format!("{without}\n[admin]\n");
    assert_eq!(reject_managed(&none).errors[0].field, "admin");
    // A standalone edge keeps its own file: a plain token stays allowed there.
    let standalone = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:9080\"\ntoken = \"0123456789abcdef\"\n",
        minimal("")
    );
    parse_str("edge.toml", &standalone).unwrap();
}

fn reject_managed(text: &str) -> ConfigRejected {
    parse_managed_str("fleet.toml", text).unwrap_err()
}

#[test]
fn fleet_documents_must_not_name_per_edge_addresses() {
    let e = parse_managed_str("fleet.toml", &minimal("")).unwrap_err();
    assert_eq!(e.errors[0].field, "listener", "{e}");
    assert!(e.errors[0].message.contains("set per edge"), "{e}");
    let without = minimal("").replace("[[listener]]\naddr = \"127.0.0.1:8080\"\n", "");
    let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let c = parse_managed_str(
        "fleet.toml",
        &format!("[admin]\ntoken_sha256 = \"{hash}\"\n{without}"),
    )
    .unwrap();
    let local = c.localize(
        &["127.0.0.1:1".parse().unwrap()],
        Some("127.0.0.1:2".parse().unwrap()),
        || unreachable!(),
    );
    assert_eq!(local.listeners.len(), 1);
    assert_eq!(
        local.admin.as_ref().unwrap().token_sha256.as_deref(),
        Some(hash)
    );
    assert_eq!(local.admin.as_ref().unwrap().token, None);
    let e = parse_managed_str(
        "f",
        &format!("[admin]\nlisten = \"127.0.0.1:1\"\ntoken_sha256 = \"{hash}\"\n{without}"),
    )
    .unwrap_err();
    assert_eq!(e.errors[0].field, "admin.listen", "{e}");
    assert_eq!(e.errors[0].line, 2, "{e}");
}

#[test]
fn forwarding_settings_are_checked() {
    let ok = format!(
        "[forwarding]\ntrusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.1\"]\n{}\
         [service.forwarding]\nstrip_request_headers = [\"x-app-override\"]\n\
         cache_key_headers = [\"x-device\"]\n",
        minimal("")
    );
    let c = parse_str("edge.toml", &ok).unwrap();
    assert_eq!(c.get().forwarding.trusted_proxies.len(), 3);
    assert_eq!(
        c.get().services[0].forwarding.cache_key_headers,
        ["x-device"]
    );
    let defaults = parse_str("edge.toml", &minimal("")).unwrap();
    assert!(defaults.get().forwarding.trusted_proxies.is_empty());

    let bad = format!(
        "[forwarding]\ntrusted_proxies = [\"10.0.0.0/40\"]\n{}\
         [service.forwarding]\nstrip_request_headers = [\"bad header\"]\n\
         cache_key_headers = [\"host\"]\n",
        minimal("")
    );
    let e = reject(&bad);
    let fields: Vec<_> = e.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "forwarding.trusted_proxies[0]",
            "service[0].forwarding.strip_request_headers[0]",
            "service[0].forwarding.cache_key_headers[0]"
        ],
        "{e}"
    );
    let many = (0..9).map(|i| format!("\"x-{i}\"")).collect::<Vec<_>>();
    let text = format!(
        "{}[service.forwarding]\ncache_key_headers = [{}]\n",
        minimal(""),
        many.join(", ")
    );
    let e = reject(&text);
    assert!(e.errors[0].message.contains("at most 8"), "{e}");
    let e = reject(&format!("[forwarding]\nunknown = 1\n{}", minimal("")));
    assert!(e.errors[0].field.contains("unknown"), "{e}");
}

/// RFC 9111 §4.2.2 heuristic freshness: bounded cap, off per service.
#[test]
fn heuristic_freshness_cap_is_bounded() {
    for (v, ok) in [
        ("0", false),
        ("1", true),
        ("31536000", true),
        ("31536001", false),
    ] {
        let text = format!(
            "{}\n[service.cache]\nheuristic_freshness_max_s = {v}\n",
            minimal("")
        );
        match parse_str("h", &text) {
            Ok(c) => {
                assert!(ok, "{v} accepted");
                assert_eq!(c.services[0].cache.heuristic_freshness_max_s.to_string(), v);
            }
            Err(e) => {
                assert!(!ok, "{v} refused: {e}");
                assert_eq!(
                    e.errors[0].field, "service[0].cache.heuristic_freshness_max_s",
                    "{e}"
                );
            }
        }
    }
    let off = format!(
        "{}\n[service.cache]\nheuristic_freshness = false\n",
        minimal("")
    );
    assert!(
        !parse_str("off", &off).unwrap().services[0]
            .cache
            .heuristic_freshness
    );
}

/// `service.cache.slice_bytes`: off by default; 64 KiB to 64 MiB and at most
/// `cache.max_object_bytes`, each refusal naming the field.
#[test]
fn slice_bytes_is_off_by_default_and_bounded() {
    assert_eq!(
        parse_str("m", &minimal("")).unwrap().services[0]
            .cache
            .slice_bytes,
        None
    );
    for (v, max_object, ok) in [
        ("65535", "", false),
        ("65536", "", true),
        ("1048576", "", true),
        ("67108864", "", true),
        ("67108865", "", false),
        ("0", "", false),
        ("2097152", "[cache]\nmax_object_bytes = 1048576\n", false),
    ] {
        let text = format!(
            "{max_object}{}\n[service.cache]\nslice_bytes = {v}\n",
            minimal("")
        );
        match parse_str("s", &text) {
            Ok(c) => {
                assert!(ok, "{v} accepted");
                assert_eq!(
                    c.services[0].cache.slice_bytes.map(|n| n.to_string()),
                    Some(v.to_owned())
                );
            }
            Err(e) => {
                assert!(!ok, "{v} refused: {e}");
                assert_eq!(e.errors[0].field, "service[0].cache.slice_bytes", "{e}");
            }
        }
    }
}

#[test]
fn connection_workers_are_bounded() {
    let text = |n: usize| {
        format!(
            "[[listener]]\naddr = \"127.0.0.1:8080\"\n\n[limits]\nconnection_workers = {n}\n\n\
             [[service]]\nname = \"a\"\nhosts = [\"a.example\"]\n[service.origin]\n\
             servers = [{{ addr = \"127.0.0.1:9000\" }}]\n"
        )
    };
    let e = parse_str("edge.toml", &text(1025)).unwrap_err();
    assert_eq!(e.errors[0].field, "limits.connection_workers", "{e}");
    assert!(e.to_string().contains("edge.toml"), "{e}");
    assert_eq!(
        parse_str("edge.toml", &text(3))
            .unwrap()
            .limits
            .connection_workers,
        3
    );
    // 0 (the default) is one per core, decided when the edge starts.
    assert_eq!(
        parse_str("edge.toml", &text(0))
            .unwrap()
            .limits
            .connection_workers,
        0
    );
}

/// `limits.clients.send_queue_bytes`: 128 KiB by default; 0 is the kernel's setting; else
/// between 16 KiB and 64 MiB, refused with the field named.
#[test]
fn send_queue_bytes_is_the_kernels_or_bounded() {
    let text = |n: u64| {
        format!(
            "[[listener]]\naddr = \"127.0.0.1:8080\"\n\n[limits.clients]\nsend_queue_bytes = {n}\n\n\
             [[service]]\nname = \"a\"\nhosts = [\"a.example\"]\n[service.origin]\n\
             servers = [{{ addr = \"127.0.0.1:9000\" }}]\n"
        )
    };
    let bytes = |n: u64| {
        parse_str("edge.toml", &text(n))
            .map(|c| c.limits.clients.send_queue_bytes)
            .map_err(|e| e.errors[0].field.clone())
    };
    assert_eq!(
        crate::LimitsConfig::default().clients.send_queue_bytes,
        128 * 1024
    );
    assert_eq!(bytes(0), Ok(0));
    assert_eq!(bytes(16 * 1024), Ok(16 * 1024));
    assert_eq!(bytes(64 << 20), Ok(64 << 20));
    for bad in [1, 16 * 1024 - 1, (64 << 20) + 1] {
        assert_eq!(
            bytes(bad),
            Err("limits.clients.send_queue_bytes".to_string()),
            "{bad}"
        );
    }
    // Not a u32: refused by the parser, still naming the field.
    let e = parse_str("edge.toml", &text(1 << 40)).unwrap_err();
    assert!(e.to_string().contains("send_queue_bytes"), "{e}");
}

/// `cache.zero_copy_min_bytes`: 16 KiB by default; 0 turns it off; between, a page at least.
#[test]
fn zero_copy_min_bytes_is_off_or_a_page_at_least() {
    assert_eq!(
        parse_str("m", &minimal(""))
            .unwrap()
            .cache
            .zero_copy_min_bytes,
        16384
    );
    for (v, ok) in [("0", true), ("1", false), ("4095", false), ("4096", true)] {
        let text = format!("[cache]\nzero_copy_min_bytes = {v}\n{}", minimal(""));
        match parse_str("edge.toml", &text) {
            Ok(c) => {
                assert!(ok, "{v} accepted");
                assert_eq!(c.cache.zero_copy_min_bytes.to_string(), v);
            }
            Err(e) => {
                assert!(!ok, "{v} refused: {e}");
                assert_eq!(e.errors[0].field, "cache.zero_copy_min_bytes", "{e}");
                assert_eq!(e.errors[0].line, 2, "{e}");
            }
        }
    }
}
