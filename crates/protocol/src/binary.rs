//! Binary documents inside JSON (a version's MaxMind database): base64 (standard alphabet,
//! padded) on the wire, shared bytes in memory so that cloning a bundle or a configuration
//! never copies them.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::Arc;

/// Bytes carried as a base64 string. Its `Debug` shows the length and a hash, never the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Binary(pub Arc<[u8]>);

impl Binary {
    /// The bytes.
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.0
    }

    /// Their length.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for Binary {
    fn from(v: Vec<u8>) -> Self {
        Self(v.into())
    }
}

impl std::fmt::Debug for Binary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sha = crate::sha256_hex(&self.0);
        write!(
            f,
            "Binary({} bytes, sha256 {})",
            self.0.len(),
            sha.get(..16).unwrap_or(&sha)
        )
    }
}

/// Length of the base64 text of `n` bytes (padded).
pub const fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

impl Serialize for Binary {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Binary {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Binary;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("base64 text")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Binary, E> {
                // The text is already inside a bounded body; the decoded bytes are smaller.
                B64.decode(v)
                    .map(Binary::from)
                    .map_err(|e| E::custom(format!("bad base64: {e}")))
            }
        }
        d.deserialize_str(Visit)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_as_base64_and_refuses_anything_else() {
        let b = Binary::from(vec![0u8, 1, 2, 250, 255]);
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(json, "\"AAEC+v8=\"");
        assert_eq!(serde_json::from_str::<Binary>(&json).unwrap(), b);
        for bad in ["\"AAEC+v8\"", "\"not base64!\"", "17", "[1,2]"] {
            assert!(serde_json::from_str::<Binary>(bad).is_err(), "{bad}");
        }
        assert_eq!(base64_len(5), 8);
        assert_eq!(base64_len(6), 8);
        assert_eq!(base64_len(0), 0);
        assert!(format!("{b:?}").starts_with("Binary(5 bytes, sha256 "));
    }
}
