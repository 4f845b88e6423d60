//! The client's request body on its way to an origin: bounded in size, timed out when the
//! client goes idle (408; the origin is not blamed), and watched so that `OriginPool::send`
//! knows when it has all been handed over — the response timeout starts then.

use crate::body::BoxError;
use crate::error::ProxyError;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// Body type of requests sent to origins.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// The client's request body failed: the client's fault, not the origin's. Client body
/// errors are wrapped in it so that `send` can tell them apart from origin failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// Malformed chunking, reset connection, ...
    #[error("client request body: {0}")]
    Malformed(BoxError),
    /// Longer than `limits.max_request_body_bytes`.
    #[error("client request body exceeds the limit")]
    TooLarge,
    /// The client sent nothing for longer than `fetch.request_body_idle_timeout_ms`.
    #[error("client request body idle for more than {0:?}")]
    Idle(Duration),
}

/// Wraps a client's streamed request body for forwarding, failing once it passes `limit` or
/// once the client has sent nothing for `idle`.
pub fn client_body(
    body: crate::client_body::ClientBody,
    limit: u64,
    idle: Duration,
) -> UpstreamBody {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let body = IdleBody {
        body,
        idle,
        timer: None,
    }
    .map_err(|e| match e {
        IdleError::Body(e) => BoxError::from(ClientBodyError::Malformed(e)),
        IdleError::Idle(d) => BoxError::from(ClientBodyError::Idle(d)),
    });
    http_body_util::Limited::new(body, limit)
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                BoxError::from(ClientBodyError::TooLarge)
            } else {
                e
            }
        })
        .boxed_unsync()
}

enum IdleError {
    Body(BoxError),
    Idle(Duration),
}

/// A client body that fails when the client stays silent for longer than `idle` while the
/// body is being read (the timer runs only while the edge waits for the client).
struct IdleBody {
    body: crate::client_body::ClientBody,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl http_body::Body for IdleBody {
    type Data = Bytes;
    type Error = IdleError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, IdleError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(IdleError::Body)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(IdleError::Idle(idle)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

use std::future::Future;

/// What `send` learns about an upload while hyper sends it: whether the body has been
/// handed over completely, and when hyper last took a frame (so that an origin that stops
/// reading is told apart from a client that stops sending).
pub(super) struct Upload {
    pub(super) done: AtomicBool,
    pub(super) notify: Notify,
    /// The body is waiting for the client (its own idle timer runs).
    pub(super) waiting_on_client: AtomicBool,
    /// When hyper last took a frame, in ms since `epoch`.
    last_taken_ms: AtomicU64,
    epoch: Instant,
}

impl Upload {
    fn finish(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_taken_ms.store(ms, Ordering::Release);
    }

    pub(super) fn last_taken(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_taken_ms.load(Ordering::Acquire))
    }
}

/// The request body as hyper sees it, reporting progress to [`Upload`].
struct WatchedBody {
    inner: UpstreamBody,
    upload: Arc<Upload>,
}

impl http_body::Body for WatchedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                this.upload.waiting_on_client.store(true, Ordering::Release);
                Poll::Pending
            }
            Poll::Ready(frame) => {
                this.upload
                    .waiting_on_client
                    .store(false, Ordering::Release);
                this.upload.touch();
                match &frame {
                    None | Some(Err(_)) => this.upload.finish(),
                    Some(Ok(_)) if this.inner.is_end_stream() => this.upload.finish(),
                    Some(Ok(_)) => {}
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.upload.finish();
        }
        end
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        self.upload.finish();
    }
}

pub(super) fn watched(body: UpstreamBody) -> (UpstreamBody, Arc<Upload>) {
    let upload = Arc::new(Upload {
        done: AtomicBool::new(false),
        notify: Notify::new(),
        waiting_on_client: AtomicBool::new(false),
        last_taken_ms: AtomicU64::new(0),
        epoch: Instant::now(),
    });
    let body = WatchedBody {
        inner: body,
        upload: upload.clone(),
    };
    (body.boxed_unsync(), upload)
}

/// The client-side cause of a failed forward, if that is what it was.
pub(super) fn client_body_error(e: &(dyn std::error::Error + 'static)) -> Option<ProxyError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        match err.downcast_ref::<ClientBodyError>() {
            Some(ClientBodyError::TooLarge) => return Some(ProxyError::PayloadTooLarge),
            Some(ClientBodyError::Malformed(_)) => {
                return Some(ProxyError::BadRequest("malformed request body"))
            }
            Some(ClientBodyError::Idle(_)) => return Some(ProxyError::RequestTimeout),
            None => cur = err.source(),
        }
    }
    None
}
