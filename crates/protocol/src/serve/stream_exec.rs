//! The executor an h2 connection runs its streams on.
//!
//! hyper's h2 server hands every request stream to its executor as a future (the service
//! call, then the response head and body into the stream). With hyper-util's `TokioExecutor`
//! that is a task per request: spawned (a heap cell, a run-queue push), polled once the
//! connection's task yields, then the connection's task woken again to write what the stream
//! queued, three task polls for a cache hit. Here a stream's future is polled once on the
//! connection's task instead: a hit answers from memory, so its response and body are queued
//! in that one poll. Only a future that has to wait (a miss, a large body, a stream out of
//! flow-control credit) becomes a task of its own, polled again there with that task's waker.
//!
//! [`Batched`] wraps the connection so that the streams it accepts in one poll are run after
//! that poll, together, and the connection is polled again at once to write what they queued.
//! The flushes h2 asks for during those polls are held back ([`HeldFlush`]) and made once,
//! after the last: the batch's responses leave in one write (over TLS, one record) instead of
//! one per response.
//! Run the moment each was accepted, every stream's response was written before the next
//! stream was taken (h2 writes what is queued each time it is asked for a stream): one
//! `poll_complete` and write pass per stream, which over TLS cost ten streams 5% against the
//! task per stream. Outside a `Batched` poll (an upgrade handed over from a stream's own task)
//! [`InlineFirst`] polls the future at once.
//!
//! The first poll runs under a no-op waker, which is sound because a spawned task polls the
//! future again at once (a future must wake the waker of its latest poll, not an earlier
//! one). A panic in that poll is caught and costs only its stream (dropping the future resets
//! the stream), as it would inside a task of its own; it never ends the connection.

use std::cell::RefCell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// A stream's future, boxed once: polled in place, then spawned as it is if it waits.
type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

thread_local! {
    /// The streams handed over during the current [`Batched`] poll on this thread (`None`
    /// outside one). A poll runs on one thread without interruption, so what is queued here
    /// belongs to the connection being polled.
    static BATCH: RefCell<Option<Vec<Stream>>> = const { RefCell::new(None) };
}

/// Runs each stream's future on the connection's task first (see the module's
/// documentation): queued for its [`Batched`] connection, or polled at once outside one.
#[derive(Clone, Copy, Debug, Default)]
pub struct InlineFirst;

impl<F> hyper::rt::Executor<F> for InlineFirst
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let fut: Stream = Box::pin(fut);
        let outside = BATCH.with(|b| match b.borrow_mut().as_mut() {
            Some(queue) => {
                queue.push(fut);
                None
            }
            None => Some(fut),
        });
        if let Some(fut) = outside {
            run_first(fut);
        }
    }
}

/// Polls `fut` once; spawns it on the current runtime if it is not done. Returns whether it
/// finished in that poll.
fn run_first(mut fut: Stream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
        Ok(Poll::Ready(())) => true,
        Ok(Poll::Pending) => {
            tokio::spawn(fut);
            false
        }
        Err(_) => {
            tracing::error!("an h2 stream's handler panicked; the stream is reset");
            true
        }
    }
}

/// The flushes of a connection's stream, held back while [`Batched`] polls the connection
/// and made once the poll is done (see [`super::coalesce`]).
pub(crate) trait HeldFlush {
    /// Holds flushes back (`true`) or lets them through.
    fn hold(&self, on: bool);
    /// Makes the flush held back, if one is. `Pending` when the stream cannot take it now
    /// (`cx` is woken when it can).
    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<()>;
}

impl<S: tokio::io::AsyncWrite + Unpin> HeldFlush for super::coalesce::Flusher<S> {
    fn hold(&self, on: bool) {
        super::coalesce::Flusher::hold(self, on);
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<()> {
        super::coalesce::Flusher::poll_flush(self, cx)
    }
}

pin_project_lite::pin_project! {
    /// An h2 connection whose streams run on its own task first and whose writes leave once
    /// per poll (see the module's documentation).
    pub struct Batched<C, F> {
        #[pin]
        conn: C,
        flush: F,
        // Kept between polls for its capacity.
        queue: Vec<Stream>,
        wakes: Arc<Wakes>,
        // `wakes` as the waker the connection is polled with; made once.
        waker: Waker,
    }
}

impl<C, F> Batched<C, F> {
    /// Wraps `conn`, a hyper h2 connection built with [`InlineFirst`] over the stream `flush`
    /// holds the flushes of.
    pub fn new(conn: C, flush: F) -> Self {
        let wakes = Arc::new(Wakes::default());
        Self {
            conn,
            flush,
            queue: Vec::new(),
            waker: Waker::from(wakes.clone()),
            wakes,
        }
    }

    /// The connection (for its graceful shutdown).
    pub fn conn(self: Pin<&mut Self>) -> Pin<&mut C> {
        self.project().conn
    }
}

/// The waker a [`Batched`] connection is polled with. h2 wakes the connection's task whenever
/// a stream queues a frame, so a stream answered inside the poll woke the task that was about
/// to poll the connection again anyway: a second task poll per request, which found nothing
/// to do. A wake that arrives while [`Batched`] polls is noted here instead, and passed on to
/// the task only if no poll of the connection followed it.
#[derive(Default)]
struct Wakes {
    /// The connection task's waker, taken by the wake that passes it on.
    task: AtomicWaker,
    /// [`POLLING`] and [`WOKEN`].
    state: AtomicU8,
}

/// `Wakes::state`: `Batched` is polling the connection; a wake only sets [`WOKEN`].
const POLLING: u8 = 1;
/// `Wakes::state`: a wake arrived since the last poll of the connection began.
const WOKEN: u8 = 2;

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Either the poller sees WOKEN when it stops polling (it clears POLLING and reads
        // WOKEN in one swap), or this sees POLLING already cleared and wakes the task.
        if self.state.fetch_or(WOKEN, Ordering::AcqRel) & POLLING == 0 {
            self.task.wake();
        }
    }
}

/// Takes the queue back when the connection's poll ends, by return or by unwinding, so that
/// no stream is left in the thread's slot.
struct Enter<'a> {
    queue: &'a mut Vec<Stream>,
}

impl<'a> Enter<'a> {
    fn new(queue: &'a mut Vec<Stream>) -> Self {
        let lent = std::mem::take(queue);
        BATCH.with(|b| *b.borrow_mut() = Some(lent));
        Self { queue }
    }
}

impl Drop for Enter<'_> {
    fn drop(&mut self) {
        if let Some(q) = BATCH.with(|b| b.borrow_mut().take()) {
            *self.queue = q;
        }
    }
}

impl<C: Future, F: HeldFlush> Future for Batched<C, F> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        this.wakes.task.register(cx.waker());
        this.wakes.state.store(POLLING, Ordering::Release);
        let mut inner = Context::from_waker(this.waker);
        let polled = loop {
            this.flush.hold(true);
            let polled = {
                let _enter = Enter::new(this.queue);
                this.conn.as_mut().poll(&mut inner)
            };
            this.flush.hold(false);
            let mut answered = false;
            for fut in this.queue.drain(..) {
                answered |= run_first(fut);
            }
            // A stream that finished queued its response: poll the connection again to write
            // it now rather than after a trip through the scheduler. That poll covers the
            // wakes so far (h2's "a frame is queued"), so they are forgotten.
            if polled.is_ready() || !answered {
                break polled;
            }
            this.wakes.state.fetch_and(!WOKEN, Ordering::AcqRel);
        };
        // A wake since the last poll began (the connection yielding, a stream still running
        // that queued a frame) still needs one: the task's own.
        if this.wakes.state.swap(0, Ordering::AcqRel) & WOKEN != 0 {
            cx.waker().wake_by_ref();
        }
        // What the polls wrote leaves now, together. If the socket is full, its waker is this
        // task's: the connection is polled (and this flush made) again when it drains.
        let _ = this.flush.poll_flush(cx);
        polled
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn outside_a_batch_a_ready_future_runs_at_once() {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        InlineFirst.execute(async move { flag.store(true, Ordering::SeqCst) });
        // No yield happened: only a poll in place can have run it.
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
        let got = tokio::time::timeout(Duration::from_secs(10), done_rx)
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

    /// A stand-in for hyper's connection: hands `n` streams to the executor on its first
    /// poll, and counts its polls.
    struct Accepts {
        n: usize,
        polls: Arc<AtomicUsize>,
        ran: Arc<AtomicUsize>,
    }

    impl Future for Accepts {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            for _ in 0..std::mem::take(&mut self.n) {
                let ran = self.ran.clone();
                let ran_before = ran.load(Ordering::SeqCst);
                InlineFirst.execute(async move {
                    ran.fetch_add(1, Ordering::SeqCst);
                });
                // Queued, not run: the streams of one poll run together after it.
                assert_eq!(self.ran.load(Ordering::SeqCst), ran_before);
            }
            Poll::Pending
        }
    }

    /// Counts the polls flushes were held for and the flushes made after them.
    #[derive(Default)]
    struct Flushes {
        holding: AtomicBool,
        held: AtomicUsize,
        made: AtomicUsize,
    }

    impl HeldFlush for Arc<Flushes> {
        fn hold(&self, on: bool) {
            self.holding.store(on, Ordering::SeqCst);
            if on {
                self.held.fetch_add(1, Ordering::SeqCst);
            }
        }

        fn poll_flush(&self, _: &mut Context<'_>) -> Poll<()> {
            assert!(!self.holding.load(Ordering::SeqCst), "flushed while held");
            self.made.fetch_add(1, Ordering::SeqCst);
            Poll::Ready(())
        }
    }

    #[tokio::test]
    async fn a_batch_runs_after_the_poll_and_the_connection_is_polled_again() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ran = Arc::new(AtomicUsize::new(0));
        let flushes = Arc::new(Flushes::default());
        let mut conn = std::pin::pin!(Batched::new(
            Accepts {
                n: 10,
                polls: polls.clone(),
                ran: ran.clone(),
            },
            flushes.clone(),
        ));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(conn.as_mut().poll(&mut cx).is_pending());
        assert_eq!(ran.load(Ordering::SeqCst), 10);
        // Once to accept, once more to write what the ten queued; then nothing new.
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        // Flushes were held during both polls and made once, after them.
        assert_eq!(flushes.held.load(Ordering::SeqCst), 2);
        assert_eq!(flushes.made.load(Ordering::SeqCst), 1);
        assert!(!flushes.holding.load(Ordering::SeqCst));
        // The thread's slot is empty again: a stream handed over now runs at once.
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        InlineFirst.execute(async move { f.store(true, Ordering::SeqCst) });
        assert!(flag.load(Ordering::SeqCst));
    }

    /// Counts the wakes of the task polling a [`Batched`].
    #[derive(Default)]
    struct TaskWakes(AtomicUsize);

    impl Wake for TaskWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A stand-in for hyper's connection that behaves as h2 does: it keeps the waker of its
    /// latest poll, and the stream it hands over wakes that waker (h2's "a frame is queued")
    /// when it runs. With `yields`, every poll also wakes itself (a connection giving up the
    /// thread after a long poll).
    struct Wakeful {
        streams: usize,
        yields: bool,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
        polls: Arc<AtomicUsize>,
    }

    impl Future for Wakeful {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            *self.waker.lock().expect("not poisoned") = Some(cx.waker().clone());
            if std::mem::take(&mut self.streams) > 0 {
                let waker = self.waker.clone();
                InlineFirst.execute(async move {
                    if let Some(w) = waker.lock().expect("not poisoned").as_ref() {
                        w.wake_by_ref();
                    }
                });
            }
            if self.yields {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        }
    }

    /// A [`Wakeful`] connection in a [`Batched`], polled by a task whose wakes are counted.
    struct Polled {
        conn: Pin<Box<Batched<Wakeful, Arc<Flushes>>>>,
        kept: Arc<std::sync::Mutex<Option<Waker>>>,
        polls: Arc<AtomicUsize>,
        task: Arc<TaskWakes>,
        waker: Waker,
    }

    impl Polled {
        fn new(yields: bool) -> Self {
            let kept = Arc::new(std::sync::Mutex::new(None));
            let polls = Arc::new(AtomicUsize::new(0));
            let conn = Wakeful {
                streams: 1,
                yields,
                waker: kept.clone(),
                polls: polls.clone(),
            };
            let task = Arc::new(TaskWakes::default());
            Self {
                conn: Box::pin(Batched::new(conn, Arc::new(Flushes::default()))),
                kept,
                polls,
                waker: Waker::from(task.clone()),
                task,
            }
        }

        /// Polls the `Batched` once, as its task would.
        fn poll(&mut self) -> Poll<()> {
            let waker = self.waker.clone();
            self.conn.as_mut().poll(&mut Context::from_waker(&waker))
        }

        /// The waker the connection registered in its latest poll.
        fn kept(&self) -> Waker {
            let kept = self.kept.lock().expect("not poisoned");
            kept.clone().expect("registered")
        }

        fn polls(&self) -> usize {
            self.polls.load(Ordering::SeqCst)
        }

        fn task_wakes(&self) -> usize {
            self.task.0.load(Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn a_wake_the_next_poll_covers_does_not_wake_the_task_again() {
        let mut p = Polled::new(false);
        assert!(p.poll().is_pending());
        // The stream woke the connection; the poll after it covered that wake.
        assert_eq!(p.polls(), 2);
        assert_eq!(p.task_wakes(), 0, "no second task poll");
        // A wake after the poll (the socket turned readable) reaches the task.
        let later = p.kept();
        later.wake_by_ref();
        assert_eq!(p.task_wakes(), 1);
        // The waker passed on is taken: a second wake before the next poll adds nothing, and
        // the next poll registers it again.
        later.wake_by_ref();
        assert_eq!(p.task_wakes(), 1);
        assert!(p.poll().is_pending());
        later.wake_by_ref();
        assert_eq!(p.task_wakes(), 2);
    }

    #[tokio::test]
    async fn a_wake_during_the_last_poll_wakes_the_task() {
        let mut p = Polled::new(true);
        assert!(p.poll().is_pending());
        assert_eq!(p.polls(), 2);
        // The connection asked to be polled again during its last poll: the task is woken
        // once, so the connection cannot be forgotten (nor poll itself in a loop here).
        assert_eq!(p.task_wakes(), 1);
    }

    #[tokio::test]
    async fn a_wake_from_another_thread_is_never_lost() {
        for _ in 0..200 {
            let mut p = Polled::new(false);
            assert!(p.poll().is_pending());
            let theirs = p.kept();
            // Wakes racing the next poll: each lands either before it ends (seen by it and
            // passed on) or after (the task's waker directly); the task hears at least one.
            let other = std::thread::spawn(move || theirs.wake_by_ref());
            let _ = p.poll();
            other.join().expect("the waking thread ends");
            assert!(p.task_wakes() >= 1, "a wake was lost");
        }
    }
}
