//! Every fuzz target over its corpus (`fuzz/corpus/NAME/`) and then over deterministic
//! mutations of it (bit flips, byte changes, insertions, deletions, truncations, splices
//! between seeds): a panic anywhere fails the test with the target, the input's origin and a
//! hex dump to add to the corpus. Bounded by a count, not a clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use firebreak_fuzzing::{key, TARGETS};
use firebreak_protocol::bundle::{Bundle, ServiceDocument};
use firebreak_protocol::signed::{cell_audience, Signed, Target};
use std::path::PathBuf;

/// Mutated inputs per target.
const MUTATIONS: usize = 4_000;
/// Largest mutated input.
const MAX_LEN: usize = 64 * 1024;

fn corpus_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(name)
}

fn seeds(name: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(corpus_dir(name)) {
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            out.push(std::fs::read(&p).unwrap());
        }
    }
    // Signed seeds are made with this run's key, so mutations start from valid statements.
    let key = key().unwrap();
    match name {
        "signed_target" => {
            let t = Target {
                epoch: 1,
                seq: 7,
                expires_at_ms: u64::MAX,
                audience: cell_audience("c1"),
                version: 3,
                bundle_sha256: "ab".repeat(32),
                rollback: false,
                stage: None,
                rollout: Some(1),
                set_at_ms: 1_700_000_000_000,
                set_by: "fuzz".into(),
            };
            out.push(serde_json::to_vec(&Signed::sign(&t, key).unwrap()).unwrap());
        }
        "bundle" => {
            let b = Bundle {
                version: 3,
                parent: Some(2),
                created_at_ms: 1_700_000_000_000,
                author: "fuzz".into(),
                message: "seed".into(),
                fleet: "[limits]\nmax_connections = 100\n".into(),
                services: vec![ServiceDocument {
                    name: "a".into(),
                    document: "[[service]]\nname = \"a\"\nhosts = [\"a.test\"]\n[service.origin]\nservers = [{ addr = \"127.0.0.1:9\" }]\n".into(),
                }],
                geoip: None,
            };
            out.push(b.seal(key).unwrap());
        }
        _ => {}
    }
    if out.is_empty() {
        out.push(Vec::new());
    }
    out
}

/// xorshift64*: a small deterministic generator (the same inputs on every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Bytes that mean something to the parsers under test.
const INTERESTING: &[&[u8]] = &[
    b"\r\n",
    b"\n\n",
    b"%2F",
    b"%",
    b"/../",
    b"//",
    b"max-age=",
    b"s-maxage=99999999999999999999",
    b"bytes=0-",
    b"bytes=-1,",
    b"\"",
    b"W/",
    b"*",
    b"=",
    b",",
    b":",
    b"[[service]]\n",
    b"\x00",
    b"\xff",
    b"PROXY TCP4 ",
    b"\r\n\r\n\0\r\nQUIT\n",
    b"{}",
    b"null",
    b"9223372036854775808",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(v.len() + 1);
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                v.splice(i..i, piece.iter().copied());
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let j = (i + 1 + rng.below(16)).min(v.len());
                v.drain(i..j);
            }
            4 => v.truncate(rng.below(v.len() + 1)),
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(other.len() + 1);
                let at = rng.below(v.len() + 1);
                v.truncate(at);
                v.extend_from_slice(&other[cut..]);
            }
            _ => {
                let i = rng.below(v.len() + 1);
                let n = rng.below(8);
                let fill = rng.next() as u8;
                v.splice(i..i, std::iter::repeat_n(fill, n));
            }
        }
    }
    v.truncate(MAX_LEN);
    v
}

fn run(name: &str, f: fn(&[u8]), input: &[u8], origin: &str) {
    if std::panic::catch_unwind(|| f(input)).is_err() {
        let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
        panic!("fuzz target {name} panicked on {origin}; input (hex, add it to fuzz/corpus/{name}/): {hex}");
    }
}

#[test]
fn every_target_survives_its_corpus_and_mutations() {
    assert!(
        firebreak_edge::fuzzing::ready(),
        "the request-head target's configuration does not load"
    );
    assert!(key().is_some(), "no key for the verification targets");
    for (name, f) in TARGETS {
        let seeds = seeds(name);
        for (i, s) in seeds.iter().enumerate() {
            run(name, *f, s, &format!("seed {i}"));
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        for i in 0..MUTATIONS {
            let input = mutate(&mut rng, &seeds);
            run(name, *f, &input, &format!("mutation {i}"));
        }
    }
}

#[test]
fn every_target_has_a_corpus_and_a_cargo_fuzz_binary() {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
    for (name, _) in TARGETS {
        assert!(corpus_dir(name).is_dir(), "no corpus for {name}");
        assert!(
            fuzz.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "no cargo-fuzz target for {name}"
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name} not in fuzz/Cargo.toml"
        );
    }
}
