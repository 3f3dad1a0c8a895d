//! Where reviews run: a runtime of their own, so that CPU-bound steps never hold the threads that
//! accept connections, shake hands and answer `/livez`, `/readyz` and `/metrics`.
//!
//! A step that computes without awaiting keeps its thread until it returns; on the threads that
//! also serve connections, a few such reviews at once would stall every probe and every other
//! review. On their own runtime they compete only with each other, and the connection's task
//! still answers at the review's deadline (see `webhook.rs`).

use std::future::Future;
use std::sync::Mutex;

use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

/// The review threads. Dropping the pool stops them without waiting for reviews in progress.
#[derive(Debug)]
pub(crate) struct ReviewPool {
    handle: Handle,
    /// Held only to be shut down on drop: dropping a runtime blocks, which an async context
    /// forbids, so it is shut down in the background instead.
    runtime: Mutex<Option<Runtime>>,
}

impl ReviewPool {
    /// A pool of `threads` threads (at least one).
    pub(crate) fn new(threads: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("admission-review")
            // Steps may call APIs (a Kubernetes client opening a connection spawns its task here).
            .enable_all()
            .build()?;
        Ok(Self { handle: runtime.handle().clone(), runtime: Mutex::new(Some(runtime)) })
    }

    /// Runs `task` on the pool.
    pub(crate) fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }
}

impl Drop for ReviewPool {
    fn drop(&mut self) {
        let runtime = self.runtime.lock().map_or_else(|poisoned| poisoned.into_inner().take(), |mut r| r.take());
        if let Some(runtime) = runtime {
            runtime.shutdown_background();
        }
    }
}

/// The number of review threads for a configured `threads` (0: one per CPU the process may use).
pub(crate) fn threads(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}
