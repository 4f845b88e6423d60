//! Write coalescing for TLS connections.
//!
//! The h2 crate writes each DATA frame with its own `poll_write_vectored` and flushes once it
//! has written every frame it had. Over plain TCP each of those writes is one `writev`; over
//! TLS each also becomes a TLS record of its own (sealed, framed, its buffer allocated) and
//! tokio-rustls sends it at once, so a connection answering ten 1 KiB requests pays ten
//! records and ten system calls where one of each would do. [`Coalesced`] gathers the writes
//! made between two flushes (up to [`COALESCE_MAX`] bytes) and hands them on as one: one
//! record, one system call.
//!
//! Writes larger than the buffer go through as they are (after what is buffered), so large
//! bodies are not copied an extra time; the buffer is allocated on the first small write and
//! given back when a flush empties it, so an idle connection holds none.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes gathered before they are handed on: one full TLS record of plaintext.
pub(crate) const COALESCE_MAX: usize = 16 * 1024;
/// The buffer's first size (it grows up to [`COALESCE_MAX`] when more is written).
const COALESCE_FIRST: usize = 4 * 1024;

/// A stream whose small writes are gathered until a flush (see the module docs), or, made
/// with [`Coalesced::passthrough`], handed on as they come.
pub(crate) struct Coalesced<S> {
    inner: S,
    /// Whether writes are gathered.
    gather: bool,
    buf: Vec<u8>,
    /// Bytes of `buf` already handed on.
    sent: usize,
}

impl<S> Coalesced<S> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            gather: true,
            buf: Vec::new(),
            sent: 0,
        }
    }

    /// Wraps `inner` without gathering: over plain TCP an h2 response's frames already leave
    /// in one `writev` (the h2 crate chains the body after the head), and gathering them would
    /// only copy the body once more.
    pub(crate) fn passthrough(inner: S) -> Self {
        Self {
            gather: false,
            ..Self::new(inner)
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalesced<S> {
    /// Hands every buffered byte on to the inner stream; the buffer is freed once empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.sent < self.buf.len() {
            let pending = self.buf.get(self.sent..).unwrap_or_default();
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, pending))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesced<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        if !me.gather {
            return Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if me.buf.len() + total > COALESCE_MAX {
            ready!(me.poll_drain(cx))?;
        }
        if total >= COALESCE_MAX {
            return Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        }
        if me.buf.capacity() == 0 {
            me.buf.reserve_exact(COALESCE_FIRST.max(total));
        }
        for b in bufs {
            me.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        self.gather || self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records every write it is handed and every flush; accepts at most `limit` bytes
    /// per write.
    #[derive(Clone, Default)]
    struct Recorder {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        flushes: Arc<Mutex<usize>>,
        limit: usize,
    }

    impl Recorder {
        /// A recorder that accepts at most `limit` bytes per write.
        fn taking(limit: usize) -> Self {
            Self {
                limit,
                ..Default::default()
            }
        }
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.limit.max(1));
            self.writes.lock().unwrap().push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            *self.flushes.lock().unwrap() += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn small_writes_between_flushes_go_out_as_one() {
        use tokio::io::AsyncWriteExt;
        let rec = Recorder::taking(usize::MAX);
        let mut io = Coalesced::new(rec.clone());
        for i in 0..10u8 {
            io.write_all(&[i; 100]).await.unwrap();
        }
        assert!(rec.writes.lock().unwrap().is_empty());
        io.flush().await.unwrap();
        let writes = rec.writes.lock().unwrap().clone();
        assert_eq!(writes.len(), 1);
        let want: Vec<u8> = (0..10u8).flat_map(|i| [i; 100]).collect();
        assert_eq!(writes[0], want);
        assert_eq!(*rec.flushes.lock().unwrap(), 1);
        // An empty buffer is given back.
        assert_eq!(io.buf.capacity(), 0);
    }

    #[tokio::test]
    async fn large_writes_pass_through_after_what_was_buffered_in_order() {
        use tokio::io::AsyncWriteExt;
        let rec = Recorder::taking(5000);
        let mut io = Coalesced::new(rec.clone());
        io.write_all(b"head").await.unwrap();
        let big = vec![7u8; COALESCE_MAX + 10];
        io.write_all(&big).await.unwrap();
        io.write_all(b"tail").await.unwrap();
        io.shutdown().await.unwrap();
        let all: Vec<u8> = rec.writes.lock().unwrap().concat();
        let mut want = b"head".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"tail");
        assert_eq!(all, want);
        // The inner stream took at most 5000 bytes a write: partial writes were resumed.
        assert!(rec.writes.lock().unwrap().iter().all(|w| w.len() <= 5000));
    }

    #[tokio::test]
    async fn passthrough_hands_each_write_on_at_once() {
        use tokio::io::AsyncWriteExt;
        let rec = Recorder::taking(usize::MAX);
        let mut io = Coalesced::passthrough(rec.clone());
        io.write_all(b"one").await.unwrap();
        io.write_all(b"two").await.unwrap();
        assert_eq!(
            *rec.writes.lock().unwrap(),
            vec![b"one".to_vec(), b"two".to_vec()]
        );
        io.flush().await.unwrap();
        assert_eq!(*rec.flushes.lock().unwrap(), 1);
        assert_eq!(io.buf.capacity(), 0);
    }
}
