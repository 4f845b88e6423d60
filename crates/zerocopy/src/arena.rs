//! The pages bodies live in: one sparse `memfd` mapped read-only, bodies written into it with
//! `pwrite` (an error, never a signal, when memory runs out), and a first-fit page allocator
//! that coalesces freed ranges.

use bytes::Bytes;
use rustix::fs::{FallocateFlags, MemfdFlags};
use rustix::mm::{Advice, MapFlags, ProtFlags};
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

/// Address space reserved for the pages. Nothing is used until written (the file is sparse
/// and freed ranges are punched out), so this bounds fragmentation, not memory: the cache's
/// own budget bounds the bytes in use.
const RESERVE: u64 = 64 << 30;
/// Smallest reservation tried when a large one is refused (a process under `ulimit -v`).
const RESERVE_MIN: u64 = 256 << 20;

/// The process's pages; `None` when they could not be set up (no `memfd`, no address space):
/// bodies then stay in ordinary memory and are sent by copying, as without this crate.
pub fn arena() -> Option<&'static Arena> {
    *ARENA.get_or_init(|| match Arena::create() {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::warn!(error = %e, "zero-copy bodies unavailable: bodies are copied when sent");
            None
        }
    })
}

/// The arena if it has been set up, without setting it up (the send path asks this).
pub fn existing() -> Option<&'static Arena> {
    ARENA.get().copied().flatten()
}

static ARENA: OnceLock<Option<&'static Arena>> = OnceLock::new();

/// Shared-memory pages holding bodies.
pub struct Arena {
    fd: OwnedFd,
    /// Start of the read-only mapping of the whole file.
    base: *const u8,
    /// Bytes mapped (and the file's size).
    size: u64,
    page: u64,
    free: Mutex<FreeList>,
    live_bytes: AtomicU64,
    live_bodies: AtomicU64,
    /// Ranges not reused because their pages could not be punched out.
    leaked_pages: AtomicU64,
}

// SAFETY: `base` points into a shared mapping that lives as long as the process (the arena
// is never dropped: it is a static) and is only read through it; the allocator is behind a
// mutex.
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

/// What the arena holds, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Bodies stored and not yet freed.
    pub bodies: u64,
    /// Bytes of pages they occupy.
    pub bytes: u64,
    /// Pages never reused because punching them out failed.
    pub leaked_pages: u64,
}

impl Arena {
    fn create() -> std::io::Result<&'static Arena> {
        let fd = rustix::fs::memfd_create("firebreak-bodies", MemfdFlags::CLOEXEC)?;
        let page = rustix::param::page_size() as u64;
        let mut size = RESERVE;
        let base = loop {
            rustix::fs::ftruncate(&fd, size)?;
            let len = usize::try_from(size).map_err(|_| std::io::ErrorKind::InvalidInput)?;
            // SAFETY: a new mapping at an address the kernel picks; it aliases nothing. It is
            // read-only, so no Rust reference can be written through, and it is never unmapped.
            let mapped = unsafe {
                rustix::mm::mmap(
                    std::ptr::null_mut(),
                    len,
                    ProtFlags::READ,
                    MapFlags::SHARED | MapFlags::NORESERVE,
                    &fd,
                    0,
                )
            };
            match mapped {
                Ok(p) => {
                    // Cached bodies stay out of core dumps (and a sparse 64 GiB mapping out of
                    // the dump's size). Advice only: a refusal changes nothing else.
                    // SAFETY: the range is the mapping just made.
                    let _ = unsafe { rustix::mm::madvise(p, len, Advice::LinuxDontDump) };
                    break p.cast::<u8>().cast_const();
                }
                Err(e) if size / 2 >= RESERVE_MIN => {
                    tracing::debug!(error = %e, size, "zero-copy reservation refused, trying half");
                    size /= 2;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let arena = Box::leak(Box::new(Arena {
            fd,
            base,
            size,
            page,
            free: Mutex::new(FreeList::new(size / page)),
            live_bytes: AtomicU64::new(0),
            live_bodies: AtomicU64::new(0),
            leaked_pages: AtomicU64::new(0),
        }));
        Ok(arena)
    }

    /// Bytes a body of `len` bytes occupies here (whole pages).
    pub fn footprint(&self, len: u64) -> u64 {
        len.div_ceil(self.page).saturating_mul(self.page)
    }

    /// What the arena holds now.
    pub fn stats(&self) -> ArenaStats {
        ArenaStats {
            bodies: self.live_bodies.load(Ordering::Relaxed),
            bytes: self.live_bytes.load(Ordering::Relaxed),
            leaked_pages: self.leaked_pages.load(Ordering::Relaxed),
        }
    }

    /// Copies `parts` (one body, in order) into fresh pages; `None` when the body is empty,
    /// the address space is exhausted or memory runs out (the caller keeps the body in
    /// ordinary memory then).
    pub fn store(&'static self, parts: &[Bytes]) -> Option<Bytes> {
        let size: usize = parts.iter().map(Bytes::len).sum();
        if size == 0 {
            return None;
        }
        let pages = (size as u64).div_ceil(self.page);
        let first = self.lock().alloc(pages)?;
        let start = first * self.page;
        let mut at = start;
        for part in parts {
            if let Err(e) = write_all_at(self.fd.as_fd(), part, at) {
                tracing::debug!(error = %e, "zero-copy body not stored");
                self.release(first, pages);
                return None;
            }
            at += part.len() as u64;
        }
        self.live_bytes
            .fetch_add(pages * self.page, Ordering::Relaxed);
        self.live_bodies.fetch_add(1, Ordering::Relaxed);
        Some(Bytes::from_owner(Pages {
            arena: self,
            first,
            pages,
            len: size,
        }))
    }

    /// Where `buf` lies in the file, if it lies wholly in the mapping.
    pub fn locate(&self, buf: &[u8]) -> Option<u64> {
        let base = self.base as usize;
        let at = (buf.as_ptr() as usize).checked_sub(base)?;
        let end = (at as u64).checked_add(buf.len() as u64)?;
        (end <= self.size && !buf.is_empty()).then_some(at as u64)
    }

    /// The file the pages are in (the source of `sendfile`).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FreeList> {
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Punches the pages out (a socket still sending them keeps the old pages) and makes
    /// the range available again.
    fn release(&self, first: u64, pages: u64) {
        let punched = rustix::fs::fallocate(
            &self.fd,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            first * self.page,
            pages * self.page,
        );
        match punched {
            Ok(()) => self.lock().free(first, pages),
            Err(e) => {
                // Rewriting pages a socket may still send would corrupt a response: the
                // range is given up instead.
                tracing::warn!(error = %e, "zero-copy pages not reusable");
                self.leaked_pages.fetch_add(pages, Ordering::Relaxed);
            }
        }
    }
}

/// One body's pages: the owner behind its `Bytes`.
struct Pages {
    arena: &'static Arena,
    first: u64,
    pages: u64,
    len: usize,
}

impl AsRef<[u8]> for Pages {
    fn as_ref(&self) -> &[u8] {
        let offset = (self.first * self.arena.page) as usize;
        // SAFETY: `first..first + pages` was allocated to this body alone and lies within the
        // mapping (the allocator hands out ranges below `size`); the mapping is never
        // unmapped; its pages were written before this owner existed and are not written
        // again until it drops (`release` runs from `Drop` only). `len` fits in those pages.
        unsafe { std::slice::from_raw_parts(self.arena.base.add(offset), self.len) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        let arena = self.arena;
        arena
            .live_bytes
            .fetch_sub(self.pages * arena.page, Ordering::Relaxed);
        arena.live_bodies.fetch_sub(1, Ordering::Relaxed);
        arena.release(self.first, self.pages);
    }
}

fn write_all_at(fd: BorrowedFd<'_>, mut buf: &[u8], mut at: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::pwrite(fd, buf, at) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = buf.get(n..).unwrap_or_default();
                at += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Free page ranges: first fit by size (the smallest range that fits), coalesced with their
/// neighbours when freed, and a bump pointer for never-used space.
#[derive(Debug)]
struct FreeList {
    /// (pages, first page) of every free range.
    by_size: BTreeSet<(u64, u64)>,
    /// first page -> pages, of the same ranges.
    by_start: BTreeMap<u64, u64>,
    /// Pages below this have been handed out at least once.
    top: u64,
    /// Pages in the file.
    limit: u64,
}

impl FreeList {
    fn new(limit: u64) -> Self {
        Self {
            by_size: BTreeSet::new(),
            by_start: BTreeMap::new(),
            top: 0,
            limit,
        }
    }

    /// The first page of `n` free pages.
    fn alloc(&mut self, n: u64) -> Option<u64> {
        if n == 0 {
            return None;
        }
        if let Some(&(size, start)) = self.by_size.range((n, 0)..).next() {
            self.by_size.remove(&(size, start));
            self.by_start.remove(&start);
            if size > n {
                self.insert(start + n, size - n);
            }
            return Some(start);
        }
        let start = self.top;
        let end = start.checked_add(n).filter(|end| *end <= self.limit)?;
        self.top = end;
        Some(start)
    }

    /// Gives back `n` pages from `start`.
    fn free(&mut self, mut start: u64, mut n: u64) {
        if let Some((&prev, &size)) = self.by_start.range(..start).next_back() {
            if prev + size == start {
                self.by_start.remove(&prev);
                self.by_size.remove(&(size, prev));
                start = prev;
                n += size;
            }
        }
        if let Some(size) = self.by_start.remove(&(start + n)) {
            self.by_size.remove(&(size, start + n));
            n += size;
        }
        if start + n == self.top {
            self.top = start;
        } else {
            self.insert(start, n);
        }
    }

    fn insert(&mut self, start: u64, n: u64) {
        self.by_size.insert((n, start));
        self.by_start.insert(start, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_list_reuses_and_coalesces() {
        let mut f = FreeList::new(100);
        let a = f.alloc(4).unwrap();
        let b = f.alloc(2).unwrap();
        let c = f.alloc(3).unwrap();
        assert_eq!((a, b, c), (0, 4, 6));
        f.free(b, 2);
        // Smallest fit: the 2-page hole.
        assert_eq!(f.alloc(1), Some(4));
        f.free(4, 1);
        f.free(a, 4);
        // 0..6 is one range now.
        assert_eq!(f.by_start.get(&0), Some(&6));
        assert_eq!(f.alloc(6), Some(0));
        f.free(0, 6);
        // Freeing the top range lowers the bump pointer instead of listing it.
        f.free(c, 3);
        assert_eq!(f.top, 0);
        assert!(f.by_start.is_empty() && f.by_size.is_empty());
        assert_eq!(f.alloc(101), None);
        assert_eq!(f.alloc(100), Some(0));
        assert_eq!(f.alloc(1), None);
        assert_eq!(f.alloc(0), None);
    }

    #[test]
    fn free_list_never_hands_out_a_page_twice() {
        // A deterministic shuffle of allocations and frees, checked page by page.
        let mut f = FreeList::new(512);
        let mut owner = vec![false; 512];
        let mut live: Vec<(u64, u64)> = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) && !live.is_empty() {
                let (s, n) = live.swap_remove((x as usize / 3) % live.len());
                for p in s..s + n {
                    owner[p as usize] = false;
                }
                f.free(s, n);
            } else if let Some(s) = f.alloc(1 + (x >> 20) % 9) {
                let n = 1 + (x >> 20) % 9;
                for p in s..s + n {
                    assert!(!owner[p as usize], "page {p} handed out twice");
                    owner[p as usize] = true;
                }
                live.push((s, n));
            }
        }
        for (s, n) in live {
            f.free(s, n);
        }
        assert_eq!(f.top, 0);
        assert!(f.by_start.is_empty());
    }

    #[test]
    fn stored_bodies_read_back_and_free_their_pages() {
        let arena = arena().expect("memfd available");
        let before = arena.stats();
        let body = arena
            .store(&[Bytes::from_static(b"hello "), Bytes::from(vec![b'x'; 9000])])
            .unwrap();
        assert_eq!(body.len(), 9006);
        assert_eq!(&body[..6], b"hello ");
        assert!(body[6..].iter().all(|b| *b == b'x'));
        let at = arena.locate(&body).unwrap();
        assert_eq!(at % arena.page, 0);
        assert_eq!(arena.locate(&body.slice(6..)), Some(at + 6));
        assert_eq!(arena.locate(b"not here"), None);
        assert_eq!(arena.footprint(9006), 3 * arena.page);
        let clone = body.clone();
        drop(body);
        assert_eq!(&clone[..6], b"hello ");
        drop(clone);
        assert!(arena.store(&[]).is_none());
        // Other tests run at the same time: only check that this body's pages came back.
        let after = arena.stats();
        assert!(after.leaked_pages == before.leaked_pages);
    }
}
