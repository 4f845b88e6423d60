//! One validation, the same on both sides: the control plane refuses what an edge would
//! refuse, judging the exact artefact edges load (every part of the bundle and the assembled
//! text), before it stores or rolls out a version.

use crate::harness::*;
use firebreak_protocol::bundle::{Bundle, ServiceDocument};
use http::{Method, StatusCode};
use serde_json::json;

fn push_body(doc: &str) -> serde_json::Value {
    json!({"file": "fleet.toml", "document": doc, "message": "m"})
}

/// A document just under the size limit whose services are written without blank lines
/// between them: the assembled form edges load puts one between each, so it is larger than
/// the limit although the pushed text is not.
fn near_limit_document(origin: std::net::SocketAddr) -> String {
    let mut services = String::new();
    for i in 0..800 {
        services.push_str(&format!(
            "[[service]]\nname = \"s{i}\"\nhosts = [\"s{i}.test\"]\norigin = {{ servers = [{{ addr = \"{origin}\" }}] }}\n"
        ));
    }
    let head = "[cache]\nmax_bytes = 67108864\n";
    let limit = firebreak_config::MAX_CONFIG_BYTES as usize;
    let pad = limit - head.len() - services.len() - 400;
    format!("{head}#{}\n{services}", "x".repeat(pad))
}

#[tokio::test]
async fn near_limit_document_is_refused_by_control_not_edge() {
    let dir = temp_dir("near-limit");
    let c = Control::start(&format!("redb:{}", dir.join("s.redb").display()), &dir).await;
    let origin = origin().await;
    let doc = near_limit_document(origin);
    assert!(doc.len() < firebreak_config::MAX_CONFIG_BYTES as usize);
    // What the edge loads is larger than what was pushed.
    let docs = firebreak_protocol::document::split(&doc).unwrap();
    let assembled = firebreak_protocol::document::assemble(&docs.fleet, docs.services.iter());
    assert!(assembled.len() > firebreak_config::MAX_CONFIG_BYTES as usize);

    let (status, body) = c
        .call(Method::POST, "/v1/versions", Some(push_body(&doc)))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let first = &body["errors"][0];
    assert_eq!(first["file"], "fleet.toml (assembled)", "{body}");
    assert!(
        first["message"].as_str().unwrap().contains("the limit is"),
        "{body}"
    );
    let (_, list) = c.call(Method::GET, "/v1/versions", None).await;
    assert_eq!(list, json!([]), "a refused push stored something");
}

/// Seals `bundle` with the control plane's key and stores it as the next version behind the
/// API's back (as an older control plane, a restored backup or an edited store might), then
/// asks the control plane to roll it out.
async fn store_and_deploy(c: &Control, bundle: Bundle) -> (StatusCode, serde_json::Value) {
    let sealed = bundle.seal(&c.key()).unwrap();
    let info = bundle.describe(&sealed);
    assert!(c.store.insert_version(&info, &sealed).await.unwrap());
    c.call(
        Method::POST,
        "/v1/rollouts",
        Some(json!({"version": bundle.version, "message": "test"})),
    )
    .await
}

fn bundle_with(origin: std::net::SocketAddr, service_a: &str) -> Bundle {
    let docs = firebreak_protocol::document::split(&fleet_doc(origin, "v1")).unwrap();
    let mut services = docs.services;
    services[0] = ServiceDocument {
        name: "a".into(),
        document: service_a.to_owned(),
    };
    Bundle {
        version: 1,
        parent: None,
        created_at_ms: 1,
        author: "test".into(),
        message: "hostile".into(),
        fleet: docs.fleet,
        services,
        geoip: None,
    }
}

fn assert_refused(status: StatusCode, body: &serde_json::Value, field: &str, says: &str) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let first = &body["errors"][0];
    assert_eq!(first["file"], "version 1 (service a)", "{body}");
    assert_eq!(first["field"], field, "{body}");
    assert!(first["line"].as_u64().unwrap() > 0, "{body}");
    assert!(first["column"].as_u64().unwrap() > 0, "{body}");
    assert!(first["message"].as_str().unwrap().contains(says), "{body}");
}

#[tokio::test]
async fn service_document_cannot_define_fleet_sections() {
    let dir = temp_dir("svc-fleet-sections");
    let c = Control::start(&format!("redb:{}", dir.join("s.redb").display()), &dir).await;
    let origin = origin().await;
    let doc = format!(
        "[[service]]\nname = \"a\"\nhosts = [\"a.test\"]\n[service.origin]\nservers = [{{ addr = \"{origin}\" }}]\n[limits]\nmax_connections = 10\n"
    );
    let (status, body) = store_and_deploy(&c, bundle_with(origin, &doc)).await;
    assert_refused(status, &body, "limits", "belongs in the fleet document");
    assert!(c.plane.fleet_state().rollout.is_none(), "a rollout started");
}

#[tokio::test]
async fn service_document_cannot_name_another_service() {
    let dir = temp_dir("svc-other-name");
    let c = Control::start(&format!("redb:{}", dir.join("s.redb").display()), &dir).await;
    let origin = origin().await;
    let doc = format!(
        "[[service]]\nname = \"c\"\nhosts = [\"c.test\"]\n[service.origin]\nservers = [{{ addr = \"{origin}\" }}]\n"
    );
    let (status, body) = store_and_deploy(&c, bundle_with(origin, &doc)).await;
    assert_refused(
        status,
        &body,
        "service[0].name",
        "cannot define service `c`",
    );
    assert!(c.plane.fleet_state().rollout.is_none(), "a rollout started");
}

/// `services` services of `rules` `path_regex` rules each, every rule `pattern` with its
/// index in place of `{i}`.
fn regex_document(
    origin: std::net::SocketAddr,
    services: usize,
    rules: usize,
    pattern: &str,
) -> String {
    let mut doc = String::from("[cache]\nmax_bytes = 67108864\n");
    for s in 0..services {
        doc.push_str(&format!(
            "\n[[service]]\nname = \"s{s}\"\nhosts = [\"s{s}.test\"]\n[service.origin]\nservers = [{{ addr = \"{origin}\" }}]\n[service.cache]\nrules = [\n"
        ));
        for r in 0..rules {
            let p = pattern.replace("{i}", &r.to_string());
            doc.push_str(&format!("  {{ path_regex = '{p}', ttl_s = 60 }},\n"));
        }
        doc.push_str("]\n");
    }
    doc
}

#[tokio::test]
async fn huge_regex_rule_set_is_refused_at_push() {
    let dir = temp_dir("huge-regex");
    let c = Control::start(&format!("redb:{}", dir.join("s.redb").display()), &dir).await;
    let origin = origin().await;

    // 4,096 rules: refused on the count, before any is compiled, naming the first rule past
    // the bound.
    let doc = regex_document(origin, 16, 256, "^/r{i}/[a-z]+$");
    let (status, body) = c
        .call(Method::POST, "/v1/versions", Some(push_body(&doc)))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let first = &body["errors"][0];
    let max = firebreak_config::MAX_FLEET_REGEX_RULES;
    assert_eq!(
        first["field"],
        format!("service[{}].cache.rules[0].path_regex", max / 256),
        "{body}"
    );
    assert!(
        first["message"]
            .as_str()
            .unwrap()
            .contains(&format!("has 4096 path_regex rules; the limit is {max}")),
        "{body}"
    );

    // Few rules, each within its own bound, but together too large for one service.
    let heavy = "^/r{i}/[a-z0-9_]{1,40}/(img|css|js)/[a-z0-9_.-]{1,80}\\.(png|jpg|css|js)$";
    let doc = regex_document(origin, 1, 64, heavy);
    let (status, body) = c
        .call(Method::POST, "/v1/versions", Some(push_body(&doc)))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let first = &body["errors"][0];
    assert_eq!(first["field"], "service[0].cache.rules", "{body}");
    assert!(
        first["message"].as_str().unwrap().contains(&format!(
            "exceed {} bytes (the limit per service)",
            firebreak_config::MAX_SERVICE_REGEX_BYTES
        )),
        "{body}"
    );
    assert!(first["line"].as_u64().unwrap() > 0, "{body}");

    // Within the bounds: stored.
    let doc = regex_document(origin, 2, 16, heavy);
    let (status, body) = c
        .call(Method::POST, "/v1/versions", Some(push_body(&doc)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, list) = c.call(Method::GET, "/v1/versions", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}
