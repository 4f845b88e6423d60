//! Test support for other crates' tests (feature `testing`): a writer of small MaxMind
//! databases, so that tests build the files they need instead of shipping binaries.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::net::IpAddr;

/// A minimal MaxMind DB writer (format 2.0, 24-bit records): a binary search tree over
/// the address bits, a 16-byte zero separator, the data section, then the metadata
/// marker and the metadata map. Every record is `{country: {iso_code}, continent: {code}}`.
pub struct MmdbWriter {
    /// 32 (IPv4 database) or 128 (IPv6 database, IPv4 under ::/96).
    width: u32,
    /// (network bits, prefix length, country, continent)
    networks: Vec<(u128, u32, Option<&'static str>, Option<&'static str>)>,
}

#[derive(Clone, Copy)]
enum Rec {
    Empty,
    Node(usize),
    Data(usize),
}

fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
    let (bits, extra): (u8, Vec<u8>) = match size {
        0..=28 => (size as u8, vec![]),
        29..=284 => (29, vec![(size - 29) as u8]),
        285..=65_820 => (30, ((size - 285) as u16).to_be_bytes().to_vec()),
        _ => (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec()),
    };
    if kind <= 7 {
        out.push(kind << 5 | bits);
    } else {
        out.push(bits);
        out.push(kind - 7);
    }
    out.extend(extra);
}

fn string(out: &mut Vec<u8>, s: &str) {
    control(out, 2, s.len());
    out.extend(s.as_bytes());
}

fn map(out: &mut Vec<u8>, pairs: usize) {
    control(out, 7, pairs);
}

fn uint(out: &mut Vec<u8>, kind: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(out, kind, 8 - skip);
    out.extend(&bytes[skip..]);
}

impl MmdbWriter {
    /// An empty database of `width` bits: 32 (IPv4) or 128 (IPv6, IPv4 under `::/96`).
    pub fn new(width: u32) -> Self {
        Self {
            width,
            networks: Vec::new(),
        }
    }

    /// Adds `cidr` (IPv4 networks go under ::/96 in an IPv6 database).
    pub fn insert(
        &mut self,
        cidr: &str,
        country: Option<&'static str>,
        continent: Option<&'static str>,
    ) -> &mut Self {
        let (addr, len) = cidr.split_once('/').unwrap();
        let len: u32 = len.parse().unwrap();
        let (bits, len) = match addr.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) if self.width == 32 => (u128::from(u32::from(a)), len),
            IpAddr::V4(a) => (u128::from(u32::from(a)), len + 96),
            IpAddr::V6(a) => {
                assert_eq!(self.width, 128);
                (u128::from(a), len)
            }
        };
        self.networks.push((bits, len, country, continent));
        self
    }

    /// The database file's bytes.
    pub fn build(&self) -> Vec<u8> {
        // The data section: one record per network.
        let mut data = Vec::new();
        let mut offsets = Vec::new();
        for (_, _, country, continent) in &self.networks {
            offsets.push(data.len());
            let pairs = usize::from(country.is_some()) + usize::from(continent.is_some());
            map(&mut data, pairs);
            if let Some(c) = country {
                string(&mut data, "country");
                map(&mut data, 2);
                string(&mut data, "iso_code");
                string(&mut data, c);
                string(&mut data, "names");
                map(&mut data, 1);
                string(&mut data, "en");
                string(&mut data, "Somewhere");
            }
            if let Some(c) = continent {
                string(&mut data, "continent");
                map(&mut data, 1);
                string(&mut data, "code");
                string(&mut data, c);
            }
        }
        // The search tree, less specific networks first so that more specific ones split
        // their records.
        let mut order: Vec<usize> = (0..self.networks.len()).collect();
        order.sort_by_key(|&i| self.networks[i].1);
        let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty, Rec::Empty]];
        for i in order {
            let (bits, len, ..) = self.networks[i];
            let mut node = 0;
            for depth in 0..len {
                let bit = ((bits >> (self.width - 1 - depth)) & 1) as usize;
                if depth == len - 1 {
                    nodes[node][bit] = Rec::Data(offsets[i]);
                    break;
                }
                node = match nodes[node][bit] {
                    Rec::Node(n) => n,
                    inherited => {
                        nodes.push([inherited, inherited]);
                        let n = nodes.len() - 1;
                        nodes[node][bit] = Rec::Node(n);
                        n
                    }
                };
            }
        }
        let count = nodes.len();
        let mut out = Vec::new();
        for node in &nodes {
            for rec in node {
                let v = match *rec {
                    Rec::Empty => count,
                    Rec::Node(n) => n,
                    Rec::Data(off) => count + 16 + off,
                };
                out.extend(&(v as u32).to_be_bytes()[1..]);
            }
        }
        out.extend([0u8; 16]);
        out.extend(&data);
        out.extend(b"\xAB\xCD\xEFMaxMind.com");
        map(&mut out, 9);
        string(&mut out, "binary_format_major_version");
        uint(&mut out, 5, 2);
        string(&mut out, "binary_format_minor_version");
        uint(&mut out, 5, 0);
        string(&mut out, "build_epoch");
        uint(&mut out, 9, 1_764_547_200);
        string(&mut out, "database_type");
        string(&mut out, "Firebreak-Test-Country");
        string(&mut out, "description");
        map(&mut out, 1);
        string(&mut out, "en");
        string(&mut out, "built by the test");
        string(&mut out, "ip_version");
        uint(&mut out, 5, if self.width == 32 { 4 } else { 6 });
        string(&mut out, "languages");
        control(&mut out, 11, 1);
        string(&mut out, "en");
        string(&mut out, "node_count");
        uint(&mut out, 6, count as u64);
        string(&mut out, "record_size");
        uint(&mut out, 5, 24);
        out
    }
}
