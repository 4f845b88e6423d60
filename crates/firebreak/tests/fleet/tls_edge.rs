//! An edge under the control plane serving HTTPS on its `--listen-tls` listener, with the
//! certificate that came with the service's configuration.

use crate::harness::*;
use firebreak_edge::agent::{Agent, AgentOptions};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

struct Site {
    roots: rustls::RootCertStore,
    cert: String,
    key: String,
}

/// A CA and a certificate for `a.test` signed by it.
fn site() -> Site {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    Site {
        roots,
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

async fn tls_edge(control: &Control, data_dir: &Path, id: &str) -> Agent {
    let mut opts = AgentOptions::new(
        control.url.clone(),
        EDGE.into(),
        id.into(),
        data_dir.to_owned(),
        control.public(),
    );
    opts.listen = vec!["127.0.0.1:0".parse().unwrap()];
    opts.listen_tls = vec!["127.0.0.1:0".parse().unwrap()];
    opts.admin = Some("127.0.0.1:0".parse().unwrap());
    opts.heartbeat = Duration::from_millis(500);
    opts.health_interval = Duration::from_millis(500);
    tokio::time::timeout(Duration::from_secs(20), Agent::start(opts))
        .await
        .expect("edge did not start within 20 s")
        .unwrap()
}

/// `GET /path` over HTTPS (SNI and Host `host`), HTTP/1.1; the whole answer as text.
async fn https_get(
    addr: SocketAddr,
    roots: rustls::RootCertStore,
    host: &str,
    path: &str,
) -> String {
    let config = Arc::new(firebreak_protocol::tls::client_config(roots).unwrap());
    let (host, path) = (host.to_owned(), path.to_owned());
    tokio::task::spawn_blocking(move || {
        let name = rustls::pki_types::ServerName::try_from(host.clone()).unwrap();
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        let sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut out = Vec::new();
        // The edge closes after the answer (`Connection: close`); an abrupt end is fine too.
        let _ = tls.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_under_the_control_plane_serves_https_on_its_tls_listener() {
    let dir = temp_dir("tls-edge");
    let origin = origin().await;
    let c = Control::start(
        &format!("redb:{}", dir.join("control.redb").display()),
        &dir,
    )
    .await;
    let site = site();
    let doc = fleet_doc(origin, "v1").replacen(
        "[service.origin]",
        &format!(
            "[service.tls]\ncert = '''\n{}'''\nkey = '''\n{}'''\n[service.origin]",
            site.cert, site.key
        ),
        1,
    );
    assert_eq!(c.release(&doc).await, 1);
    let e = tls_edge(&c, &dir.join("e1"), "e1").await;
    wait_applied(&e, 1).await;
    let urls = e.member.local_urls();
    assert_eq!(urls.len(), 2, "{urls:?}");
    assert!(urls[0].starts_with("http://"), "{urls:?}");
    assert!(urls[1].starts_with("https://"), "{urls:?}");
    let tls_addr = e.member.local_addrs()[1];
    let answer = https_get(tls_addr, site.roots.clone(), "a.test", "/hello").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("origin says /hello"), "{answer}");
    // The cleartext listener serves the same services.
    assert_eq!(through(addr(&e), "a.test", "/hello").await.0, 200);
}
