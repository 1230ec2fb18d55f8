//! Spawning tasks. Under `--cfg madsim` a task belongs to the node it was spawned on and
//! dies with it when the simulator kills the node.

use std::future::Future;

/// The handle of a spawned task; awaiting it yields the task's output.
pub type JoinHandle<T> = tokio::task::JoinHandle<T>;

/// Runs `fut` as a task of the current runtime (or simulated node).
pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(fut)
}

/// Yields to other tasks once.
pub async fn yield_now() {
    tokio::task::yield_now().await;
}
