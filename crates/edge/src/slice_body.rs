//! The body of a response assembled from slices (`proxy::slice`): a stream that looks up or
//! fetches slice n+1 only once slice n has been handed to the client, so an object of any
//! size is never held whole. It ends with an error — the client sees the response cut off,
//! never completed — if the stream fails or yields other than exactly the declared length.

use crate::body::BoxError;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use http_body::{Frame, SizeHint};
use std::sync::Mutex;
use std::task::{Context, Poll};

/// A body made of slices, of a length known before the first byte.
pub struct SliceBody {
    /// In a `Mutex` only so that the body is `Sync` like the other bodies; never locked.
    stream: Mutex<BoxStream<'static, Result<Bytes, BoxError>>>,
    remaining: u64,
}

/// The slices yielded other than the declared length.
#[derive(Debug, thiserror::Error)]
#[error("sliced body ended {0} bytes off its declared length")]
pub struct LengthMismatch(u64);

impl SliceBody {
    /// A body of exactly `len` bytes read from `stream`.
    pub fn new(stream: BoxStream<'static, Result<Bytes, BoxError>>, len: u64) -> Self {
        Self {
            stream: Mutex::new(stream),
            remaining: len,
        }
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let stream = match self.stream.get_mut() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        match stream.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                let n = chunk.len() as u64;
                if n > self.remaining {
                    let over = n - self.remaining;
                    self.remaining = 0;
                    return Poll::Ready(Some(Err(Box::new(LengthMismatch(over)))));
                }
                self.remaining -= n;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(Some(Err(Box::new(LengthMismatch(self.remaining))))),
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::body::EdgeBody;
    use http_body_util::BodyExt;

    fn body(chunks: Vec<Result<&'static [u8], &'static str>>, len: u64) -> EdgeBody {
        let items: Vec<Result<Bytes, BoxError>> = chunks
            .into_iter()
            .map(|c| c.map(Bytes::from_static).map_err(BoxError::from))
            .collect();
        EdgeBody::Slices(SliceBody::new(
            futures_util::stream::iter(items).boxed(),
            len,
        ))
    }

    #[tokio::test]
    async fn exact_length_completes() {
        let b = body(vec![Ok(b"ab"), Ok(b"cd")], 4);
        assert_eq!(b.collect().await.unwrap().to_bytes(), "abcd");
    }

    #[tokio::test]
    async fn short_long_or_failed_streams_end_in_an_error() {
        assert!(body(vec![Ok(b"ab")], 4).collect().await.is_err());
        assert!(body(vec![Ok(b"abcde")], 4).collect().await.is_err());
        assert!(body(vec![Ok(b"ab"), Err("changed")], 4)
            .collect()
            .await
            .is_err());
    }
}
