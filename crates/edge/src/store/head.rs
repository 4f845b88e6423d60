//! Stored response header fields in one compact buffer.
//!
//! A `HeaderMap` costs about a kilobyte and a half for the nine fields of a typical response
//! (bucket array sized for growth, 100-odd bytes per bucket). Cached objects keep their
//! fields as `name:value\n` lines in one `Bytes` instead — a few hundred bytes — and build a
//! `HeaderMap` when a response is made from them; values are slices of the buffer, not copies.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Header fields of a stored response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredHeaders {
    block: Bytes,
    count: u16,
}

impl StoredHeaders {
    /// Packs `headers` (names cannot contain `:`, values cannot contain `\n`).
    pub fn from_map(headers: &HeaderMap) -> Self {
        let size: usize = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 2)
            .sum();
        let mut block = BytesMut::with_capacity(size);
        let mut count = 0u16;
        for (name, value) in headers {
            if count == u16::MAX {
                break;
            }
            block.extend_from_slice(name.as_str().as_bytes());
            block.extend_from_slice(b":");
            block.extend_from_slice(value.as_bytes());
            block.extend_from_slice(b"\n");
            count += 1;
        }
        Self {
            block: block.freeze(),
            count,
        }
    }

    /// The packed `name:value\n` lines (for the disk tier).
    pub fn block(&self) -> &[u8] {
        &self.block
    }

    /// Fields from a packed block read back from storage; lines that do not parse are
    /// skipped when the fields are read.
    pub fn from_block(block: Bytes) -> Self {
        let lines = block.iter().filter(|b| **b == b'\n').count();
        Self {
            block,
            count: u16::try_from(lines).unwrap_or(u16::MAX),
        }
    }

    /// The fields, in their original order.
    pub fn iter(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        let mut offset = 0usize;
        self.block.split(|b| *b == b'\n').filter_map(move |line| {
            let start = offset;
            offset += line.len() + 1;
            let colon = line.iter().position(|b| *b == b':')?;
            let name = HeaderName::from_bytes(line.get(..colon)?).ok()?;
            let value_start = start + colon + 1;
            let value = self.block.slice(value_start..start + line.len());
            HeaderValue::from_maybe_shared(value)
                .ok()
                .map(|v| (name, v))
        })
    }

    /// A `HeaderMap` with every field.
    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(usize::from(self.count));
        for (name, value) in self.iter() {
            map.append(name, value);
        }
        map
    }

    /// The first value of a field.
    pub fn get(&self, name: &HeaderName) -> Option<HeaderValue> {
        self.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Bytes held.
    pub fn size(&self) -> usize {
        self.block.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testutil::headers;

    #[test]
    fn round_trips_order_repeats_and_odd_values() {
        let src = headers(&[
            ("content-type", "text/plain"),
            ("x-a", "1"),
            ("x-a", "2:3"),
            ("x-empty", ""),
            ("etag", "W/\"x:y\""),
        ]);
        let stored = StoredHeaders::from_map(&src);
        assert_eq!(stored.to_map(), src);
        assert_eq!(stored.get(&http::header::ETAG).unwrap(), "W/\"x:y\"");
        assert!(stored.get(&http::header::AGE).is_none());
        assert_eq!(StoredHeaders::default().to_map().len(), 0);
    }
}
