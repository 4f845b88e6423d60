//! Stored response header fields in one compact buffer.
//!
//! A `HeaderMap` costs about a kilobyte and a half for the nine fields of a typical response
//! (bucket array sized for growth, 100-odd bytes per bucket). Cached objects keep their
//! fields as `name:value\n` lines in one `Bytes` instead — a few hundred bytes — and build a
//! `HeaderMap` when a response is made from them; values are slices of the buffer, not copies.
//!
//! Objects that are hit keep that map ready: the first response built from an object parses
//! its block once into a shared map, and every later hit clones it (no name lookup, value
//! check or hashing per hit). The ready maps of all objects together stay within
//! [`READY_MAPS_BUDGET`] bytes; past it objects parse per hit as before, so an edge full of
//! small hot objects does not grow by a map per object. Copies of an object's fields (a disk
//! object promoted to memory, a soft purge's expired copy) share its map. A map's bytes
//! return to the budget when the last object holding it leaves the cache.
//!
//! A hit adds `Age`, `Via` and `Cache-Status` to the stored fields. A map made for a hit
//! (the ready map, or one parsed per hit) holds a slot for each the origin did not send,
//! last, so that the clone a hit makes has room for them and they are set in place
//! ([`HitFields`] says which are slots): cloned exactly full, the map grew (reallocated and
//! copied) on the first field added, on every hit.
//!
//! Blocks are interned: objects whose fields are the same bytes (one origin's objects
//! stored in the same second with the same validators, or with none) share one block and
//! one ready map, found through a bounded table of recent blocks by hash. An object whose
//! block is shared pays a pointer for its fields; one with unique fields pays its block.

use crate::http::freshness::SURROGATE_CONTROL;
use crate::http::headers::CACHE_STATUS;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::cell::RefCell;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};

/// Bytes all objects' ready header maps may hold together (process-wide).
pub const READY_MAPS_BUDGET: usize = 32 * 1024 * 1024;
/// What one ready map is charged: the map and its index, per field a bucket.
fn ready_map_charge(fields: usize) -> usize {
    192 + fields * 128
}

/// A byte budget shared by ready header maps.
#[derive(Debug)]
pub struct MapBudget {
    used: AtomicUsize,
    limit: usize,
}

impl MapBudget {
    /// A budget of `limit` bytes.
    pub const fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Bytes held by ready maps now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn has_room(&self) -> bool {
        self.used() < self.limit
    }

    fn reserve(&self, charge: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b + charge <= self.limit).then_some(b + charge)
            })
            .is_ok()
    }

    fn release(&self, charge: usize) {
        self.used.fetch_sub(charge, Ordering::Relaxed);
    }
}

/// The budget of every stored object's ready map.
pub static READY_MAPS: MapBudget = MapBudget::new(READY_MAPS_BUDGET);

struct Ready {
    map: HeaderMap,
    slots: HitFields,
    charge: usize,
    budget: &'static MapBudget,
}

impl Drop for Ready {
    fn drop(&mut self) {
        self.budget.release(self.charge);
    }
}

/// An object's parsed header map, built at its first hit when the budget allows; shared by
/// copies of the same fields, and not part of equality.
#[derive(Default)]
struct ReadyMap(OnceLock<Arc<Ready>>);

impl std::fmt::Debug for ReadyMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "ready" } else { "-" })
    }
}

impl ReadyMap {
    #[cfg(test)]
    fn get(&self) -> Option<&HeaderMap> {
        self.0.get().map(|r| &r.map)
    }

    fn get_for_hit(&self) -> Option<(HeaderMap, HitFields)> {
        self.0.get().map(|r| (r.map.clone(), r.slots))
    }

    /// Installs `map` if `budget` has room for it; of racing installs one wins.
    fn install(&self, map: HeaderMap, slots: HitFields, fields: usize, budget: &'static MapBudget) {
        let charge = ready_map_charge(fields);
        if !budget.reserve(charge) {
            return;
        }
        let ready = Arc::new(Ready {
            map,
            slots,
            charge,
            budget,
        });
        // Of racing installs, the loser's map is dropped and returns its charge.
        let _ = self.0.set(ready);
    }
}

/// Which of the fields a hit adds are slots in its map (added for it, holding a placeholder,
/// to be set) rather than the origin's (to be appended to). `Age` is always replaced, so its
/// slot needs no flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HitFields {
    /// `Via` is a slot: set it, nobody's hops precede ours.
    pub via: bool,
    /// `Cache-Status` is a slot: set it (or remove it), no cache's entry precedes ours.
    pub cache_status: bool,
    /// `Alt-Svc` is a slot, to be set by whoever asked for it ([`Advertise::AltSvc`]).
    pub alt_svc: bool,
    /// `Surrogate-Control` (for this cache only, never sent on) was left out of the map when
    /// it was made, once, instead of removed from every response.
    pub no_surrogate_control: bool,
}

/// Whether a hit's response will carry `Alt-Svc` (HTTP/3 advertised by its listener): such a
/// map gets a slot for it. A clone of a `HeaderMap` keeps no spare room for entries, so a
/// field added to a cloned map reallocates its entries (once per hit, over every listener
/// that advertises HTTP/3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advertise {
    /// No `Alt-Svc` is added.
    Nothing,
    /// The caller sets `Alt-Svc` on the response (the slot holds a placeholder until then).
    AltSvc,
}

impl HitFields {
    /// Slots a map may get: `Age`, `Via`, `Cache-Status`, `Alt-Svc`.
    const MAX_SLOTS: usize = 4;

    /// Adds a slot to `map` for each field a hit adds that the origin did not send.
    fn add_slots(map: &mut HeaderMap, advertise: Advertise) -> Self {
        let placeholder = HeaderValue::from_static("-");
        if !map.contains_key(http::header::AGE) {
            map.insert(http::header::AGE, HeaderValue::from_static("0"));
        }
        let via = !map.contains_key(http::header::VIA);
        if via {
            map.insert(http::header::VIA, placeholder.clone());
        }
        let cache_status = !map.contains_key(&CACHE_STATUS);
        if cache_status {
            map.insert(&CACHE_STATUS, placeholder.clone());
        }
        let alt_svc = advertise == Advertise::AltSvc && !map.contains_key(http::header::ALT_SVC);
        if alt_svc {
            map.insert(http::header::ALT_SVC, placeholder);
        }
        Self {
            via,
            cache_status,
            alt_svc,
            no_surrogate_control: false,
        }
    }
}

/// Status and header fields of a stored response: a pointer to a shared, interned head (see
/// [`intern`]), so objects whose status and fields are byte for byte the same hold one block
/// and one ready map between them.
#[derive(Debug, Clone)]
pub struct StoredHeaders(Arc<Head>);

/// The status, the packed block and its ready maps (without and with an `Alt-Svc` slot).
#[derive(Debug, Default)]
struct Head {
    status: StatusCode,
    block: Bytes,
    ready: ReadyMap,
    ready_alt_svc: ReadyMap,
}

impl PartialEq for StoredHeaders {
    fn eq(&self, other: &Self) -> bool {
        self.0.status == other.0.status && self.0.block == other.0.block
    }
}

impl Eq for StoredHeaders {}

impl Default for StoredHeaders {
    fn default() -> Self {
        Self(Arc::new(Head::default()))
    }
}

/// Slots of the interning table: a direct-mapped cache of recently stored blocks.
const INTERN_SLOTS: usize = 4096;
/// Largest block the interning table looks up (larger ones are rare and kept whole).
const INTERN_MAX: usize = 4096;
/// A scratch buffer larger than this is given back after use.
const SCRATCH_KEEP: usize = 16 * 1024;

/// Recently stored blocks, by a hash of their bytes: one slot per hash, the newest block
/// wins its slot. Slots hold weak pointers, so a block leaves memory with its last object
/// (only the slot's small allocation stays until the slot is reused): the table's memory is
/// bounded by its slot count, whatever is stored.
struct Interner {
    slots: Box<[Mutex<Weak<Head>>]>,
    hasher: RandomState,
}

static INTERNER: LazyLock<Interner> = LazyLock::new(|| Interner {
    slots: (0..INTERN_SLOTS).map(|_| Mutex::new(Weak::new())).collect(),
    hasher: RandomState::new(),
});

thread_local! {
    /// Where a block is packed before it is looked up, so a block already stored costs no
    /// allocation.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The shared head for `status` and `block`: the stored one if a recent object has the same
/// status and bytes, else a new one (made from `owned`, or a copy of `block`) that later
/// objects may share.
fn intern(status: StatusCode, block: &[u8], owned: Option<Bytes>) -> Arc<Head> {
    let make = |owned: Option<Bytes>| {
        Arc::new(Head {
            status,
            block: owned.unwrap_or_else(|| Bytes::copy_from_slice(block)),
            ready: ReadyMap::default(),
            ready_alt_svc: ReadyMap::default(),
        })
    };
    if block.is_empty() || block.len() > INTERN_MAX {
        return make(owned);
    }
    let table = &*INTERNER;
    let i = (table.hasher.hash_one((status.as_u16(), block)) as usize) % table.slots.len();
    let Some(slot) = table.slots.get(i) else {
        return make(owned);
    };
    let mut slot = match slot.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(head) = slot.upgrade() {
        if head.status == status && head.block == block {
            return head;
        }
    }
    let head = make(owned);
    *slot = Arc::downgrade(&head);
    head
}

/// `name:value\n` per field, in order.
fn pack_into(headers: &HeaderMap, block: &mut Vec<u8>) {
    for (name, value) in headers.iter().take(usize::from(u16::MAX)) {
        block.extend_from_slice(name.as_str().as_bytes());
        block.push(b':');
        block.extend_from_slice(value.as_bytes());
        block.push(b'\n');
    }
}

fn pack(headers: &HeaderMap) -> Vec<u8> {
    let mut block = Vec::new();
    pack_into(headers, &mut block);
    block
}

impl StoredHeaders {
    /// Packs `headers` (names cannot contain `:`, values cannot contain `\n`), sharing the
    /// block of an earlier object with the same status and fields.
    pub fn from_map(status: StatusCode, headers: &HeaderMap) -> Self {
        SCRATCH.with(|scratch| {
            let Ok(mut block) = scratch.try_borrow_mut() else {
                return Self(intern(status, &pack(headers), None));
            };
            block.clear();
            pack_into(headers, &mut block);
            let head = intern(status, &block, None);
            if block.capacity() > SCRATCH_KEEP {
                *block = Vec::new();
            }
            Self(head)
        })
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// The packed `name:value\n` lines (for the disk tier).
    pub fn block(&self) -> &[u8] {
        &self.0.block
    }

    /// Fields from a packed block read back from storage; lines that do not parse are
    /// skipped when the fields are read.
    pub fn from_block(status: StatusCode, block: Bytes) -> Self {
        Self(intern(status, &block.clone(), Some(block)))
    }

    /// How many fields (lines) the block holds: counted, not kept (every byte of a stored
    /// object is paid for by every object).
    fn count(&self) -> usize {
        self.0.block.iter().filter(|b| **b == b'\n').count()
    }

    /// The fields, in their original order.
    pub fn iter(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        let mut offset = 0usize;
        self.0.block.split(|b| *b == b'\n').filter_map(move |line| {
            let start = offset;
            offset += line.len() + 1;
            let colon = line.iter().position(|b| *b == b':')?;
            let name = HeaderName::from_bytes(line.get(..colon)?).ok()?;
            let value_start = start + colon + 1;
            let value = self.0.block.slice(value_start..start + line.len());
            HeaderValue::from_maybe_shared(value)
                .ok()
                .map(|v| (name, v))
        })
    }

    /// The fields of a response served from this object (a hit), with the slots of
    /// [`HitFields`] and without `Surrogate-Control`: a clone of the ready map, or parsed from
    /// the block and kept as the ready map when the budget allows.
    pub fn for_response(&self, advertise: Advertise) -> (HeaderMap, HitFields) {
        self.for_response_within(&READY_MAPS, advertise)
    }

    /// [`StoredHeaders::for_response`] with the ready map charged to `budget`.
    pub fn for_response_within(
        &self,
        budget: &'static MapBudget,
        advertise: Advertise,
    ) -> (HeaderMap, HitFields) {
        let ready = match advertise {
            Advertise::Nothing => &self.0.ready,
            Advertise::AltSvc => &self.0.ready_alt_svc,
        };
        if let Some(hit) = ready.get_for_hit() {
            return hit;
        }
        let fields = self.count() + HitFields::MAX_SLOTS;
        // Room in the index (a clone keeps its size) for one field more than the slots (a
        // header rule) and one to spare: hyper's `entry()` for `Date` and `Content-Length`
        // grows (rehashes) a map that is full even when the field is there.
        let mut map = self.map_with_room(fields + 2);
        map.remove(SURROGATE_CONTROL);
        let slots = HitFields {
            no_surrogate_control: true,
            ..HitFields::add_slots(&mut map, advertise)
        };
        if budget.has_room() {
            ready.install(map.clone(), slots, fields, budget);
        }
        (map, slots)
    }

    /// A `HeaderMap` with every field, parsed from the block (the ready map, if any, is
    /// neither used nor made: for revalidation and slice checks, not for hits).
    pub fn to_map(&self) -> HeaderMap {
        self.map_with_room(self.count())
    }

    /// Every field, parsed from the block into a map made for `capacity` fields.
    fn map_with_room(&self, capacity: usize) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(capacity);
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
        self.0.block.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testutil::headers;
    use http::header::{AGE, VIA};

    /// The stored fields of a hit's map: its slots taken out (an `Age` slot is `0`).
    fn stored_fields((mut map, slots): (HeaderMap, HitFields)) -> HeaderMap {
        if map.get(AGE).is_some_and(|v| v == "0") {
            map.remove(AGE);
        }
        if slots.via {
            map.remove(VIA);
        }
        if slots.cache_status {
            map.remove(&CACHE_STATUS);
        }
        if slots.alt_svc {
            map.remove(http::header::ALT_SVC);
        }
        map
    }

    #[test]
    fn a_hit_sets_its_fields_in_slots_without_growing_the_map() {
        let src = headers(&[("content-type", "text/plain"), ("x-slot-test", "1")]);
        let stored = StoredHeaders::from_map(StatusCode::OK, &src);
        // Parsed (and made the ready map) the first time, cloned from it the second; a map
        // for a listener advertising HTTP/3 has its own ready map, with an Alt-Svc slot.
        for advertise in [Advertise::Nothing, Advertise::AltSvc, Advertise::Nothing] {
            for _ in 0..2 {
                let (mut map, slots) = stored.for_response(advertise);
                let alt_svc = advertise == Advertise::AltSvc;
                assert_eq!(
                    slots,
                    HitFields {
                        via: true,
                        cache_status: true,
                        alt_svc,
                        no_surrogate_control: true,
                    }
                );
                let room = map.capacity();
                let len = map.len();
                map.insert(AGE, HeaderValue::from_static("5"));
                map.insert(VIA, HeaderValue::from_static("1.1 firebreak"));
                map.insert(&CACHE_STATUS, HeaderValue::from_static("firebreak; hit"));
                if alt_svc {
                    assert_eq!(map[http::header::ALT_SVC], "-");
                    map.insert(
                        http::header::ALT_SVC,
                        HeaderValue::from_static("h3=\":443\""),
                    );
                } else {
                    assert!(!map.contains_key(http::header::ALT_SVC));
                }
                assert_eq!(map.capacity(), room, "setting a slot grew the map");
                assert_eq!(map.len(), len, "a slot was missing");
                // One field more (a header rule), then hyper's `entry()` for Date: still no
                // growth of the index.
                map.insert("x-rule", HeaderValue::from_static("1"));
                map.entry(http::header::DATE)
                    .or_insert(HeaderValue::from_static("x"));
                assert_eq!(map.capacity(), room, "a field after the slots grew the map");
                map.remove("x-rule");
                map.remove(http::header::DATE);
                // The hit's fields come after the stored ones, in this order.
                let names: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
                let mut expected =
                    vec!["content-type", "x-slot-test", "age", "via", "cache-status"];
                if alt_svc {
                    expected.push("alt-svc");
                }
                assert_eq!(names, expected);
            }
        }
        assert!(stored.0.ready.get().is_some() && stored.0.ready_alt_svc.get().is_some());
        // The origin's own Via and Cache-Status are not slots: a hit appends to them.
        let upstream = headers(&[
            ("via", "1.1 shield"),
            ("cache-status", "shield; hit"),
            ("age", "7"),
            ("alt-svc", "h2=\":8443\""),
        ]);
        let (map, slots) =
            StoredHeaders::from_map(StatusCode::OK, &upstream).for_response(Advertise::AltSvc);
        assert_eq!(
            slots,
            HitFields {
                no_surrogate_control: true,
                ..HitFields::default()
            }
        );
        assert_eq!(map, upstream);
    }

    #[test]
    fn a_hit_map_has_no_surrogate_control_but_the_stored_block_keeps_it() {
        let src = headers(&[
            ("surrogate-control", "max-age=60"),
            ("content-type", "text/plain"),
            ("surrogate-control", "stale-if-error=5"),
        ]);
        let stored = StoredHeaders::from_map(StatusCode::OK, &src);
        for _ in 0..2 {
            let (map, slots) = stored.for_response(Advertise::Nothing);
            assert!(slots.no_surrogate_control);
            assert!(!map.contains_key(SURROGATE_CONTROL));
            assert_eq!(map["content-type"], "text/plain");
        }
        // Revalidation and freshness read the stored fields whole.
        assert_eq!(stored.to_map(), src);
    }

    #[test]
    fn round_trips_order_repeats_and_odd_values() {
        let src = headers(&[
            ("content-type", "text/plain"),
            ("x-a", "1"),
            ("x-a", "2:3"),
            ("x-empty", ""),
            ("etag", "W/\"x:y\""),
        ]);
        let stored = StoredHeaders::from_map(StatusCode::OK, &src);
        assert_eq!(stored.to_map(), src);
        assert_eq!(stored_fields(stored.for_response(Advertise::Nothing)), src);
        assert_eq!(stored_fields(stored.for_response(Advertise::Nothing)), src);
        assert_eq!(stored.get(&http::header::ETAG).unwrap(), "W/\"x:y\"");
        assert!(stored.get(&http::header::AGE).is_none());
        assert_eq!(StoredHeaders::default().to_map().len(), 0);
    }

    #[test]
    fn ready_maps_are_reused_within_their_budget_and_returned_with_the_object() {
        // Room for two maps of two fields (and the four slots a hit may have).
        const MAP: usize = 192 + 6 * 128;
        static BUDGET: MapBudget = MapBudget::new(2 * MAP);
        // Three objects with fields of their own (the same fields would share one map).
        let srcs: Vec<HeaderMap> = (0..3)
            .map(|i| {
                headers(&[
                    ("content-type", "text/plain"),
                    ("x-ready-test", &i.to_string()),
                ])
            })
            .collect();
        let objects: Vec<StoredHeaders> = srcs
            .iter()
            .map(|h| StoredHeaders::from_map(StatusCode::OK, h))
            .collect();
        for (o, src) in objects.iter().zip(&srcs) {
            assert_eq!(
                &stored_fields(o.for_response_within(&BUDGET, Advertise::Nothing)),
                src
            );
        }
        // The first two got a ready map; the third parses per hit, and answers the same.
        let ready: Vec<bool> = objects.iter().map(|o| o.0.ready.get().is_some()).collect();
        assert_eq!(ready, [true, true, false]);
        assert_eq!(BUDGET.used(), 2 * MAP);
        for (o, src) in objects.iter().zip(&srcs) {
            assert_eq!(
                &stored_fields(o.for_response_within(&BUDGET, Advertise::Nothing)),
                src
            );
        }
        // A copy (a promotion, a soft purge's expired copy) shares the map, at no charge,
        // and compares equal.
        let copy = objects[0].clone();
        assert!(copy.0.ready.get().is_some());
        assert_eq!(copy, objects[0]);
        assert_eq!(BUDGET.used(), 2 * MAP);
        // An object leaving the cache returns its map's bytes once no copy holds it; the
        // next hit may take them.
        let mut objects = objects;
        objects.remove(0);
        assert_eq!(BUDGET.used(), 2 * MAP);
        drop(copy);
        assert_eq!(BUDGET.used(), MAP);
        assert_eq!(
            stored_fields(objects[1].for_response_within(&BUDGET, Advertise::Nothing)),
            srcs[2]
        );
        assert!(objects[1].0.ready.get().is_some());
        drop(objects);
        assert_eq!(BUDGET.used(), 0);
    }

    #[test]
    fn objects_with_the_same_fields_share_one_block_and_its_ready_map() {
        let src = headers(&[("content-type", "text/plain"), ("x-intern-test", "same")]);
        let a = StoredHeaders::from_map(StatusCode::OK, &src);
        let b = StoredHeaders::from_map(StatusCode::OK, &src);
        assert!(Arc::ptr_eq(&a.0, &b.0));
        // Read back from the disk tier: the same bytes, the same head.
        let c = StoredHeaders::from_block(StatusCode::OK, Bytes::copy_from_slice(a.block()));
        assert!(Arc::ptr_eq(&a.0, &c.0));
        // A map made for one is the map of all.
        assert_eq!(stored_fields(a.for_response(Advertise::Nothing)), src);
        assert!(b.0.ready.get().is_some());
        // Other fields, another head; equal fields compare equal either way.
        let other =
            StoredHeaders::from_map(StatusCode::OK, &headers(&[("x-intern-test", "other")]));
        assert!(!Arc::ptr_eq(&a.0, &other.0));
        assert_ne!(a, other);
        // The same fields under another status: another head.
        let gone = StoredHeaders::from_map(StatusCode::GONE, &src);
        assert!(!Arc::ptr_eq(&a.0, &gone.0));
        assert_ne!(a, gone);
        assert_eq!(gone.status(), StatusCode::GONE);
        // Once every object holding a block is gone, the next one makes it anew.
        let weak = Arc::downgrade(&a.0);
        drop((a, b, c));
        assert!(weak.upgrade().is_none());
        let d = StoredHeaders::from_map(StatusCode::OK, &src);
        assert_eq!(d.to_map(), src);
        // A block too large to look up is kept whole, never shared.
        let big = "v".repeat(INTERN_MAX);
        let big = headers(&[("x-intern-test", big.as_str())]);
        let (e, f) = (
            StoredHeaders::from_map(StatusCode::OK, &big),
            StoredHeaders::from_map(StatusCode::OK, &big),
        );
        assert!(!Arc::ptr_eq(&e.0, &f.0));
        assert_eq!(e, f);
        assert_eq!(e.to_map(), big);
    }
}
