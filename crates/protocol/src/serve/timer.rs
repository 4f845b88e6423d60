//! hyper's timer on tokio's, with sleeps that are cheap to poll again.
//!
//! hyper's h2 keep-alive polls its sleep on every poll of the connection (three per request on
//! the hit path), and tokio's `Sleep` goes through the task budget and registers the waker
//! with its timer entry on each of them. A [`QuietSleep`] that is polled again by the task it
//! last registered, before its deadline has fired, answers `Pending` at once: the timer will
//! wake that task anyway.

use hyper::rt::{Sleep, Timer};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// hyper's [`Timer`] on the tokio runtime's timer, making [`QuietSleep`]s.
#[derive(Clone, Copy, Debug, Default)]
pub struct QuietTimer;

impl Timer for QuietTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(QuietSleep::new(tokio::time::sleep(duration)))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(QuietSleep::new(tokio::time::sleep_until(deadline.into())))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<QuietSleep>() {
            Some(quiet) => quiet.reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

pin_project_lite::pin_project! {
    /// A tokio `Sleep` that remembers the waker its last poll registered.
    pub struct QuietSleep {
        #[pin]
        inner: tokio::time::Sleep,
        // The waker tokio's timer entry holds, until it fires or the deadline moves.
        registered: Option<Waker>,
    }
}

impl QuietSleep {
    fn new(inner: tokio::time::Sleep) -> Self {
        Self {
            inner,
            registered: None,
        }
    }

    /// Moves the deadline; the next poll registers its waker again.
    pub fn reset(self: Pin<&mut Self>, deadline: Instant) {
        let this = self.project();
        this.inner.reset(deadline.into());
        *this.registered = None;
    }
}

impl Future for QuietSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        // Not fired yet, and the task asking is the one the timer will wake: nothing to do.
        if this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
            && !this.inner.is_elapsed()
        {
            return Poll::Pending;
        }
        match this.inner.poll(cx) {
            Poll::Ready(()) => {
                *this.registered = None;
                Poll::Ready(())
            }
            Poll::Pending => {
                match this.registered {
                    Some(w) => w.clone_from(cx.waker()),
                    None => *this.registered = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

impl Sleep for QuietSleep {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The paused clock's now (std's `Instant::now` does not stop).
    fn now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn poll(sleep: &mut Pin<Box<dyn Sleep>>, waker: &Waker) -> Poll<()> {
        sleep.as_mut().poll(&mut Context::from_waker(waker))
    }

    /// Lets the paused clock run `d` and the timer fire what is due.
    async fn run_clock(d: Duration) {
        tokio::time::advance(d).await;
        tokio::task::yield_now().await;
    }

    #[tokio::test(start_paused = true)]
    async fn polled_again_by_the_same_task_it_still_fires_and_wakes_it() {
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut sleep = QuietTimer.sleep(Duration::from_secs(20));
        for _ in 0..3 {
            assert!(poll(&mut sleep, &waker).is_pending());
        }
        run_clock(Duration::from_secs(19)).await;
        assert!(poll(&mut sleep, &waker).is_pending());
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        run_clock(Duration::from_secs(1)).await;
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the deadline woke no one"
        );
        assert!(poll(&mut sleep, &waker).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn another_task_polling_it_is_the_one_woken() {
        let first = Arc::new(Count::default());
        let second = Arc::new(Count::default());
        let mut sleep = QuietTimer.sleep(Duration::from_secs(5));
        assert!(poll(&mut sleep, &Waker::from(first.clone())).is_pending());
        let second_waker = Waker::from(second.clone());
        assert!(poll(&mut sleep, &second_waker).is_pending());
        run_clock(Duration::from_secs(5)).await;
        assert_eq!(
            second.0.load(Ordering::SeqCst),
            1,
            "the last poller was not woken"
        );
        assert!(poll(&mut sleep, &second_waker).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_deadline_is_the_one_that_fires() {
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut sleep = QuietTimer.sleep(Duration::from_secs(20));
        assert!(poll(&mut sleep, &waker).is_pending());
        // Earlier: hyper moves the keep-alive deadline after a PING is sent.
        QuietTimer.reset(&mut sleep, now() + Duration::from_secs(2));
        assert!(poll(&mut sleep, &waker).is_pending());
        run_clock(Duration::from_secs(2)).await;
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(poll(&mut sleep, &waker).is_ready());
        // Later, after it fired: pending again until the new deadline.
        QuietTimer.reset(&mut sleep, now() + Duration::from_secs(30));
        assert!(poll(&mut sleep, &waker).is_pending());
        run_clock(Duration::from_secs(29)).await;
        assert!(poll(&mut sleep, &waker).is_pending());
        run_clock(Duration::from_secs(1)).await;
        assert!(poll(&mut sleep, &waker).is_ready());
    }
}
