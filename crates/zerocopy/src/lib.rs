//! Zero-copy bodies: stored response bodies kept in shared-memory pages (one `memfd` for the
//! process) and sent to plain TCP sockets with `sendfile(2)`, so that the kernel points its
//! socket buffers at the pages instead of copying each body into them. The same bodies are
//! ordinary [`bytes::Bytes`] everywhere else (TLS, h2 frames, ranges, gzip): they are read
//! through a read-only mapping of the same pages.
//!
//! - [`arena`]: the pages, a page allocator over them, and [`arena::Arena::store`], which
//!   copies a body in and hands back a `Bytes` that frees its pages when the last clone
//!   drops.
//! - [`stream`]: [`stream::SendStream`], a `TcpStream` whose vectored writes send the parts
//!   that lie in the pages with `sendfile` and the rest with `sendmsg(MSG_MORE)`.
//! - [`sockopt`]: `TCP_NOTSENT_LOWAT`, which bounds how much of a body waits unsent in one
//!   socket (no safe crate sets it).
//!
//! Why the pages stay correct while the kernel still holds them: a page handed to a socket
//! stays referenced by the socket buffer until the peer has read it, which can be long after
//! the body's last `Bytes` dropped. A freed range is therefore never rewritten in place: its
//! pages are punched out of the file (`FALLOC_FL_PUNCH_HOLE`, whole pages only, so nothing is
//! zeroed in place) and a later body at the same offset gets fresh pages. Bodies start on page
//! boundaries and own whole pages; the rounding (less than a page per body) is why only
//! bodies from a threshold up (`cache.zero_copy_min_bytes`) are kept here.
//!
//! `unsafe` here is the mapping and slices of it (`arena`), nothing else.

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod arena;
pub mod sockopt;
pub mod stream;

pub use arena::{arena, Arena, ArenaStats};
pub use stream::SendStream;
