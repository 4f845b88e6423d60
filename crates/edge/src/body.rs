//! The response body type sent to clients: cached chunks (shared `Bytes`, no copy), a
//! streamed origin body, or a tee channel fed while the same bytes go into the cache.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Boxed error for streamed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body as the edge produces it.
#[derive(Debug)]
pub enum EdgeBody {
    /// No body (HEAD, 304, 204).
    Empty,
    /// In-memory chunks: cached bodies and generated pages.
    Chunks {
        /// Chunks still to send.
        chunks: VecDeque<Bytes>,
        /// Bytes still to send.
        remaining: u64,
    },
    /// The origin's body, passed through unchanged (not stored).
    Origin(Incoming),
    /// Chunks forwarded by the task that also fills the cache.
    Tee(mpsc::Receiver<Result<Bytes, BoxError>>),
}

impl EdgeBody {
    /// A body from chunks.
    pub fn chunks(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
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
            EdgeBody::Chunks { chunks, remaining } => match chunks.pop_front() {
                Some(c) => {
                    *remaining -= c.len() as u64;
                    Poll::Ready(Some(Ok(Frame::data(c))))
                }
                None => Poll::Ready(None),
            },
            EdgeBody::Origin(incoming) => Pin::new(incoming)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
            EdgeBody::Tee(rx) => rx.poll_recv(cx).map(|c| c.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            EdgeBody::Empty => true,
            EdgeBody::Chunks { chunks, .. } => chunks.is_empty(),
            EdgeBody::Origin(incoming) => incoming.is_end_stream(),
            EdgeBody::Tee(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            EdgeBody::Empty => SizeHint::with_exact(0),
            EdgeBody::Chunks { remaining, .. } => SizeHint::with_exact(*remaining),
            EdgeBody::Origin(incoming) => incoming.size_hint(),
            EdgeBody::Tee(_) => SizeHint::default(),
        }
    }
}
