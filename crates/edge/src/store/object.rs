//! Stored responses, their keys and variant selection (RFC 9111 §4.1).

use crate::http::freshness::Freshness;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, StatusCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Most variants kept per URL; a response that varies on a high-cardinality header cannot
/// grow one key without bound.
pub const MAX_VARIANTS: usize = 32;
/// Most header names honoured in one `Vary`; more makes the response unstorable.
pub const MAX_VARY_FIELDS: usize = 16;
/// Fixed bookkeeping per stored object, counted against the budget.
const OBJECT_OVERHEAD: u64 = 256;
/// Most surrogate keys honoured per response.
pub const MAX_SURROGATE_KEYS: usize = 64;
/// Longest surrogate key.
pub const MAX_SURROGATE_KEY_LEN: usize = 256;

/// The surrogate keys (purge tags) of a stored object. Most objects have none, so the list
/// costs a pointer in every object (8 bytes, not a slice's 16) and nothing else until it
/// holds a key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SurrogateKeys(Option<Box<Box<[Box<str>]>>>);

impl std::ops::Deref for SurrogateKeys {
    type Target = [Box<str>];

    fn deref(&self) -> &[Box<str>] {
        self.0.as_deref().map_or(&[], |k| &**k)
    }
}

impl From<Vec<Box<str>>> for SurrogateKeys {
    fn from(keys: Vec<Box<str>>) -> Self {
        Self((!keys.is_empty()).then(|| Box::new(keys.into_boxed_slice())))
    }
}

impl FromIterator<Box<str>> for SurrogateKeys {
    fn from_iter<I: IntoIterator<Item = Box<str>>>(iter: I) -> Self {
        iter.into_iter().collect::<Vec<_>>().into()
    }
}

/// Surrogate keys (purge tags) of a response: `Surrogate-Key` (space separated, Fastly) and
/// `Cache-Tag` (comma separated, Cloudflare/Akamai). Bounded in count and length.
pub fn surrogate_keys(headers: &HeaderMap) -> SurrogateKeys {
    let mut keys: Vec<Box<str>> = Vec::new();
    for name in ["surrogate-key", "cache-tag"] {
        for value in headers.get_all(name) {
            let Ok(text) = value.to_str() else { continue };
            for key in text.split([' ', ',', '\t']) {
                if keys.len() == MAX_SURROGATE_KEYS {
                    return keys.into();
                }
                if !key.is_empty()
                    && key.len() <= MAX_SURROGATE_KEY_LEN
                    && !keys.iter().any(|k| &**k == key)
                {
                    keys.push(key.into());
                }
            }
        }
    }
    keys.into()
}

/// Primary cache key: service, host and request target. Method is implicit (GET; HEAD is
/// answered from GET).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(Arc<str>);

impl CacheKey {
    /// Builds the key for a URL of a service. `host` is lowercased by the router.
    pub fn new(service: &str, host: &str, path_and_query: &str) -> Self {
        let len = service.len() + host.len() + path_and_query.len() + 2;
        // Most keys are short: assembled on the stack, they cost one allocation (the `Arc`)
        // instead of two (a `String`, then the `Arc` it is copied into).
        let mut buf = [0u8; 256];
        if let Some(out) = buf.get_mut(..len) {
            let mut at = 0;
            for part in [service, "\n", host, "\n", path_and_query] {
                if let Some(dst) = out.get_mut(at..at + part.len()) {
                    dst.copy_from_slice(part.as_bytes());
                }
                at += part.len();
            }
            if let Ok(s) = std::str::from_utf8(out) {
                return Self(Arc::from(s));
            }
        }
        let mut s = String::with_capacity(len);
        s.push_str(service);
        s.push('\n');
        s.push_str(host);
        s.push('\n');
        s.push_str(path_and_query);
        Self(s.into())
    }

    /// The service this key belongs to.
    pub fn service(&self) -> &str {
        self.0.split('\n').next().unwrap_or("")
    }

    /// Length in bytes, for accounting.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the key is empty (never, for keys made by [`CacheKey::new`]).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key as one string (service, host and target separated by newlines).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A key read back from storage: `None` unless it has the three parts of
    /// [`CacheKey::new`].
    pub fn from_stored(s: &str) -> Option<Self> {
        (s.split('\n').count() >= 3 && !s.is_empty()).then(|| Self(s.into()))
    }
}

/// One `Vary` field and the request's (normalized) value for it.
pub type VaryField = (HeaderName, Option<Box<str>>);

/// The request header values a stored response was selected with (its `Vary` fields).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VaryKey {
    /// `None` when the response does not vary (most do not): 8 bytes in every object.
    // Boxed on purpose: 8 bytes in every stored object instead of a vector's 24.
    #[allow(clippy::box_collection)]
    fields: Option<Box<Vec<VaryField>>>,
}

impl VaryKey {
    fn from_vec(fields: Vec<(HeaderName, Option<Box<str>>)>) -> Self {
        Self {
            fields: (!fields.is_empty()).then(|| Box::new(fields)),
        }
    }

    fn list(&self) -> &[(HeaderName, Option<Box<str>>)] {
        self.fields.as_deref().map_or(&[], |v| v.as_slice())
    }

    /// Reads the response's `Vary` field names and the request's values for them. `None`
    /// when the response cannot be keyed (`Vary: *`, unparsable, or too many fields).
    pub fn from_exchange(response: &HeaderMap, request: &HeaderMap) -> Option<Self> {
        Self::from_exchange_with(response, request, &[])
    }

    /// As [`VaryKey::from_exchange`], with `declared` fields first: the request headers the
    /// service adds to its cache key (`[service.forwarding] cache_key_headers`), which select
    /// variants exactly as if every response named them in `Vary` — so a purge by URL
    /// reaches every one of them and the variant bound applies to them too.
    pub fn from_exchange_with(
        response: &HeaderMap,
        request: &HeaderMap,
        declared: &[HeaderName],
    ) -> Option<Self> {
        let mut fields: Vec<(HeaderName, Option<Box<str>>)> = Vec::new();
        for name in declared {
            if fields.len() == MAX_VARY_FIELDS {
                return None;
            }
            if !fields.iter().any(|(n, _)| n == name) {
                fields.push((name.clone(), normalized(request, name)));
            }
        }
        for value in response.get_all(header::VARY) {
            for name in value.to_str().ok()?.split(',') {
                let name = name.trim();
                if name.is_empty() {
                    continue;
                }
                if name == "*" {
                    return None;
                }
                let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                if fields.iter().any(|(n, _)| *n == name) {
                    continue;
                }
                if fields.len() == MAX_VARY_FIELDS {
                    return None;
                }
                let v = normalized(request, &name);
                fields.push((name, v));
            }
        }
        Some(Self::from_vec(fields))
    }

    /// The fields and the request's values for them, in order.
    pub fn fields(&self) -> &[(HeaderName, Option<Box<str>>)] {
        self.list()
    }

    /// A key with these fields (read back from storage).
    pub fn from_fields(fields: Vec<(HeaderName, Option<Box<str>>)>) -> Self {
        Self::from_vec(fields)
    }

    /// Whether a new request selects this variant (RFC 9111 §4.1).
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.list()
            .iter()
            .all(|(name, stored)| normalized(request, name).as_deref() == stored.as_deref())
    }

    fn same_names(&self, other: &VaryKey) -> bool {
        self.list().len() == other.list().len()
            && self
                .list()
                .iter()
                .zip(other.list())
                .all(|(a, b)| a.0 == b.0)
    }

    fn weight(&self) -> u64 {
        self.list()
            .iter()
            .map(|(n, v)| n.as_str().len() + v.as_ref().map_or(0, |v| v.len()) + 16)
            .sum::<usize>() as u64
    }
}

/// Combines all lines of a field into one comparable value: elements trimmed and joined with
/// `,` so that `a, b` and `a,b` select the same variant.
fn normalized(request: &HeaderMap, name: &HeaderName) -> Option<Box<str>> {
    let mut out = String::new();
    let mut any = false;
    for v in request.get_all(name) {
        any = true;
        let text = String::from_utf8_lossy(v.as_bytes());
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(part);
        }
    }
    any.then(|| out.into_boxed_str())
}

/// A body's chunks in memory, in order. Most bodies are one chunk (a small body is
/// compacted into one when stored), kept inline: no vector to allocate per object.
#[derive(Debug, Clone)]
pub enum Chunks {
    /// One chunk.
    One(Bytes),
    /// Any number (a large body as it arrived, or none).
    Many(Box<[Bytes]>),
}

impl std::ops::Deref for Chunks {
    type Target = [Bytes];

    fn deref(&self) -> &[Bytes] {
        match self {
            Chunks::One(b) => std::slice::from_ref(b),
            Chunks::Many(c) => c,
        }
    }
}

/// Bodies up to this size not kept in zero-copy pages are compacted into one fresh buffer
/// when stored, so that a small object does not pin the larger network buffer its bytes
/// arrived in.
const COMPACT_BELOW: u64 = 1024 * 1024;
/// Largest body copied into zero-copy pages; larger bodies keep the chunks they arrived in.
/// Measured over loopback (`bench/quick.sh`, Intel Xeon), sendfile against the copying path:
/// 16 KiB 1.11x, 64 KiB 1.24x, 256 KiB 1.49x, 1 MiB 1.15x, but 4 MiB 0.53x — the client
/// (wrk, on the same cores) then spends about three times the CPU per byte receiving
/// page-cache pages and becomes the bottleneck. The copy into the pages runs on the fill's
/// thread, so the bound also keeps that copy short.
const ZERO_COPY_MAX: u64 = 1024 * 1024;

impl Chunks {
    /// A body of `len` bytes, as it arrived, made ready to keep: from `zero_copy_min` bytes
    /// (0: never) up to `ZERO_COPY_MAX` (1 MiB) copied into zero-copy pages (sent with `sendfile`
    /// on plain connections); otherwise, up to `COMPACT_BELOW` (1 MiB), compacted into one buffer;
    /// larger bodies keep their chunks.
    pub fn keep(chunks: Vec<Bytes>, len: u64, zero_copy_min: u64) -> Chunks {
        if zero_copy_min > 0 && (zero_copy_min..=ZERO_COPY_MAX).contains(&len) {
            if let Some(pages) = firebreak_zerocopy::arena().and_then(|a| a.store(&chunks)) {
                return Chunks::One(pages);
            }
        }
        if len > COMPACT_BELOW || chunks.is_empty() {
            return chunks.into();
        }
        let mut buf = bytes::BytesMut::with_capacity(len as usize);
        for c in &chunks {
            buf.extend_from_slice(c);
        }
        Chunks::One(buf.freeze())
    }

    /// Bytes the chunks occupy: whole pages for a body in zero-copy pages, else `len`.
    fn footprint(&self, len: u64) -> u64 {
        match (self, firebreak_zerocopy::arena::existing()) {
            (Chunks::One(b), Some(arena)) if arena.locate(b).is_some() => arena.footprint(len),
            _ => len,
        }
    }
}

impl From<Vec<Bytes>> for Chunks {
    fn from(mut chunks: Vec<Bytes>) -> Self {
        match (chunks.pop(), chunks.is_empty()) {
            (Some(one), true) => Chunks::One(one),
            (Some(last), false) => {
                chunks.push(last);
                Chunks::Many(chunks.into_boxed_slice())
            }
            (None, _) => Chunks::Many(Box::new([])),
        }
    }
}

/// Where a stored body is.
#[derive(Debug, Clone)]
pub enum ObjectBody {
    /// In memory: chunks in order (shared `Bytes`, never copied on a hit).
    Memory(Chunks),
    /// In a file of the disk tier, read block by block as it is sent.
    Disk(Arc<super::disk::DiskFile>),
}

impl ObjectBody {
    /// The in-memory chunks, if the body is in memory.
    pub fn chunks(&self) -> Option<&[Bytes]> {
        match self {
            ObjectBody::Memory(c) => Some(&c[..]),
            ObjectBody::Disk(_) => None,
        }
    }

    /// Length in bytes: the chunks' total, or the body in the disk file. Kept nowhere else,
    /// so that every stored object is 8 bytes smaller.
    pub fn len(&self) -> u64 {
        match self {
            ObjectBody::Memory(Chunks::One(b)) => b.len() as u64,
            ObjectBody::Memory(Chunks::Many(c)) => c.iter().map(|b| b.len() as u64).sum(),
            ObjectBody::Disk(f) => f.body_len(),
        }
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The disk file, if the body is on disk.
    pub fn file(&self) -> Option<&Arc<super::disk::DiskFile>> {
        match self {
            ObjectBody::Memory(_) => None,
            ObjectBody::Disk(f) => Some(f),
        }
    }
}

impl From<Vec<Bytes>> for ObjectBody {
    fn from(chunks: Vec<Bytes>) -> Self {
        ObjectBody::Memory(chunks.into())
    }
}

/// A stored response: head, body (in memory or in the disk tier), the `Vary` values it was
/// stored under, and its freshness.
#[derive(Debug)]
pub struct StoredObject {
    /// Response status and header fields as stored (hop-by-hop fields already removed).
    pub headers: super::StoredHeaders,
    /// The body.
    pub body: ObjectBody,
    /// Request header values this variant was stored under.
    pub vary: VaryKey,
    /// Freshness computed when the response (or its last validation) arrived.
    pub freshness: Freshness,
    /// Purge tags from `Surrogate-Key` / `Cache-Tag`.
    pub surrogate_keys: SurrogateKeys,
}

impl StoredObject {
    /// Response status.
    pub fn status(&self) -> StatusCode {
        self.headers.status()
    }

    /// Whether the object carries this purge tag.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.surrogate_keys.iter().any(|k| &**k == tag)
    }

    /// A copy that expires at `now` (soft purge): the next request revalidates it, and until
    /// then it stays usable for stale-while-revalidate, stale-if-error and the safety net.
    pub fn expired_copy(&self, now: std::time::SystemTime) -> StoredObject {
        let freshness = self.freshness.expired_at(now);
        StoredObject {
            headers: self.headers.clone(),
            body: self.body.clone(),
            vary: self.vary.clone(),
            freshness,
            surrogate_keys: self.surrogate_keys.clone(),
        }
    }

    /// Length of the body in bytes.
    pub fn body_len(&self) -> u64 {
        self.body.len()
    }

    /// Bytes counted against the cache budget.
    pub fn weight(&self) -> u64 {
        let headers = self.headers.size() + 32;
        let tags: usize = self.surrogate_keys.iter().map(|k| k.len() + 16).sum();
        let body = match &self.body {
            ObjectBody::Memory(chunks) => chunks.footprint(self.body_len()),
            ObjectBody::Disk(file) => super::disk::weight_on_disk(file),
        };
        body + headers as u64 + tags as u64 + self.vary.weight() + OBJECT_OVERHEAD
    }

    /// Body bytes `start..end` as shared slices of the stored chunks (no copy); empty for a
    /// body on disk (read it with [`crate::body::EdgeBody::disk`]).
    pub fn body_range(&self, start: u64, end: u64) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut offset = 0u64;
        let Some(chunks) = self.body.chunks() else {
            return out;
        };
        for chunk in chunks {
            let len = chunk.len() as u64;
            let (lo, hi) = (start.max(offset), end.min(offset + len));
            if lo < hi {
                out.push(chunk.slice((lo - offset) as usize..(hi - offset) as usize));
            }
            offset += len;
            if offset >= end {
                break;
            }
        }
        out
    }
}

/// Every stored variant of one URL, newest first, with how often each was selected.
///
/// A URL holds at most [`MAX_VARIANTS`] variants. When a new one arrives at a full set, the
/// least used goes — ties broken against the *youngest* — so a client minting variant after
/// variant (random values of a header the origin varies on) only pushes out its own earlier
/// ones, never the copy everyone else is reading. Uses are counted only while a URL has more
/// than one variant, so the common single-variant hit pays nothing for it.
#[derive(Debug, Default, Clone)]
pub struct Variants(Set);

/// The variants, laid out for the common case: most URLs have one, which then costs no
/// allocation at all (the set lives in the cache's own entry: no vector, no use counts).
/// A clone, which every lookup makes, is one reference count either way.
#[derive(Debug, Default, Clone)]
enum Set {
    #[default]
    Empty,
    One(Arc<StoredObject>),
    Many(Arc<Many>),
}

#[derive(Debug)]
struct Many {
    objects: Box<[Arc<StoredObject>]>,
    /// Selections of each variant (same order as `objects`), since it arrived or since the
    /// URL got its second variant.
    hits: Box<[AtomicU64]>,
}

impl Variants {
    /// A set of variants (newest first) with no uses counted.
    pub fn new(objects: Vec<Arc<StoredObject>>) -> Self {
        Self::with_hits(objects.into_iter().map(|o| (o, 0)))
    }

    fn with_hits(objects: impl ExactSizeIterator<Item = (Arc<StoredObject>, u64)>) -> Self {
        let mut objects = objects.peekable();
        match objects.len() {
            0 => Self(Set::Empty),
            1 => match objects.next() {
                Some((o, _)) => Self(Set::One(o)),
                None => Self(Set::Empty),
            },
            _ => {
                let (objects, hits): (Vec<_>, Vec<_>) =
                    objects.map(|(o, h)| (o, AtomicU64::new(h))).unzip();
                Self(Set::Many(Arc::new(Many {
                    objects: objects.into_boxed_slice(),
                    hits: hits.into_boxed_slice(),
                })))
            }
        }
    }

    /// The variants, newest first.
    pub fn objects(&self) -> &[Arc<StoredObject>] {
        match &self.0 {
            Set::Empty => &[],
            Set::One(o) => std::slice::from_ref(o),
            Set::Many(m) => &m.objects,
        }
    }

    /// The newest variant whose `Vary` values match the request (counted as a use).
    pub fn select(&self, request: &HeaderMap) -> Option<&Arc<StoredObject>> {
        match &self.0 {
            Set::Empty => None,
            Set::One(o) => o.vary.matches(request).then_some(o),
            Set::Many(m) => {
                let i = m.objects.iter().position(|o| o.vary.matches(request))?;
                if let Some(h) = m.hits.get(i) {
                    h.fetch_add(1, Ordering::Relaxed);
                }
                m.objects.get(i)
            }
        }
    }

    fn hits_of(&self, i: usize) -> u64 {
        match &self.0 {
            Set::Many(m) => m.hits.get(i).map_or(0, |h| h.load(Ordering::Relaxed)),
            _ => 0,
        }
    }

    /// A new set with `object` added: it replaces the variant with the same `Vary` values
    /// (and inherits its use count); variants stored under different `Vary` field names are
    /// dropped (the origin changed its mind about what the response varies on); beyond
    /// [`MAX_VARIANTS`] the least used goes, the youngest of equals first.
    pub fn with(&self, object: Arc<StoredObject>) -> Variants {
        // The common case (a fill, a promotion from disk): nothing to merge.
        if let Set::Empty = self.0 {
            return Self(Set::One(object));
        }
        let mut inherited = 0;
        let mut kept: Vec<(Arc<StoredObject>, u64)> = Vec::with_capacity(self.objects().len());
        for (i, o) in self.objects().iter().enumerate() {
            if !o.vary.same_names(&object.vary) {
                continue;
            }
            if o.vary == object.vary {
                inherited = self.hits_of(i);
            } else {
                kept.push((o.clone(), self.hits_of(i)));
            }
        }
        while kept.len() >= MAX_VARIANTS {
            // `kept` is newest first: among the least used, the first found is the youngest.
            let least = kept
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, hits))| *hits)
                .map(|(i, _)| i);
            match least {
                Some(i) => {
                    kept.remove(i);
                }
                None => break,
            }
        }
        let mut all = Vec::with_capacity(kept.len() + 1);
        all.push((object, inherited));
        all.extend(kept);
        Variants::with_hits(all.into_iter())
    }

    /// Bytes counted against the cache budget.
    pub fn weight(&self) -> u64 {
        self.objects().iter().map(|o| o.weight()).sum()
    }

    /// Every purge tag of every variant.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.objects()
            .iter()
            .flat_map(|o| o.surrogate_keys.iter().map(|k| &**k))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::time::{Duration, SystemTime};

    use crate::testutil::headers as h;

    fn object(vary: VaryKey, body: &'static [u8]) -> Arc<StoredObject> {
        Arc::new(StoredObject {
            headers: Default::default(),
            body: vec![Bytes::from_static(body)].into(),
            vary,
            freshness: Freshness::from(crate::http::freshness::FreshnessParts {
                response_time: SystemTime::UNIX_EPOCH,
                corrected_initial_age: Duration::ZERO,
                lifetime: Duration::ZERO,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                must_revalidate: false,
            }),
            surrogate_keys: Default::default(),
        })
    }

    #[test]
    fn vary_values_are_normalised_and_absent_differs_from_empty() {
        let resp = h(&[("vary", "Accept-Encoding, accept-language")]);
        let k = VaryKey::from_exchange(&resp, &h(&[("accept-encoding", "gzip, br")])).unwrap();
        assert!(k.matches(&h(&[("accept-encoding", "gzip,br")])));
        assert!(k.matches(&h(&[
            ("accept-encoding", "gzip"),
            ("accept-encoding", "br")
        ])));
        assert!(!k.matches(&h(&[("accept-encoding", "br, gzip")])));
        assert!(!k.matches(&h(&[
            ("accept-encoding", "gzip, br"),
            ("accept-language", "en")
        ])));
        let empty = VaryKey::from_exchange(&resp, &h(&[("accept-encoding", "")])).unwrap();
        assert!(!empty.matches(&h(&[])));
    }

    #[test]
    fn vary_star_and_bad_names_are_unkeyable() {
        assert!(VaryKey::from_exchange(&h(&[("vary", "*")]), &h(&[])).is_none());
        assert!(VaryKey::from_exchange(&h(&[("vary", "a b")]), &h(&[])).is_none());
        assert_eq!(
            VaryKey::from_exchange(&h(&[]), &h(&[])),
            Some(VaryKey::default())
        );
    }

    #[test]
    fn variants_replace_same_values_and_cap_count() {
        let resp = h(&[("vary", "x-v")]);
        let mut set = Variants::default();
        for i in 0..(MAX_VARIANTS + 10) {
            let v = HeaderValue::from_str(&i.to_string()).unwrap();
            let mut req = HeaderMap::new();
            req.insert("x-v", v);
            set = set.with(object(VaryKey::from_exchange(&resp, &req).unwrap(), b"x"));
        }
        assert_eq!(set.objects().len(), MAX_VARIANTS);
        let req = h(&[("x-v", "41")]);
        let k = VaryKey::from_exchange(&resp, &req).unwrap();
        set = set.with(object(k, b"new"));
        assert_eq!(set.objects().len(), MAX_VARIANTS);
        assert_eq!(
            &set.select(&req).unwrap().body.chunks().unwrap()[0][..],
            b"new"
        );
        // A response without Vary drops the keyed variants.
        let plain = set.with(object(VaryKey::default(), b"plain"));
        assert_eq!(plain.objects().len(), 1);
    }

    #[test]
    fn minted_variants_do_not_push_out_the_popular_one() {
        let resp = h(&[("vary", "x-v")]);
        let key = |v: &str| {
            let mut req = HeaderMap::new();
            req.insert("x-v", HeaderValue::from_str(v).unwrap());
            (VaryKey::from_exchange(&resp, &req).unwrap(), req)
        };
        let (k, popular) = key("popular");
        let mut set = Variants::default().with(object(k, b"popular"));
        // Readers keep using it while an attacker mints values, interleaved and in bursts.
        for i in 0..(MAX_VARIANTS * 4) {
            if i % 8 == 0 {
                assert_eq!(
                    &set.select(&popular).unwrap().body.chunks().unwrap()[0][..],
                    b"popular"
                );
            }
            set = set.with(object(key(&format!("junk{i}")).0, b"junk"));
            assert!(set.objects().len() <= MAX_VARIANTS);
        }
        assert_eq!(
            &set.select(&popular).unwrap().body.chunks().unwrap()[0][..],
            b"popular"
        );
        // A revalidated popular copy keeps its standing.
        let (k, _) = key("popular");
        set = set.with(object(k, b"popular2"));
        for i in 0..(MAX_VARIANTS * 2) {
            set = set.with(object(key(&format!("more{i}")).0, b"junk"));
        }
        assert_eq!(
            &set.select(&popular).unwrap().body.chunks().unwrap()[0][..],
            b"popular2"
        );
    }

    #[test]
    fn cache_keys_short_and_long_are_the_same_string() {
        for path in ["/a?b=c".to_owned(), format!("/{}", "x".repeat(300))] {
            let key = CacheKey::new("svc", "example.com", &path);
            assert_eq!(key.as_str(), format!("svc\nexample.com\n{path}"));
            assert_eq!(key.service(), "svc");
            assert_eq!(key.len(), key.as_str().len());
        }
        // Exactly at the stack buffer's size, and one past it.
        for n in [256 - 14, 256 - 13] {
            let path = "p".repeat(n);
            let key = CacheKey::new("svc", "host", &path);
            assert_eq!(key.as_str(), format!("svc\nhost\n{path}"));
        }
    }

    #[test]
    fn surrogate_keys_from_both_headers_bounded() {
        let k = surrogate_keys(&h(&[
            ("surrogate-key", "a b  c"),
            ("cache-tag", "c,d, e"),
            ("cache-tag", "f"),
        ]));
        let k: Vec<&str> = k.iter().map(|s| &**s).collect();
        assert_eq!(k, ["a", "b", "c", "d", "e", "f"]);
        let many = (0..200)
            .map(|i| format!("k{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let mut hm = HeaderMap::new();
        hm.insert("surrogate-key", HeaderValue::from_str(&many).unwrap());
        assert_eq!(surrogate_keys(&hm).len(), MAX_SURROGATE_KEYS);
    }

    #[test]
    fn body_range_slices_across_chunks() {
        let mut o = Arc::try_unwrap(object(VaryKey::default(), b"")).unwrap();
        o.body = vec![
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"def"),
            Bytes::from_static(b"gh"),
        ]
        .into();
        let joined = |v: Vec<Bytes>| v.iter().flat_map(|b| b.to_vec()).collect::<Vec<u8>>();
        assert_eq!(joined(o.body_range(2, 7)), b"cdefg");
        assert_eq!(joined(o.body_range(0, 8)), b"abcdefgh");
        assert_eq!(joined(o.body_range(7, 8)), b"h");
    }
}

#[cfg(test)]
mod layout {
    use super::*;

    /// Every cached object pays for these structures: growing them shows in memory per
    /// object (`bench/`), so a change that does says so here. With glibc's malloc an
    /// `Arc<StoredObject>` (the object and two counts) of at most 104 bytes is one 112-byte
    /// chunk; 8 bytes more would make it 128.
    #[test]
    fn per_object_structures_stay_small() {
        assert!(std::mem::size_of::<StoredObject>() <= 88);
        assert_eq!(std::mem::size_of::<Variants>(), 16);
        assert_eq!(std::mem::size_of::<Chunks>(), 32);
        assert_eq!(std::mem::size_of::<SurrogateKeys>(), 8);
    }
}
