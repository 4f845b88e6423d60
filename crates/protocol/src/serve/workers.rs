//! Connection workers: one thread per core, each with its own single-threaded tokio runtime.
//!
//! The accept loop hands every accepted connection to the next worker; from then on the
//! connection, its requests, and whatever they spawn (h2 streams, origin connections,
//! background refreshes) run on that worker's thread. No task is stolen by another thread and
//! no request wakes a parked one: on a 2-core machine tokio's work-stealing runtime spent about
//! a fifth of the edge's time handing tasks between its threads (futex wakes, context
//! switches), which a runtime per core does not (`bench/quick.sh`; ARCHITECTURE.md). The cost:
//! a connection stays on its worker, so a worker's connections share one core even while
//! another core idles; with many connections that evens out.
//!
//! Dropping the last [`ConnectionWorkers`] stops the workers: each runtime is dropped on its own
//! thread, which cancels the connections still open there. Owners drain connections first.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A fixed set of worker threads, each running a current-thread tokio runtime.
pub struct ConnectionWorkers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropped with `self`: each worker's `block_on` returns and its runtime is dropped.
    _stop: Vec<oneshot::Sender<()>>,
}

impl std::fmt::Debug for ConnectionWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionWorkers")
            .field("threads", &self.handles.len())
            .finish()
    }
}

impl ConnectionWorkers {
    /// Starts `threads` workers named `{name}-{i}`. Fails if a thread or runtime cannot be
    /// created (nothing is left running then).
    pub fn start(threads: NonZeroUsize, name: &str) -> std::io::Result<Self> {
        let mut handles = Vec::with_capacity(threads.get());
        let mut stop = Vec::with_capacity(threads.get());
        for i in 0..threads.get() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, rx) = oneshot::channel::<()>();
            handles.push(runtime.handle().clone());
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    // Runs the spawned connections until the owner is dropped; dropping the
                    // runtime here (outside any async context) cancels what is left.
                    let _ = runtime.block_on(rx);
                    drop(runtime);
                })?;
            stop.push(tx);
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            _stop: stop,
        })
    }

    /// The number of workers.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Always `false`: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs `task` on the next worker, round robin. A task must not block its thread: it
    /// shares it with every other connection of that worker.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len().max(1);
        match self.handles.get(i) {
            Some(handle) => {
                handle.spawn(task);
            }
            // Unreachable (there is always one worker); serve on the caller's runtime.
            None => {
                tokio::spawn(task);
            }
        }
    }
}

/// The default worker count: one per core the process may use, as nginx's `worker_processes
/// auto` and most proxies do. With a load generator on the same 2-core machine one worker
/// gives a lower tail (p99 0.9 ms instead of 3.8 ms at 1 KiB) for as many 1 KiB hits, but 35%
/// fewer 16 KiB disk hits, and a real edge has no load generator beside it; `--workers` /
/// `connection_workers` choose otherwise (`bench/quick.sh`, ARCHITECTURE.md).
pub fn default_threads() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn tasks_run_round_robin_on_named_worker_threads() {
        let workers = ConnectionWorkers::start(NonZeroUsize::new(3).unwrap(), "w").unwrap();
        assert_eq!(workers.len(), 3);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::channel(6);
        for _ in 0..6 {
            let seen = seen.clone();
            let tx = tx.clone();
            workers.spawn(async move {
                let name = std::thread::current().name().unwrap_or("").to_owned();
                // Timers and I/O work on the worker's own runtime.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                seen.lock().unwrap().push(name);
                tx.send(()).await.unwrap();
            });
        }
        for _ in 0..6 {
            rx.recv().await.unwrap();
        }
        let names: HashSet<String> = seen.lock().unwrap().iter().cloned().collect();
        let want: HashSet<String> = ["w-0", "w-1", "w-2"].map(String::from).into();
        assert_eq!(names, want);
    }

    #[tokio::test]
    async fn dropping_the_workers_cancels_their_tasks() {
        let workers = ConnectionWorkers::start(NonZeroUsize::MIN, "w").unwrap();
        let (started_tx, started) = oneshot::channel::<()>();
        let (held_tx, held) = oneshot::channel::<()>();
        workers.spawn(async move {
            let _held = held_tx;
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
        });
        started.await.unwrap();
        drop(workers);
        // The task's future was dropped with its runtime: its sender is gone.
        assert!(held.await.is_err());
    }
}
