//! Write coalescing for h2 connections, and the flush they hold back until their poll ends.
//!
//! The h2 crate writes each response's frames with `poll_write_vectored` and flushes after
//! every DATA frame it chains (a body of 256 bytes or more must be written before the next
//! frame is encoded), so a connection answering ten 1 KiB requests in one poll flushes ten
//! times. Over plain TCP each flush is one `writev`; over TLS each is also a TLS record of
//! its own (sealed, framed, its buffer allocated). [`Coalesced`] gathers the writes (up to
//! [`COALESCE_MAX`] bytes) and, while its connection is being polled by
//! [`super::stream_exec::Batched`], holds the flushes back: the batch's [`Flusher`] sends
//! what the poll wrote once it ends, as one system call (over TLS, one record). Small bodies
//! are copied once more for it, which costs less than the system calls it saves.
//!
//! The hold is safe because the flush is ours, not h2's: `Batched` flushes after every poll
//! of the connection, whatever h2 did in it (a handshake flushes once and then only reads,
//! for one). A flush that meets an error keeps it, and every later call on the stream
//! returns it, so the connection ends on its next poll (the flusher wakes it).
//!
//! Writes larger than the buffer go through as they are (after what is buffered), so large
//! bodies are not copied an extra time, and the buffer never holds more than
//! [`COALESCE_MAX`]; it is allocated on the first small write and given back when a flush
//! empties it, so an idle connection holds none.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes gathered before they are handed on: one full TLS record of plaintext.
pub(crate) const COALESCE_MAX: usize = 16 * 1024;
/// The buffer's first size (it grows up to [`COALESCE_MAX`] when more is written).
const COALESCE_FIRST: usize = 4 * 1024;

/// A stream whose small writes are gathered until a flush and whose flushes wait for the end
/// of its connection's poll (see the module docs).
pub(crate) struct Coalesced<S> {
    shared: Arc<Mutex<Writer<S>>>,
}

/// Sends what a [`Coalesced`] stream holds once its connection's poll ends.
pub(crate) struct Flusher<S> {
    shared: Arc<Mutex<Writer<S>>>,
}

/// The stream and what is gathered for it, shared by the stream (in hyper's connection) and
/// its [`Flusher`] (beside the connection). Both are only touched from the connection's
/// task, so the lock is never contended.
struct Writer<S> {
    inner: S,
    buf: Vec<u8>,
    /// Bytes of `buf` already handed on.
    sent: usize,
    /// Whether flushes are held back (the connection is being polled).
    hold: bool,
    /// A flush was asked for while held back.
    owed: bool,
    /// What the flusher's last flush failed with: every later call fails with it.
    failed: Option<io::ErrorKind>,
}

impl<S> Coalesced<S> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: S) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Writer {
                inner,
                buf: Vec::new(),
                sent: 0,
                hold: false,
                owed: false,
                failed: None,
            })),
        }
    }

    /// The flusher for this stream.
    pub(crate) fn flusher(&self) -> Flusher<S> {
        Flusher {
            shared: self.shared.clone(),
        }
    }

    fn writer(&self) -> MutexGuard<'_, Writer<S>> {
        lock(&self.shared)
    }
}

/// Locks `shared`. A panic cannot leave a `Writer` half-updated in a way that matters (at
/// worst bytes are counted as sent), so a poisoned lock is taken as it is.
fn lock<S>(shared: &Mutex<Writer<S>>) -> MutexGuard<'_, Writer<S>> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S> Writer<S> {
    fn check(&self) -> io::Result<()> {
        match self.failed {
            Some(kind) => Err(kind.into()),
            None => Ok(()),
        }
    }
}

impl<S: AsyncWrite + Unpin> Writer<S> {
    /// Hands every buffered byte on to the inner stream; the buffer is freed once empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let pending = self.buf.get(self.sent..).unwrap_or_default();
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Drains the buffer and flushes the inner stream.
    fn poll_flush_now(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.owed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.buf.len() + total > COALESCE_MAX {
            ready!(self.poll_drain(cx))?;
        }
        if total >= COALESCE_MAX {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(COALESCE_FIRST.max(total));
        }
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }
}

impl<S: AsyncWrite + Unpin> Flusher<S> {
    /// Holds the stream's flushes back (`true`, while its connection is polled) or lets them
    /// through.
    pub(crate) fn hold(&self, on: bool) {
        lock(&self.shared).hold = on;
    }

    /// Sends what the stream gathered and flushes it, if anything is owed. `Pending` when the
    /// socket cannot take it all now (its waker is `cx`'s: the connection's task is polled
    /// again when it can). An error is kept for the stream's next call, and the task woken to
    /// make that call.
    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut w = lock(&self.shared);
        if w.failed.is_some() || (!w.owed && w.buf.len() == w.sent) {
            return Poll::Ready(());
        }
        match w.poll_flush_now(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(e)) => {
                w.failed = Some(e.kind());
                cx.waker().wake_by_ref();
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut w = self.writer();
        w.check()?;
        Pin::new(&mut w.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesced<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writer().poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.writer().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut w = self.writer();
        w.check()?;
        if w.hold {
            w.owed = true;
            return Poll::Ready(Ok(()));
        }
        w.poll_flush_now(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Never held: what is gathered goes out before the close.
        let mut w = self.writer();
        w.check()?;
        ready!(w.poll_drain(cx))?;
        Pin::new(&mut w.inner).poll_shutdown(cx)
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
        /// Every write fails.
        broken: bool,
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
            if self.broken {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
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
        assert_eq!(io.writer().buf.capacity(), 0);
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
    async fn held_flushes_wait_for_the_flusher_and_leave_as_one_write() {
        use std::future::poll_fn;
        use tokio::io::AsyncWriteExt;
        let rec = Recorder::taking(usize::MAX);
        let mut io = Coalesced::new(rec.clone());
        let flusher = io.flusher();
        // Nothing owed: the flusher does nothing.
        poll_fn(|cx| flusher.poll_flush(cx)).await;
        assert_eq!(*rec.flushes.lock().unwrap(), 0);
        flusher.hold(true);
        for i in 0..3u8 {
            io.write_all(&[i; 100]).await.unwrap();
            io.flush().await.unwrap();
        }
        flusher.hold(false);
        assert!(rec.writes.lock().unwrap().is_empty());
        assert_eq!(*rec.flushes.lock().unwrap(), 0);
        poll_fn(|cx| flusher.poll_flush(cx)).await;
        let writes = rec.writes.lock().unwrap().clone();
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0], [[0u8; 100], [1; 100], [2; 100]].concat());
        assert_eq!(*rec.flushes.lock().unwrap(), 1);
        // Owed no more.
        poll_fn(|cx| flusher.poll_flush(cx)).await;
        assert_eq!(*rec.flushes.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn shutdown_sends_what_is_held() {
        use tokio::io::AsyncWriteExt;
        let rec = Recorder::taking(usize::MAX);
        let mut io = Coalesced::new(rec.clone());
        io.flusher().hold(true);
        io.write_all(b"last words").await.unwrap();
        io.flush().await.unwrap();
        io.shutdown().await.unwrap();
        assert_eq!(rec.writes.lock().unwrap().concat(), b"last words");
    }

    #[tokio::test]
    async fn a_failed_held_flush_fails_every_later_call_and_wakes_the_task() {
        use std::future::poll_fn;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let rec = Recorder {
            broken: true,
            ..Recorder::taking(usize::MAX)
        };
        let mut io = Coalesced::new(rec);
        let flusher = io.flusher();
        flusher.hold(true);
        io.write_all(b"lost").await.unwrap();
        io.flush().await.unwrap();
        flusher.hold(false);
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        assert!(flusher
            .poll_flush(&mut Context::from_waker(&waker))
            .is_ready());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        let kind = |r: std::io::Result<()>| r.unwrap_err().kind();
        assert_eq!(kind(io.write_all(b"more").await), io::ErrorKind::BrokenPipe);
        assert_eq!(kind(io.flush().await), io::ErrorKind::BrokenPipe);
        let mut byte = [0u8; 1];
        assert_eq!(
            kind(io.read(&mut byte).await.map(|_| ())),
            io::ErrorKind::BrokenPipe
        );
        // The flusher has nothing more to do.
        poll_fn(|cx| flusher.poll_flush(cx)).await;
    }
}
