//! The disk tier's object file: one file per stored variant, written whole to a temporary
//! name and renamed into place, so a file under `objects/` is either complete or absent
//! after a crash (a power loss can still tear it: every part carries a checksum).
//!
//! ```text
//! 0   "FBD1"                      magic
//! 4   u32  head length            ┐ covered by the head checksum
//! 8   u64  body length            ┘
//! 16  u64  expired at (ms, 0 = no) ┐ the one mutable part (soft purge), own checksum
//! 24  u32  crc32 of bytes 16..24   ┘
//! 28  u32  crc32 of bytes 4..16 and the head
//! 32  body blocks: up to BLOCK bytes of body, then the crc32 of those bytes
//!     head (key, status, freshness, Vary values, header block, surrogate keys)
//!     "FBDE"                      end magic
//! ```
//!
//! The head follows the body so that a body can be written as it arrives, before its final
//! head is known; the prefix, written last, makes the file valid.
//!
//! All integers little-endian. Reading never trusts a length: each is bounded and checked
//! against the file's size before anything is allocated.

use crate::http::freshness::{Freshness, FreshnessParts};
use crate::store::{CacheKey, StoredHeaders, VaryKey};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, StatusCode};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Start of every object file.
pub(super) const MAGIC: [u8; 4] = *b"FBD1";
/// End of every object file.
pub(super) const END: [u8; 4] = *b"FBDE";
/// Bytes before the head.
pub(super) const PREFIX: u64 = 32;
/// Body bytes per checksummed block.
pub const BLOCK: u64 = 64 * 1024;
/// Longest head accepted (the edge's own heads are bounded far below: header block,
/// 16 Vary fields, 64 surrogate keys).
pub(super) const MAX_HEAD: u64 = 1 << 20;
/// Offset of the mutable "expired at" field.
pub(super) const EXPIRED_AT: u64 = 16;

/// Why an object file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Not one of our files, or a version we do not read.
    #[error("bad magic")]
    Magic,
    /// A length out of bounds or disagreeing with the file's size.
    #[error("bad length: {0}")]
    Length(&'static str),
    /// A checksum does not match: a torn write or a damaged disk.
    #[error("checksum mismatch in {0}")]
    Checksum(&'static str),
    /// The head's content is malformed.
    #[error("malformed head: {0}")]
    Head(&'static str),
    /// The operating system refused.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Number of body blocks.
pub(super) fn blocks(body_len: u64) -> u64 {
    body_len.div_ceil(BLOCK)
}

/// Size of the whole file.
pub(super) fn file_len(head_len: u64, body_len: u64) -> u64 {
    PREFIX + head_len + body_len + 4 * blocks(body_len) + END.len() as u64
}

/// Offset of body block `i` (its data; its checksum follows the data).
pub(super) fn block_offset(i: u64) -> u64 {
    PREFIX + i * (BLOCK + 4)
}

/// Offset of the head, after the body of `body_len` bytes.
pub(super) fn head_offset(body_len: u64) -> u64 {
    PREFIX + body_len + 4 * blocks(body_len)
}

/// What the head of a file says.
#[derive(Debug)]
pub(super) struct Head {
    pub key: CacheKey,
    pub headers: StoredHeaders,
    pub vary: VaryKey,
    pub freshness: Freshness,
    pub surrogate_keys: crate::store::SurrogateKeys,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the epoch (0 before it).
pub(super) fn epoch_ms(t: SystemTime) -> u64 {
    ms(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u32_le(u32::try_from(s.len()).unwrap_or(u32::MAX));
    out.put_slice(s.get(..s.len().min(u32::MAX as usize)).unwrap_or_default());
}

/// Encodes a head.
pub(super) fn encode_head(
    key: &CacheKey,
    status: StatusCode,
    headers: &StoredHeaders,
    vary: &VaryKey,
    freshness: &Freshness,
    surrogate_keys: &[Box<str>],
) -> BytesMut {
    let mut out = BytesMut::with_capacity(128 + key.len() + headers.size());
    put_str(&mut out, key.as_str().as_bytes());
    out.put_u16_le(status.as_u16());
    out.put_u64_le(epoch_ms(freshness.response_time()));
    out.put_u64_le(ms(freshness.corrected_initial_age()));
    out.put_u64_le(ms(freshness.lifetime()));
    out.put_u64_le(ms(freshness.stale_while_revalidate()));
    out.put_u64_le(ms(freshness.stale_if_error()));
    out.put_u8(u8::from(freshness.must_revalidate()));
    let fields = vary.fields();
    out.put_u16_le(u16::try_from(fields.len()).unwrap_or(u16::MAX));
    for (name, value) in fields {
        put_str(&mut out, name.as_str().as_bytes());
        match value {
            Some(v) => {
                out.put_u8(1);
                put_str(&mut out, v.as_bytes());
            }
            None => out.put_u8(0),
        }
    }
    put_str(&mut out, headers.block());
    out.put_u16_le(u16::try_from(surrogate_keys.len()).unwrap_or(u16::MAX));
    for k in surrogate_keys {
        put_str(&mut out, k.as_bytes());
    }
    out
}

/// The prefix of a file whose head is `head` and whose body is `body_len` bytes long.
pub(super) fn prefix(head: &[u8], body_len: u64) -> [u8; PREFIX as usize] {
    let mut p = [0u8; PREFIX as usize];
    let head_len = u32::try_from(head.len()).unwrap_or(u32::MAX);
    p[0..4].copy_from_slice(&MAGIC);
    p[4..8].copy_from_slice(&head_len.to_le_bytes());
    p[8..16].copy_from_slice(&body_len.to_le_bytes());
    p[16..28].copy_from_slice(&expired_field(0));
    let mut crc = crc32fast::Hasher::new();
    crc.update(&p[4..16]);
    crc.update(head);
    p[28..32].copy_from_slice(&crc.finalize().to_le_bytes());
    p
}

/// The mutable field: "expired at `at_ms`" and its checksum.
pub(super) fn expired_field(at_ms: u64) -> [u8; 12] {
    let mut f = [0u8; 12];
    f[0..8].copy_from_slice(&at_ms.to_le_bytes());
    f[8..12].copy_from_slice(&crc32fast::hash(&at_ms.to_le_bytes()).to_le_bytes());
    f
}

/// The lengths a prefix declares, checked against the file's size; and the expiry mark.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lengths {
    pub head_len: u64,
    pub body_len: u64,
    /// `Some(ms)` when soft-purged at `ms`; `Some(0)` when the mark is damaged (treated as
    /// expired at once: the safe reading).
    pub expired_at: Option<u64>,
    head_crc: u32,
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Checks a prefix against the file size.
pub(super) fn read_prefix(p: &[u8], file_size: u64) -> Result<Lengths, FormatError> {
    if p.get(0..4) != Some(&MAGIC[..]) {
        return Err(FormatError::Magic);
    }
    let head_len = u64::from(le_u32(p, 4).ok_or(FormatError::Length("prefix"))?);
    let body_len = le_u64(p, 8).ok_or(FormatError::Length("prefix"))?;
    if head_len > MAX_HEAD || body_len > file_size {
        return Err(FormatError::Length("head or body"));
    }
    if file_len(head_len, body_len) != file_size {
        return Err(FormatError::Length("file size"));
    }
    let at = le_u64(p, 16).ok_or(FormatError::Length("prefix"))?;
    let at_crc = le_u32(p, 24).ok_or(FormatError::Length("prefix"))?;
    let expired_at = match (at, crc32fast::hash(&at.to_le_bytes()) == at_crc) {
        (_, false) => Some(0),
        (0, true) => None,
        (ms, true) => Some(ms),
    };
    let head_crc = le_u32(p, 28).ok_or(FormatError::Length("prefix"))?;
    Ok(Lengths {
        head_len,
        body_len,
        expired_at,
        head_crc,
    })
}

/// A cursor over a head that never reads past its end.
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.at.checked_add(n).ok_or(FormatError::Head("length"))?;
        let s = self
            .buf
            .get(self.at..end)
            .ok_or(FormatError::Head("short"))?;
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(*self.take(1)?.first().ok_or(FormatError::Head("short"))?)
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([
            *b.first().ok_or(FormatError::Head("short"))?,
            *b.get(1).ok_or(FormatError::Head("short"))?,
        ]))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        let b = self.take(4)?;
        le_u32(b, 0).ok_or(FormatError::Head("short"))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        let b = self.take(8)?;
        le_u64(b, 0).ok_or(FormatError::Head("short"))
    }
    fn bytes(&mut self) -> Result<&'a [u8], FormatError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, FormatError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| FormatError::Head("not UTF-8"))
    }
}

/// Checks a head against its checksum and decodes it.
pub(super) fn read_head(
    prefix: &[u8],
    lengths: &Lengths,
    head: Bytes,
) -> Result<Head, FormatError> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(prefix.get(4..16).ok_or(FormatError::Length("prefix"))?);
    crc.update(&head);
    if crc.finalize() != lengths.head_crc {
        return Err(FormatError::Checksum("head"));
    }
    let mut c = Cursor { buf: &head, at: 0 };
    let key = CacheKey::from_stored(c.str()?).ok_or(FormatError::Head("key"))?;
    let status = StatusCode::from_u16(c.u16()?).map_err(|_| FormatError::Head("status"))?;
    let response_time = UNIX_EPOCH + Duration::from_millis(c.u64()?);
    let mut freshness = Freshness::from(FreshnessParts {
        response_time,
        corrected_initial_age: Duration::from_millis(c.u64()?),
        lifetime: Duration::from_millis(c.u64()?),
        stale_while_revalidate: Duration::from_millis(c.u64()?),
        stale_if_error: Duration::from_millis(c.u64()?),
        must_revalidate: c.u8()? != 0,
    });
    if let Some(at) = lengths.expired_at {
        // Soft-purged at `at`: its lifetime ends there (at once when the mark is damaged).
        let at = UNIX_EPOCH + Duration::from_millis(at);
        freshness = freshness.expired_at(at);
    }
    let n = c.u16()? as usize;
    if n > crate::store::object::MAX_VARY_FIELDS {
        return Err(FormatError::Head("too many Vary fields"));
    }
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        let name =
            HeaderName::from_bytes(c.bytes()?).map_err(|_| FormatError::Head("Vary name"))?;
        let value = match c.u8()? {
            0 => None,
            _ => Some(Box::<str>::from(c.str()?)),
        };
        fields.push((name, value));
    }
    let block = c.bytes()?;
    let start = c.at - block.len();
    let headers = StoredHeaders::from_block(status, head.slice(start..c.at));
    let n = c.u16()? as usize;
    if n > crate::store::MAX_SURROGATE_KEYS {
        return Err(FormatError::Head("too many surrogate keys"));
    }
    let mut tags = Vec::with_capacity(n);
    for _ in 0..n {
        tags.push(Box::<str>::from(c.str()?));
    }
    if c.at != head.len() {
        return Err(FormatError::Head("trailing bytes"));
    }
    Ok(Head {
        key,
        headers,
        vary: VaryKey::from_fields(fields),
        freshness,
        surrogate_keys: tags.into(),
    })
}

/// Checks the blocks read from `offset` (a block boundary) and returns their data, each a
/// slice of `buf` (no copy). `body_len` bounds the last block.
pub(super) fn check_blocks(
    buf: Bytes,
    first_block: u64,
    body_len: u64,
) -> Result<Vec<Bytes>, FormatError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut block = first_block;
    while at < buf.len() {
        let remaining = body_len.saturating_sub(block * BLOCK);
        let n = remaining.min(BLOCK) as usize;
        if n == 0 {
            return Err(FormatError::Length("past the body"));
        }
        let data = buf
            .get(at..at + n)
            .ok_or(FormatError::Length("short block"))?;
        let crc = le_u32(&buf, at + n).ok_or(FormatError::Length("short block"))?;
        if crc32fast::hash(data) != crc {
            return Err(FormatError::Checksum("body block"));
        }
        out.push(buf.slice(at..at + n));
        at += n + 4;
        block += 1;
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_checked_against_the_file() {
        let head = b"h".repeat(10);
        let p = prefix(&head, 100_000);
        let size = file_len(10, 100_000);
        let l = read_prefix(&p, size).unwrap();
        assert_eq!((l.head_len, l.body_len, l.expired_at), (10, 100_000, None));
        assert!(read_prefix(&p, size - 1).is_err());
        assert!(read_prefix(&p[..20], size).is_err());
        let mut bad = p;
        bad[0] = b'X';
        assert!(matches!(read_prefix(&bad, size), Err(FormatError::Magic)));
        // A damaged expiry mark reads as expired.
        let mut torn = p;
        torn[17] = 1;
        assert_eq!(read_prefix(&torn, size).unwrap().expired_at, Some(0));
    }

    #[test]
    fn blocks_detect_a_flipped_bit() {
        let data = vec![7u8; (BLOCK + 10) as usize];
        let mut buf = BytesMut::new();
        for chunk in data.chunks(BLOCK as usize) {
            buf.put_slice(chunk);
            buf.put_u32_le(crc32fast::hash(chunk));
        }
        let good = buf.clone().freeze();
        let out = check_blocks(good, 0, data.len() as u64).unwrap();
        assert_eq!(out.iter().map(|b| b.len()).sum::<usize>(), data.len());
        let mut bad = buf;
        bad[5] ^= 1;
        assert!(check_blocks(bad.freeze(), 0, data.len() as u64).is_err());
    }
}
