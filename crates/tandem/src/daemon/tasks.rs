//! The daemon's background tasks: each one named, tracked, stopped by one token, and
//! waited for (with a bound) on shutdown.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

/// When a task is expected to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Until {
    /// It runs until shutdown: ending before is logged as abnormal.
    Shutdown,
    /// It ends when its work is done, or at shutdown.
    Done,
}

/// The background tasks of one daemon (not the connections: those are the
/// [`tandem_proxy::Lifecycle`]'s). Cheap to clone: clones share the set.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
    /// Every task spawned and not yet seen finished, by name.
    running: Arc<Mutex<Vec<(&'static str, AbortHandle)>>>,
}

impl Tasks {
    /// The token every task obeys: cancelled at shutdown.
    pub(crate) fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// Runs `task` as `name`. A panic, or an end before shutdown of a task meant to run
    /// until then, is logged with the name.
    pub(crate) fn spawn<F>(&self, name: &'static str, until: Until, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        let handle = self.tracker.spawn(async move {
            match AssertUnwindSafe(task).catch_unwind().await {
                Ok(()) if until == Until::Shutdown && !stop.is_cancelled() => {
                    warn!(task = name, "background task {name} ended before shutdown");
                }
                Ok(()) => debug!(task = name, "background task {name} ended"),
                Err(panic) => {
                    let why = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    error!(task = name, "background task {name} panicked: {why}");
                }
            }
        });
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|(_, h)| !h.is_finished());
        running.push((name, handle.abort_handle()));
    }

    /// Cancels the token and waits up to `bound` for every task; those still running
    /// then are named in the log and aborted. Returns their names.
    pub(crate) async fn shutdown(&self, bound: Duration) -> Vec<&'static str> {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(bound, self.tracker.wait())
            .await
            .is_ok()
        {
            return Vec::new();
        }
        let late: Vec<(&'static str, AbortHandle)> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, h)| !h.is_finished())
            .cloned()
            .collect();
        let names: Vec<&'static str> = late.iter().map(|(n, _)| *n).collect();
        warn!(tasks = ?names, "background tasks still running {bound:?} after shutdown began: aborted");
        for (_, h) in &late {
            h.abort();
        }
        self.tracker.wait().await;
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_waits_for_obedient_tasks_and_aborts_the_others() {
        let tasks = Tasks::default();
        let stop = tasks.stop().clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tasks.spawn("obedient", Until::Shutdown, async move {
            stop.cancelled().await;
            let _ = done_tx.send(());
        });
        tasks.spawn("deaf", Until::Shutdown, std::future::pending());
        tasks.spawn("quick", Until::Done, async {});
        let late = tasks.shutdown(Duration::from_millis(200)).await;
        assert_eq!(late, ["deaf"]);
        assert!(done_rx.await.is_ok(), "the obedient task saw the token");
        assert!(tasks.tracker.is_empty());
    }

    #[tokio::test]
    async fn a_panicking_task_does_not_take_the_others_down() {
        let tasks = Tasks::default();
        tasks.spawn("panics", Until::Done, async { panic!("on purpose") });
        let stop = tasks.stop().clone();
        tasks.spawn(
            "waits",
            Until::Shutdown,
            async move { stop.cancelled().await },
        );
        tokio::task::yield_now().await;
        assert!(tasks.shutdown(Duration::from_secs(5)).await.is_empty());
    }
}
