//! Turning a verified bundle into the configuration an edge runs, one service at a time.
//!
//! The whole new version is tried first. If it does not load, each service is tried on its
//! own with the new fleet document: services that load take their new document, services
//! that do not keep the document they had (or stay absent if they are new), and each such
//! service is reported. One tenant's bad document therefore never blocks the others. If the
//! fleet document itself does not load, the version is refused whole and nothing changes.
//! Nothing ever falls back to an empty or partial fleet: a result without services is refused.

use super::disk::{AppliedRecord, ServicePin};
use firebreak_config::{parse_managed_str, ValidConfig};
use firebreak_protocol::api::ServiceFailure;
use firebreak_protocol::binary::Binary;
use firebreak_protocol::bundle::{carry_geoip, Bundle, ServiceDocument};
use firebreak_protocol::document::assemble;

/// What an edge runs: the fleet document of `version`, and per service the version and
/// document it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The version applied.
    pub version: u64,
    /// The target sequence number it was applied for.
    pub seq: u64,
    /// The fleet document (of `version`).
    pub fleet: String,
    /// Each service with the version its document comes from.
    pub services: Vec<(u64, ServiceDocument)>,
    /// The MaxMind database of `version` (it goes with the fleet document's
    /// `dns.geoip_file`), shared, never copied.
    pub geoip: Option<Binary>,
}

impl Applied {
    /// The record kept on disk.
    pub fn record(&self) -> AppliedRecord {
        AppliedRecord {
            version: self.version,
            seq: self.seq,
            services: self
                .services
                .iter()
                .map(|(v, s)| ServicePin {
                    name: s.name.clone(),
                    version: *v,
                })
                .collect(),
        }
    }

    /// Versions whose bundles this needs on disk to be rebuilt.
    pub fn pinned(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.services.iter().map(|(v, _)| *v).collect();
        v.push(self.version);
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Validates the assembled text; the configuration carries the version's MaxMind
    /// database ([`ValidConfig::geoip`]) when the fleet document names one (and is refused
    /// when the two disagree, as the control plane refuses such a push).
    pub fn config(&self) -> Result<ValidConfig, String> {
        let text = assemble(&self.fleet, self.services.iter().map(|(_, s)| s));
        let file = format!("version {}", self.version);
        let config = parse_managed_str(&file, &text).map_err(|e| e.to_string())?;
        carry_geoip(&file, &text, config, self.geoip.as_ref()).map_err(|e| e.to_string())
    }
}

/// The result of composing a bundle.
pub struct Composed {
    /// What will run.
    pub applied: Applied,
    /// Its configuration, validated.
    pub config: ValidConfig,
    /// Services that kept an older document or were left out.
    pub failures: Vec<ServiceFailure>,
}

/// Composes `bundle` (already verified) over what runs now.
pub fn compose(bundle: &Bundle, seq: u64, current: Option<&Applied>) -> Result<Composed, String> {
    // Each part holds only what it is for (the same check the control plane ran).
    bundle
        .check_documents(&format!("version {}", bundle.version))
        .map_err(|e| e.to_string())?;
    let whole = Applied {
        version: bundle.version,
        seq,
        fleet: bundle.fleet.clone(),
        services: bundle
            .services
            .iter()
            .map(|s| (bundle.version, s.clone()))
            .collect(),
        geoip: bundle.geoip.clone(),
    };
    let first_error = match whole.config() {
        Ok(config) => {
            return Ok(Composed {
                applied: whole,
                config,
                failures: Vec::new(),
            })
        }
        Err(e) => e,
    };
    let mut services = Vec::with_capacity(bundle.services.len());
    let mut failures = Vec::new();
    for s in &bundle.services {
        let alone = assemble(&bundle.fleet, std::iter::once(s));
        let file = format!("version {} service {}", bundle.version, s.name);
        match parse_managed_str(&file, &alone) {
            Ok(_) => services.push((bundle.version, s.clone())),
            Err(e) => {
                let kept = current.and_then(|c| c.services.iter().find(|(_, d)| d.name == s.name));
                failures.push(ServiceFailure {
                    service: s.name.clone(),
                    error: e.to_string(),
                    kept_version: kept.map(|(v, _)| *v),
                });
                if let Some(kept) = kept {
                    services.push(kept.clone());
                }
            }
        }
    }
    if failures.is_empty() || services.is_empty() {
        // Every service loads alone but not together (a cross-service conflict), or nothing
        // would be left: refuse the version whole.
        return Err(first_error);
    }
    let applied = Applied {
        version: bundle.version,
        seq,
        fleet: bundle.fleet.clone(),
        services,
        geoip: bundle.geoip.clone(),
    };
    let config = applied.config().map_err(|_| first_error)?;
    Ok(Composed {
        applied,
        config,
        failures,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn service(name: &str, port: u16) -> ServiceDocument {
        ServiceDocument {
            name: name.into(),
            document: format!(
                "[[service]]\nname = \"{name}\"\nhosts = [\"{name}.example\"]\n[service.origin]\nservers = [{{ addr = \"127.0.0.1:{port}\" }}]\n"
            ),
        }
    }

    fn bundle(version: u64, services: Vec<ServiceDocument>) -> Bundle {
        Bundle {
            version,
            parent: None,
            created_at_ms: 0,
            author: "t".into(),
            message: "m".into(),
            fleet: "[cache]\nmax_bytes = 268435456\n".into(),
            services,
            geoip: None,
        }
    }

    /// The example DNS fleet, naming `geo.mmdb` and carrying `db`.
    fn dns_bundle(version: u64, db: Option<&[u8]>) -> Bundle {
        let text = include_str!("../../../../examples/dns.toml");
        let docs = firebreak_protocol::document::split(text).unwrap();
        let fleet = match db {
            Some(_) => docs
                .fleet
                .replacen("[dns]\n", "[dns]\ngeoip_file = \"geo.mmdb\"\n", 1),
            None => docs.fleet,
        };
        Bundle {
            fleet,
            services: docs.services,
            geoip: db.map(|d| Binary::from(d.to_vec())),
            ..bundle(version, Vec::new())
        }
    }

    #[test]
    fn the_composed_config_carries_the_versions_geoip_database() {
        let db: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let c = compose(&dns_bundle(1, Some(&db)), 1, None).unwrap();
        assert_eq!(c.config.geoip().map(|g| &g[..]), Some(&db[..]));
        // Rebuilt from what is kept (a restart): the database comes with the fleet document.
        assert_eq!(
            c.applied.config().unwrap().geoip().map(|g| &g[..]),
            Some(&db[..])
        );
        // The next version without one: none.
        let c2 = compose(&dns_bundle(2, None), 2, Some(&c.applied)).unwrap();
        assert!(c2.config.geoip().is_none());
        // A version naming a database it does not carry, or the reverse, is refused whole.
        let mut named = dns_bundle(3, Some(&db));
        named.geoip = None;
        let e = compose(&named, 3, Some(&c2.applied)).err().unwrap();
        assert!(e.contains("dns.geoip_file"), "{e}");
        let mut unnamed = dns_bundle(3, None);
        unnamed.geoip = Some(Binary::from(db.clone()));
        assert!(compose(&unnamed, 3, Some(&c2.applied)).is_err());
    }

    #[test]
    fn a_bad_service_keeps_its_old_document_and_the_others_update() {
        let v1 = compose(&bundle(1, vec![service("a", 1), service("b", 2)]), 1, None).unwrap();
        assert!(v1.failures.is_empty());
        let mut bad = service("b", 3);
        bad.document = bad.document.replace("addr", "adress");
        let v2 = compose(&bundle(2, vec![service("a", 9), bad]), 2, Some(&v1.applied)).unwrap();
        assert_eq!(v2.failures.len(), 1);
        assert_eq!(v2.failures[0].service, "b");
        assert_eq!(v2.failures[0].kept_version, Some(1));
        assert!(
            v2.failures[0].error.contains("unknown field `adress`"),
            "{:?}",
            v2.failures
        );
        assert_eq!(v2.config.services[0].origin.servers[0].addr, "127.0.0.1:9");
        assert_eq!(v2.config.services[1].origin.servers[0].addr, "127.0.0.1:2");
        assert_eq!(v2.applied.pinned(), vec![1, 2]);
    }

    #[test]
    fn a_bad_fleet_document_or_nothing_left_refuses_the_version() {
        let v1 = compose(&bundle(1, vec![service("a", 1)]), 1, None).unwrap();
        let mut b = bundle(2, vec![service("a", 2)]);
        b.fleet = "[cache]\nmax_bytes = 1\n".into();
        assert!(compose(&b, 2, Some(&v1.applied)).is_err());
        let mut bad = service("new", 3);
        bad.document = bad.document.replace("hosts", "hostz");
        assert!(compose(&bundle(3, vec![bad]), 3, Some(&v1.applied)).is_err());
    }
}
