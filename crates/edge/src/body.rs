//! The response body type sent to clients: cached chunks (shared `Bytes`, no copy), a
//! streamed origin body, or a tee channel fed while the same bytes go into the cache.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
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
    /// Chunks forwarded by the task that also fills the cache.
    Tee(mpsc::Receiver<Result<Bytes, BoxError>>),
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
            EdgeBody::Tee(rx) => rx.poll_recv(cx).map(|c| c.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            EdgeBody::Empty => true,
            EdgeBody::Single(b) => b.is_none(),
            EdgeBody::Chunks { chunks, .. } => chunks.is_empty(),
            EdgeBody::Origin(o) => o.body.is_end_stream(),
            EdgeBody::Tee(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            EdgeBody::Empty => SizeHint::with_exact(0),
            EdgeBody::Single(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            EdgeBody::Chunks { remaining, .. } => SizeHint::with_exact(*remaining),
            EdgeBody::Origin(o) => o.body.size_hint(),
            EdgeBody::Tee(_) => SizeHint::default(),
        }
    }
}
