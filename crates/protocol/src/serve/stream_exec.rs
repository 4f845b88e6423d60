//! The executor an h2 connection runs its streams on.
//!
//! hyper's h2 server hands every request stream to its executor as a future (the service
//! call, then the response head and body into the stream). With hyper-util's `TokioExecutor`
//! that is a task per request: spawned (a heap cell, a run-queue push), polled once the
//! connection's task yields, then the connection's task woken again to write what the stream
//! queued, three task polls for a cache hit. [`InlineFirst`] polls the stream's future once
//! on the connection's task, where it was accepted: a hit answers from memory, so the
//! response and its body are queued in that one poll, and the connection's task writes them
//! on its way back to the socket. Only a future that has to wait (a miss, a large body, a
//! stream out of flow-control credit) becomes a task of its own, and is polled again there
//! with that task's waker.
//!
//! The first poll runs under a no-op waker, which is sound because a spawned task polls the
//! future again at once (a future must wake the waker of its latest poll, not an earlier
//! one). A panic in that poll is caught and costs only its stream (dropping the future resets
//! the stream), as it would inside a task of its own; it never ends the connection.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::task::{Context, Poll, Waker};

/// Polls each stream's future once where it is handed over, and spawns it on the current
/// tokio runtime only if it is not done (see the module's documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct InlineFirst;

impl<F> hyper::rt::Executor<F> for InlineFirst
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let mut fut = Box::pin(fut);
        let mut cx = Context::from_waker(Waker::noop());
        match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
            Ok(Poll::Ready(_)) => {}
            Ok(Poll::Pending) => {
                tokio::spawn(fut);
            }
            Err(_) => {
                tracing::error!("an h2 stream's handler panicked; the stream is reset");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn a_ready_future_runs_inline() {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        InlineFirst.execute(async move { flag.store(true, Ordering::SeqCst) });
        // No yield happened: only an inline poll can have run it.
        assert!(ran.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_waiting_future_finishes_on_its_own_task() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<u32>();
        InlineFirst.execute(async move {
            if let Ok(v) = rx.await {
                let _ = done_tx.send(v + 1);
            }
        });
        // The future waits on `rx` (registered under the no-op waker first); the spawned task
        // must have re-registered its own waker for this send to reach it.
        tx.send(41).expect("the future holds the receiver");
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), done_rx)
            .await
            .expect("the spawned future finishes")
            .expect("it sends");
        assert_eq!(got, 42);
    }

    #[tokio::test]
    async fn a_panic_in_the_first_poll_stays_in_its_stream() {
        InlineFirst.execute(async {
            panic!("handler bug");
        });
        // Still here: the panic did not unwind into the caller (the connection's task).
    }
}
