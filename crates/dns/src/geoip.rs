//! A MaxMind-format database (GeoLite2/GeoIP2 Country or City, or any database with the same
//! `country.iso_code` and `continent.code` fields) placing clients by country and continent
//! when no prefix of the region table matches: the [`Locate`] the steering asks.
//!
//! The file is untrusted input like every document: it is size-bounded
//! ([`MAX_GEOIP_BYTES`]), read whole into memory (no mmap: a file replaced under a map is
//! undefined behaviour) and verified completely when opened (search tree, data section,
//! metadata), so that a corrupt file is refused with a clear error at load time instead of
//! failing lookups later. The codes are read borrowed from the buffer (never copied into a
//! `String`).

use crate::steer::{Locate, Location};
use maxminddb::{PathElement, Reader};
use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

/// Largest database accepted (32 MiB): the configuration's bound
/// ([`firebreak_config::MAX_GEOIP_BYTES`]), the same for a standalone file and for a database
/// inside a signed version, so the control plane and the DNS server refuse the same files.
pub use firebreak_config::MAX_GEOIP_BYTES;

/// Most distinct records whose codes are decoded once at open. Country databases hold a few
/// hundred; City databases hundreds of thousands — beyond this bound (about 24 MiB of table)
/// lookups decode the codes each time instead.
const MAX_DECODED_RECORDS: usize = 1 << 20;

/// A record's codes: (country, continent).
type Codes = (Option<[u8; 2]>, Option<[u8; 2]>);

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum GeoIpError {
    /// Over [`MAX_GEOIP_BYTES`].
    #[error("the GeoIP database is {len} bytes; the limit is {MAX_GEOIP_BYTES}")]
    TooBig {
        /// Its size (at least).
        len: u64,
    },
    /// The file could not be read.
    #[error("cannot read the GeoIP database {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a valid MaxMind database.
    #[error("not a valid MaxMind database: {0}")]
    Corrupt(String),
    /// A valid database that places no network in a country or a continent (an ASN or an
    /// anonymous-IP database, say): steering could never use it.
    #[error(
        "the MaxMind database ({database_type}) has no network with a country (country.iso_code, registered_country.iso_code) or a continent (continent.code): not usable to place clients"
    )]
    NoLocations {
        /// Its `database_type`.
        database_type: String,
    },
}

/// An opened, verified database.
pub struct GeoIp {
    reader: Reader<Vec<u8>>,
    /// 4: IPv4 only; 6: both (IPv4 under `::/96`).
    ip_version: u16,
    /// The codes of every record by data offset, decoded at open: a lookup is then the tree
    /// walk and one table read (decoding two codes costs more than the walk). `None` for
    /// databases with more than [`MAX_DECODED_RECORDS`] records.
    decoded: Option<HashMap<usize, Codes>>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.reader.metadata();
        f.debug_struct("GeoIp")
            .field("database_type", &m.database_type)
            .field("build_epoch", &m.build_epoch)
            .field("ip_version", &m.ip_version)
            .finish_non_exhaustive()
    }
}

const COUNTRY: [PathElement<'static>; 2] =
    [PathElement::Key("country"), PathElement::Key("iso_code")];
/// GeoLite2-Country leaves `country` out for some networks (anonymous proxies, satellite
/// providers) but gives the country the network is registered in.
const REGISTERED_COUNTRY: [PathElement<'static>; 2] = [
    PathElement::Key("registered_country"),
    PathElement::Key("iso_code"),
];
const CONTINENT: [PathElement<'static>; 2] =
    [PathElement::Key("continent"), PathElement::Key("code")];

impl GeoIp {
    /// Opens a database held in memory (for example a document of a version).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GeoIp, GeoIpError> {
        let len = bytes.len() as u64;
        if len > MAX_GEOIP_BYTES {
            return Err(GeoIpError::TooBig { len });
        }
        let reader = Reader::from_source(bytes).map_err(|e| GeoIpError::Corrupt(e.to_string()))?;
        reader
            .verify()
            .map_err(|e| GeoIpError::Corrupt(e.to_string()))?;
        let ip_version = reader.metadata().ip_version;
        let (decoded, usable) = decode_all(&reader, MAX_DECODED_RECORDS);
        if !usable {
            return Err(GeoIpError::NoLocations {
                database_type: reader.metadata().database_type.clone(),
            });
        }
        Ok(GeoIp {
            reader,
            ip_version,
            decoded,
        })
    }

    /// Reads and opens a database file; the size is checked before it is read, and the read
    /// is bounded even if the file grows meanwhile.
    pub fn open_file(path: &Path) -> Result<GeoIp, GeoIpError> {
        let read_err = |source| GeoIpError::Read {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let len = file.metadata().map_err(read_err)?.len();
        if len > MAX_GEOIP_BYTES {
            return Err(GeoIpError::TooBig { len });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.take(MAX_GEOIP_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        Self::from_bytes(bytes)
    }

    /// The database's `database_type` (`GeoLite2-Country`, ...), for logs.
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// Build time of the database, seconds since the Unix epoch (for logs and metrics).
    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }
}

/// Decodes the codes of every distinct record, or gives up on the table (`None`) past `limit`
/// records. Also tells whether any record decoded has a country or a continent (the database
/// is usable): a verified database's records all decode, so the walk stops early only for the
/// table's size.
fn decode_all(reader: &Reader<Vec<u8>>, limit: usize) -> (Option<HashMap<usize, Codes>>, bool) {
    let mut table = HashMap::new();
    let mut usable = false;
    let Ok(networks) = reader.networks(Default::default()) else {
        return (None, false);
    };
    for network in networks {
        let Ok(network) = network else {
            return (None, usable);
        };
        let Some(offset) = network.offset() else {
            continue;
        };
        if !table.contains_key(&offset) {
            if table.len() >= limit {
                return (None, usable);
            }
            let c = codes(&network);
            usable |= c.0.is_some() || c.1.is_some();
            table.insert(offset, c);
        }
    }
    (Some(table), usable)
}

fn codes(result: &maxminddb::LookupResult<'_, Vec<u8>>) -> Codes {
    let country = code(result, &COUNTRY).or_else(|| code(result, &REGISTERED_COUNTRY));
    (country, code(result, &CONTINENT))
}

fn code(
    result: &maxminddb::LookupResult<'_, Vec<u8>>,
    path: &[PathElement<'_>],
) -> Option<[u8; 2]> {
    let code: &str = result.decode_path(path).ok().flatten()?;
    match code.as_bytes() {
        &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

impl Locate for GeoIp {
    fn locate(&self, ip: IpAddr) -> Option<Location> {
        // IPv4-mapped IPv6 addresses are looked up as IPv4 (databases hold IPv4 under ::/96
        // and alias ::ffff:0:0/96 to it, but not every writer does).
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if ip.is_ipv6() && self.ip_version == 4 {
            return None;
        }
        let result = self.reader.lookup(ip).ok()?;
        let offset = result.offset()?;
        let (country, continent) = match &self.decoded {
            Some(table) => *table.get(&offset)?,
            None => codes(&result),
        };
        if country.is_none() && continent.is_none() {
            return None;
        }
        let network = result.network().ok()?;
        // The length within the address's own family: an IPv4 address matched above the
        // IPv4 subtree of an IPv6 database (a network wider than ::/96) covers all of IPv4.
        let prefix_len = match ip {
            IpAddr::V4(_) if network.is_ipv6() => network.prefix().saturating_sub(96),
            _ => network.prefix(),
        };
        Some(Location {
            country,
            continent,
            prefix_len,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::MmdbWriter;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn loc(
        country: Option<&[u8; 2]>,
        continent: Option<&[u8; 2]>,
        prefix_len: u8,
    ) -> Option<Location> {
        Some(Location {
            country: country.copied(),
            continent: continent.copied(),
            prefix_len,
        })
    }

    fn dual_stack() -> Vec<u8> {
        MmdbWriter::new(128)
            .insert("10.0.0.0/8", Some("NL"), Some("EU"))
            .insert("10.1.0.0/16", Some("US"), Some("NA"))
            .insert("192.0.2.0/24", None, Some("AS"))
            .insert("2001:db8::/32", Some("DE"), Some("EU"))
            .insert("2001:db8:1::/48", Some("jp"), Some("AS"))
            .build()
    }

    #[test]
    fn ipv4_and_ipv6_networks_are_located_with_their_prefix_length() {
        let db = GeoIp::from_bytes(dual_stack()).unwrap();
        assert_eq!(db.database_type(), "Firebreak-Test-Country");
        // 10.0.0.0/8 is split around 10.1.0.0/16: the network holding an address is the
        // record's place in the tree (10.2.0.0/15, 10.128.0.0/9), as in MaxMind's databases.
        assert_eq!(db.locate(ip("10.2.3.4")), loc(Some(b"NL"), Some(b"EU"), 15));
        assert_eq!(
            db.locate(ip("10.200.0.1")),
            loc(Some(b"NL"), Some(b"EU"), 9)
        );
        // The more specific network wins.
        assert_eq!(db.locate(ip("10.1.2.3")), loc(Some(b"US"), Some(b"NA"), 16));
        // A record with a continent only.
        assert_eq!(db.locate(ip("192.0.2.77")), loc(None, Some(b"AS"), 24));
        assert_eq!(
            db.locate(ip("2001:db8:8000::1")),
            loc(Some(b"DE"), Some(b"EU"), 33)
        );
        assert_eq!(
            db.locate(ip("2001:db8::1")),
            loc(Some(b"DE"), Some(b"EU"), 48)
        );
        assert_eq!(
            db.locate(ip("2001:db8:1:2::1")),
            loc(Some(b"JP"), Some(b"AS"), 48),
            "codes are upper-cased"
        );
        // IPv4-mapped IPv6 is looked up as IPv4.
        assert_eq!(
            db.locate(ip("::ffff:10.2.3.4")),
            loc(Some(b"NL"), Some(b"EU"), 15)
        );
    }

    #[test]
    fn the_decoded_table_and_decoding_each_lookup_agree() {
        let cached = GeoIp::from_bytes(dual_stack()).unwrap();
        assert_eq!(cached.decoded.as_ref().unwrap().len(), 5);
        let mut uncached = GeoIp::from_bytes(dual_stack()).unwrap();
        uncached.decoded = decode_all(&uncached.reader, 4).0;
        assert!(uncached.decoded.is_none(), "more records than the limit");
        for probe in [
            "10.2.3.4",
            "10.1.2.3",
            "192.0.2.77",
            "2001:db8::1",
            "2001:db8:1::1",
            "11.0.0.1",
            "::ffff:10.1.0.1",
            "2001:db9::1",
        ] {
            assert_eq!(
                cached.locate(ip(probe)),
                uncached.locate(ip(probe)),
                "{probe}"
            );
        }
        assert!(uncached.locate(ip("10.1.2.3")).is_some());
    }

    #[test]
    fn addresses_outside_every_network_are_a_miss() {
        let db = GeoIp::from_bytes(dual_stack()).unwrap();
        for miss in [
            "11.0.0.1",
            "9.255.255.255",
            "192.0.3.1",
            "2001:db9::1",
            "::1",
            "fe80::1",
        ] {
            assert_eq!(db.locate(ip(miss)), None, "{miss}");
        }
    }

    #[test]
    fn an_ipv4_only_database_locates_ipv4_and_misses_ipv6() {
        let bytes = MmdbWriter::new(32)
            .insert("198.51.100.0/24", Some("FR"), Some("EU"))
            .build();
        let db = GeoIp::from_bytes(bytes).unwrap();
        assert_eq!(
            db.locate(ip("198.51.100.9")),
            loc(Some(b"FR"), Some(b"EU"), 24)
        );
        assert_eq!(
            db.locate(ip("::ffff:198.51.100.9")),
            loc(Some(b"FR"), Some(b"EU"), 24)
        );
        assert_eq!(db.locate(ip("2001:db8::1")), None);
        assert_eq!(db.locate(ip("198.51.101.9")), None);
    }

    /// Numbers, not a check: `cargo test --release -p firebreak-dns geoip_cost -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore]
    fn geoip_cost() {
        const CODES: [&str; 4] = ["NL", "US", "DE", "JP"];
        let mut w = MmdbWriter::new(128);
        for i in 0..100_000u32 {
            let code = Some(CODES[(i % 4) as usize]);
            if i % 2 == 0 {
                w.insert(
                    &format!("{}.{}.{}.0/24", 1 + (i >> 16), (i >> 8) & 255, i & 255),
                    code,
                    Some("EU"),
                );
            } else {
                w.insert(
                    &format!("2001:{:x}:{:x}::/48", 0x100 + (i >> 16), i & 0xffff),
                    code,
                    Some("NA"),
                );
            }
        }
        let bytes = w.build();
        let size = bytes.len();
        let t = std::time::Instant::now();
        let db = GeoIp::from_bytes(bytes).unwrap();
        let open = t.elapsed();
        let probes: Vec<IpAddr> = (0..1024u32)
            .map(|i| match i % 3 {
                0 => IpAddr::from([1 + (i % 2) as u8, (i >> 2) as u8, i as u8, 7]),
                1 => format!("2001:{:x}:{:x}::1", 0x100 + (i % 2), i * 61)
                    .parse()
                    .unwrap(),
                _ => IpAddr::from([200, i as u8, 1, 1]),
            })
            .collect();
        let rounds = 1_000;
        // Warm the caches and the table first.
        for p in &probes {
            std::hint::black_box(db.locate(*p));
        }
        let t = std::time::Instant::now();
        let mut found = 0usize;
        for _ in 0..rounds {
            for p in &probes {
                found += usize::from(std::hint::black_box(db.locate(*p)).is_some());
            }
        }
        let per = t.elapsed().as_nanos() as f64 / (rounds * probes.len()) as f64;
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            for p in &probes {
                let r = db.reader.lookup(std::hint::black_box(*p)).unwrap();
                std::hint::black_box(r.has_data());
            }
        }
        let walk = t.elapsed().as_nanos() as f64 / (rounds * probes.len()) as f64;
        println!("geoip: tree walk alone {walk:.0} ns");
        println!(
            "geoip: 100000 networks, {size} bytes: open+verify {open:?}; {per:.0} ns per lookup ({found} found of {})",
            rounds * probes.len()
        );
    }

    #[test]
    fn a_database_placing_nothing_in_a_country_or_continent_is_refused() {
        // An ASN-like database: valid, but no record has a country or a continent.
        let bytes = MmdbWriter::new(128)
            .insert("10.0.0.0/8", None, None)
            .insert("2001:db8::/32", None, None)
            .build();
        let e = GeoIp::from_bytes(bytes).unwrap_err();
        assert!(matches!(e, GeoIpError::NoLocations { .. }), "{e}");
        assert!(e.to_string().contains("Firebreak-Test-Country"), "{e}");
        assert!(e.to_string().contains("not usable"), "{e}");
        // One record with a continent is enough.
        let bytes = MmdbWriter::new(32)
            .insert("10.0.0.0/8", None, None)
            .insert("192.0.2.0/24", None, Some("AS"))
            .build();
        assert!(GeoIp::from_bytes(bytes).is_ok());
    }

    #[test]
    fn a_database_over_the_size_bound_is_refused() {
        let e = GeoIp::from_bytes(vec![0; MAX_GEOIP_BYTES as usize + 1]).unwrap_err();
        assert!(matches!(e, GeoIpError::TooBig { .. }), "{e}");
        // From a file, before reading it (a sparse file: no 64 MiB written).
        let dir = std::env::temp_dir().join(format!("firebreak-geoip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.mmdb");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_GEOIP_BYTES + 1).unwrap();
        let e = GeoIp::open_file(&path).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("the limit is {}", 32 * 1024 * 1024)),
            "{e}"
        );
        std::fs::write(&path, dual_stack()).unwrap();
        let db = GeoIp::open_file(&path).unwrap();
        assert_eq!(db.locate(ip("10.2.3.4")).unwrap().prefix_len, 15);
        let e = GeoIp::open_file(&dir.join("absent.mmdb")).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_database_is_a_clear_error_never_a_panic() {
        for junk in [
            &b""[..],
            b"not a database",
            b"\xAB\xCD\xEFMaxMind.com",
            b"\xAB\xCD\xEFMaxMind.com\xe0",
        ] {
            let e = GeoIp::from_bytes(junk.to_vec()).unwrap_err();
            assert!(
                e.to_string().starts_with("not a valid MaxMind database"),
                "{e}"
            );
        }
        let good = dual_stack();
        // Every truncation, and every byte flipped: refused or usable, never a panic.
        let mut refused = 0;
        for cut in 0..good.len() {
            refused += usize::from(GeoIp::from_bytes(good[..cut].to_vec()).is_err());
        }
        assert!(refused > good.len() / 2, "{refused} of {}", good.len());
        for at in 0..good.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] ^= flip;
                if let Ok(db) = GeoIp::from_bytes(bad) {
                    for probe in ["10.1.2.3", "192.0.2.1", "2001:db8:1::1", "11.0.0.1"] {
                        let _ = db.locate(ip(probe));
                    }
                }
            }
        }
        // A tree pointing outside the data section.
        let mut bad = good.clone();
        bad[0..3].copy_from_slice(&[0xff, 0xff, 0xff]);
        let e = GeoIp::from_bytes(bad).unwrap_err();
        assert!(matches!(e, GeoIpError::Corrupt(_)), "{e}");
    }
}
