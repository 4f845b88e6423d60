//! The response body type sent to clients: cached chunks (shared `Bytes`, no copy), a
//! streamed origin body, or a reader of a fill in progress ([`Fill`]): the fill task reads
//! the origin at the origin's pace and queues each chunk for its client, who takes them at
//! its own pace; a client that takes nothing for the write timeout is detached.

use crate::store::disk::FormatError;
use crate::store::DiskFile;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// An origin body that fails if the origin goes quiet for longer than `idle` between chunks,
/// so a stalled origin cannot hold a client connection forever.
pub struct OriginBody {
    body: Incoming,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    sent: metrics::Counter,
}

impl OriginBody {
    /// Wraps an origin body with an idle timeout.
    pub fn new(body: Incoming, idle: Duration, sent: metrics::Counter) -> Self {
        Self {
            body,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            sent,
        }
    }
}

/// The origin sent nothing for longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("origin body stalled for more than {0:?}")]
pub struct OriginStalled(pub Duration);

/// Boxed error for streamed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body as the edge produces it.
pub enum EdgeBody {
    /// No body (HEAD, 304, 204).
    Empty,
    /// One buffer: most cached bodies (no queue to allocate).
    Single(Option<Bytes>),
    /// In-memory chunks: cached bodies and generated pages.
    Chunks {
        /// Chunks still to send.
        chunks: VecDeque<Bytes>,
        /// Bytes still to send.
        remaining: u64,
    },
    /// The origin's body, passed through unchanged (not stored).
    Origin(OriginBody),
    /// The client's share of a fill in progress.
    Fill(FillReader),
    /// A stored body read from its file in the disk tier, block by block.
    Disk(DiskReader),
    /// A response assembled from slices, fetched as the client reads.
    Slices(crate::slice_body::SliceBody),
}

impl EdgeBody {
    /// A body from chunks.
    pub fn chunks(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        let mut iter = chunks.into_iter().filter(|c| !c.is_empty());
        let Some(first) = iter.next() else {
            return EdgeBody::Empty;
        };
        let Some(second) = iter.next() else {
            return EdgeBody::Single(Some(first));
        };
        let chunks: VecDeque<Bytes> = [first, second].into_iter().chain(iter).collect();
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        EdgeBody::Chunks { chunks, remaining }
    }

    /// A body of one buffer.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::chunks([bytes.into()])
    }

    /// Bytes `start..end` of a body stored in the disk tier.
    pub fn disk(file: Arc<DiskFile>, start: u64, end: u64) -> Self {
        let end = end.min(file.body_len());
        EdgeBody::Disk(DiskReader {
            file,
            open: None,
            pos: start.min(end),
            end,
            remaining: end.saturating_sub(start),
            ready: VecDeque::new(),
            pending: None,
        })
    }
}

type DiskRead = Result<(Arc<std::fs::File>, Vec<Bytes>), FormatError>;

/// Reads a disk body a few checked blocks at a time on the blocking pool; the file stays
/// open for the whole response (a purge that unlinks it does not cut it short). A block that
/// fails its checksum ends the body with an error (the client sees a cut response, never
/// wrong bytes) and drops the object.
pub struct DiskReader {
    file: Arc<DiskFile>,
    open: Option<Arc<std::fs::File>>,
    pos: u64,
    end: u64,
    remaining: u64,
    ready: VecDeque<Bytes>,
    pending: Option<tokio::task::JoinHandle<DiskRead>>,
}

impl DiskReader {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BoxError>>> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                self.remaining = self.remaining.saturating_sub(b.len() as u64);
                return Poll::Ready(Some(Ok(b)));
            }
            if let Some(task) = self.pending.as_mut() {
                let done = match Pin::new(task).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(done) => done,
                };
                self.pending = None;
                match done {
                    Ok(Ok((file, chunks))) => {
                        let n: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                        if n == 0 {
                            return Poll::Ready(Some(Err("disk read made no progress".into())));
                        }
                        self.open = Some(file);
                        self.pos += n;
                        self.ready.extend(chunks);
                        continue;
                    }
                    Ok(Err(e)) => {
                        self.file.discard(&e);
                        self.pos = self.end;
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                    Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
                }
            }
            if self.pos >= self.end {
                return Poll::Ready(None);
            }
            let (file, open, start, end) =
                (self.file.clone(), self.open.clone(), self.pos, self.end);
            self.pending = Some(tokio::task::spawn_blocking(move || {
                let f = match open {
                    Some(f) => f,
                    None => file.open()?,
                };
                let chunks = file.read_at(&f, start, end)?;
                Ok((f, chunks))
            }));
        }
    }
}

impl Body for EdgeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            EdgeBody::Empty => Poll::Ready(None),
            EdgeBody::Single(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            EdgeBody::Chunks { chunks, remaining } => match chunks.pop_front() {
                Some(c) => {
                    *remaining -= c.len() as u64;
                    Poll::Ready(Some(Ok(Frame::data(c))))
                }
                None => Poll::Ready(None),
            },
            EdgeBody::Origin(o) => match Pin::new(&mut o.body).poll_frame(cx) {
                Poll::Ready(frame) => {
                    let deadline = Instant::now() + o.idle;
                    o.timer.as_mut().reset(deadline);
                    if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(|f| f.data_ref()))
                    {
                        o.sent.increment(data.map_or(0, |d| d.len() as u64));
                    }
                    Poll::Ready(frame.map(|r| r.map_err(BoxError::from)))
                }
                Poll::Pending => match o.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(OriginStalled(o.idle))))),
                    Poll::Pending => Poll::Pending,
                },
            },
            EdgeBody::Fill(reader) => reader.poll_next(cx).map(|c| c.map(|r| r.map(Frame::data))),
            EdgeBody::Disk(reader) => reader.poll_next(cx).map(|c| c.map(|r| r.map(Frame::data))),
            EdgeBody::Slices(s) => s.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            EdgeBody::Empty => true,
            EdgeBody::Single(b) => b.is_none(),
            EdgeBody::Chunks { chunks, .. } => chunks.is_empty(),
            EdgeBody::Origin(o) => o.body.is_end_stream(),
            EdgeBody::Fill(_) => false,
            EdgeBody::Disk(r) => r.remaining == 0,
            EdgeBody::Slices(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            EdgeBody::Empty => SizeHint::with_exact(0),
            EdgeBody::Single(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            EdgeBody::Chunks { remaining, .. } => SizeHint::with_exact(*remaining),
            EdgeBody::Origin(o) => o.body.size_hint(),
            EdgeBody::Fill(_) => SizeHint::default(),
            EdgeBody::Disk(r) => SizeHint::with_exact(r.remaining),
            EdgeBody::Slices(s) => s.size_hint(),
        }
    }
}

/// Why a fill's client gets no more bytes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FillFailed {
    /// The origin's body broke off.
    #[error("origin body failed: {0}")]
    Origin(String),
    /// The origin went quiet for longer than its idle timeout.
    #[error("origin body stalled for more than {0:?}")]
    Stalled(Duration),
    /// This client took nothing for longer than the write timeout and was detached.
    #[error("client took no bytes for more than {0:?}; detached from the fill")]
    Detached(Duration),
    /// The fill was cut off (nobody waited for it any more).
    #[error("fill cut off")]
    Cut,
}

/// A fill in progress, shared by the task that reads the origin and the one client that
/// reads the response (if any). Only the chunks the client has not taken yet are queued
/// here; what is kept for the cache is the fill task's own.
pub struct Fill {
    state: Mutex<FillState>,
    /// Signalled when the client takes a chunk or goes away.
    progress: Notify,
}

struct FillState {
    queue: VecDeque<Bytes>,
    queued_bytes: u64,
    /// `Some` once the origin body ended: `Ok` when complete (and stored, if it could be).
    outcome: Option<Result<(), FillFailed>>,
    /// A client reads this fill (not gone, not detached).
    reader: bool,
    detached: Option<Duration>,
    /// When the client last took a chunk, or when a chunk arrived for a caught-up client.
    last_take: Instant,
    waker: Option<Waker>,
}

impl Fill {
    /// A fill and, if `with_reader`, the body of its one client.
    pub fn new(with_reader: bool, sent: metrics::Counter) -> (Arc<Fill>, Option<FillReader>) {
        let fill = Arc::new(Fill {
            state: Mutex::new(FillState {
                queue: VecDeque::new(),
                queued_bytes: 0,
                outcome: None,
                reader: with_reader,
                detached: None,
                last_take: Instant::now(),
                waker: None,
            }),
            progress: Notify::new(),
        });
        let reader = with_reader.then(|| FillReader {
            fill: fill.clone(),
            sent,
        });
        (fill, reader)
    }

    fn lock(&self) -> MutexGuard<'_, FillState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether a client still reads this fill.
    pub fn has_reader(&self) -> bool {
        self.lock().reader
    }

    /// Bytes queued for the client and not taken yet.
    pub fn unread_bytes(&self) -> u64 {
        self.lock().queued_bytes
    }

    /// Queues a chunk for the client (dropped if there is none).
    pub fn push(&self, chunk: Bytes) {
        let waker = {
            let mut st = self.lock();
            if !st.reader {
                return;
            }
            if st.queue.is_empty() {
                st.last_take = Instant::now();
            }
            st.queued_bytes += chunk.len() as u64;
            st.queue.push_back(chunk);
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ends the client's body: after the queued chunks when `Ok`, at once with an error.
    pub fn finish(&self, outcome: Result<(), FillFailed>) {
        let waker = {
            let mut st = self.lock();
            if outcome.is_err() {
                st.queue.clear();
                st.queued_bytes = 0;
            }
            st.outcome = Some(outcome);
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// When the client will count as stuck if it takes nothing before: `None` when there is
    /// no client or nothing waits for it.
    pub fn stuck_at(&self, write_timeout: Duration) -> Option<Instant> {
        let st = self.lock();
        (st.reader && !st.queue.is_empty()).then(|| st.last_take + write_timeout)
    }

    /// Detaches the client if it has taken nothing for `write_timeout` while bytes waited
    /// for it: its queue is dropped and its next poll fails. Returns whether it was.
    pub fn detach_if_stuck(&self, write_timeout: Duration) -> bool {
        let waker = {
            let mut st = self.lock();
            let stuck =
                st.reader && !st.queue.is_empty() && st.last_take + write_timeout <= Instant::now();
            if !stuck {
                return false;
            }
            st.reader = false;
            st.detached = Some(write_timeout);
            st.queue.clear();
            st.queued_bytes = 0;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Waits until the client takes a chunk or goes away.
    pub async fn progressed(&self) {
        self.progress.notified().await;
    }
}

/// The body of a fill's client: takes the queued chunks at the client's pace.
pub struct FillReader {
    fill: Arc<Fill>,
    sent: metrics::Counter,
}

impl FillReader {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BoxError>>> {
        let mut st = self.fill.lock();
        if let Some(timeout) = st.detached {
            return Poll::Ready(Some(Err(Box::new(FillFailed::Detached(timeout)))));
        }
        if let Some(chunk) = st.queue.pop_front() {
            st.queued_bytes = st.queued_bytes.saturating_sub(chunk.len() as u64);
            st.last_take = Instant::now();
            drop(st);
            self.sent.increment(chunk.len() as u64);
            self.fill.progress.notify_one();
            return Poll::Ready(Some(Ok(chunk)));
        }
        match &st.outcome {
            Some(Ok(())) => Poll::Ready(None),
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(e.clone())))),
            None => {
                st.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for FillReader {
    fn drop(&mut self) {
        {
            let mut st = self.fill.lock();
            st.reader = false;
            st.queue.clear();
            st.queued_bytes = 0;
        }
        self.fill.progress.notify_one();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn counter() -> metrics::Counter {
        metrics::Counter::noop()
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_nothing_is_detached_and_its_queue_dropped() {
        let timeout = Duration::from_secs(5);
        let (fill, reader) = Fill::new(true, counter());
        let mut body = EdgeBody::Fill(reader.unwrap());
        fill.push(Bytes::from_static(b"a"));
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "a"
        );
        // Caught up: nothing waits for the client, it cannot be stuck.
        assert_eq!(fill.stuck_at(timeout), None);
        fill.push(Bytes::from(vec![0u8; 1000]));
        let at = fill.stuck_at(timeout).unwrap();
        tokio::time::sleep_until(at - Duration::from_millis(1)).await;
        assert!(!fill.detach_if_stuck(timeout));
        tokio::time::sleep_until(at).await;
        assert!(fill.detach_if_stuck(timeout));
        assert!(!fill.has_reader());
        assert_eq!(fill.unread_bytes(), 0);
        // Later chunks are not queued for it, and it fails when it reads again.
        fill.push(Bytes::from_static(b"b"));
        assert_eq!(fill.unread_bytes(), 0);
        assert!(body.frame().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_reader_gets_every_chunk_then_the_end_after_finish() {
        let (fill, reader) = Fill::new(true, counter());
        let body = EdgeBody::Fill(reader.unwrap());
        let f2 = fill.clone();
        let feeder = tokio::spawn(async move {
            for i in 0..100u8 {
                f2.push(Bytes::from(vec![i; 10]));
                tokio::task::yield_now().await;
            }
            f2.finish(Ok(()));
        });
        let all = body.collect().await.unwrap().to_bytes();
        feeder.await.unwrap();
        assert_eq!(all.len(), 1000);
        assert_eq!(all[999], 99);
    }

    #[tokio::test]
    async fn a_reader_that_leaves_is_seen_by_the_fill() {
        let (fill, reader) = Fill::new(true, counter());
        fill.push(Bytes::from_static(b"x"));
        drop(reader);
        fill.progressed().await;
        assert!(!fill.has_reader());
        assert_eq!(fill.unread_bytes(), 0);
    }
}
