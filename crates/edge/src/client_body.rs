//! The body of a client's request, whichever protocol it came on: one request path serves
//! HTTP/1.1, h2 (hyper) and HTTP/3 (h3 over quinn).

use crate::body::BoxError;
use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A client's request body.
pub enum ClientBody {
    /// HTTP/1.1 or h2.
    Hyper(Incoming),
    /// HTTP/3: the receiving half of the request stream (boxed: it is five times the size of
    /// the other, and every request future carries a `ClientBody`).
    H3(Box<H3Body>),
}

impl From<Incoming> for ClientBody {
    fn from(body: Incoming) -> Self {
        ClientBody::Hyper(body)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(BoxError::from))),
            ClientBody::H3(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(body) => body.is_end_stream(),
            ClientBody::H3(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(body) => body.size_hint(),
            ClientBody::H3(body) => body.size_hint(),
        }
    }
}

/// An HTTP/3 request body: DATA frames of the request stream (trailers are not forwarded).
pub struct H3Body {
    stream: Option<h3::server::RequestStream<h3_quinn::RecvStream, Bytes>>,
    /// The declared `Content-Length`, if any.
    length: Option<u64>,
}

impl H3Body {
    /// The body of a request stream; `length` is its declared `Content-Length`. A request
    /// declaring length 0 (or GET/HEAD without a length, see `for_request`) has no body.
    pub fn new(
        stream: h3::server::RequestStream<h3_quinn::RecvStream, Bytes>,
        length: Option<u64>,
        empty: bool,
    ) -> Self {
        Self {
            stream: (!empty && length != Some(0)).then_some(stream),
            length,
        }
    }
}

impl Body for H3Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let me = self.get_mut();
        let Some(stream) = me.stream.as_mut() else {
            return Poll::Ready(None);
        };
        match stream.poll_recv_data(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(mut data))) => {
                let bytes = data.copy_to_bytes(data.remaining());
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Poll::Ready(Ok(None)) => {
                me.stream = None;
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                me.stream = None;
                Poll::Ready(Some(Err(BoxError::from(e))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (self.stream.is_none(), self.length) {
            (true, _) => SizeHint::with_exact(0),
            (false, Some(n)) => SizeHint::with_exact(n),
            (false, None) => SizeHint::default(),
        }
    }
}
