//! The data plane's threads: with `threads` other than 1, every listener is accepted on
//! by N worker threads, each running its own single-threaded runtime, and a connection
//! lives its whole life on the worker that accepted it (as nginx's workers and
//! HAProxy's threads do). The control plane (health checks, control socket, VRRP,
//! sync, reloads) stays on the main runtime.
//!
//! Each worker registers its own descriptor of the one listening socket (a dup): the
//! kernel's socket, its queue and the descriptor handed over at an upgrade stay one
//! per listener, whatever the count of workers. A work-stealing runtime instead moved
//! each new connection's task between threads and woke idle workers for it; on a
//! machine whose cores the proxy shares with its clients and backends those wake-ups
//! cost more than the work (bench/run's defaults section, see docs/benchmarks.md).
//!
//! The kernel wakes every worker for a connection on a shared socket and the first to
//! run takes all that are queued; each worker's open connections are counted
//! ([`Spread`]) and a worker over its share leaves accepting to the others, so that a
//! burst of long connections does not land on one thread.

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

use tandem_proxy::spread::Spread;
use tandem_proxy::{Lifecycle, Service};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Worker threads, each with a current-thread runtime; they end when this is dropped.
#[derive(Debug)]
pub(super) struct Workers {
    handles: Vec<Handle>,
    stop: CancellationToken,
    spread: Arc<Spread>,
}

impl Workers {
    /// `None` for `threads = 1` (everything runs on the main thread); otherwise
    /// `threads` workers, or one per CPU for 0.
    pub(super) fn for_threads(threads: usize) -> io::Result<Option<Arc<Workers>>> {
        let n = match threads {
            1 => return Ok(None),
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Workers::start(n).map(|w| Some(Arc::new(w)))
    }

    /// Starts `n` worker threads.
    pub(super) fn start(n: usize) -> io::Result<Workers> {
        // Built first, so that a failure part way ends the threads already started.
        let mut workers = Workers {
            handles: Vec::with_capacity(n),
            stop: CancellationToken::new(),
            spread: Spread::new(n),
        };
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            workers.handles.push(runtime.handle().clone());
            let stop = workers.stop.clone();
            std::thread::Builder::new()
                .name(format!("tandem-worker-{i}"))
                .spawn(move || {
                    // Tasks run while the thread waits here; dropped on this thread,
                    // outside any runtime, when the workers end.
                    runtime.block_on(stop.cancelled());
                    drop(runtime);
                })?;
        }
        Ok(workers)
    }

    /// How many workers there are.
    pub(super) fn len(&self) -> usize {
        self.handles.len()
    }

    /// The connections open on each worker now.
    pub(super) fn live(&self) -> Vec<u64> {
        self.spread.live()
    }

    /// Starts `service`'s accept loop on `listener` on every worker, each on its own
    /// descriptor of the socket; `listener` itself is closed (the socket stays open).
    /// Out of descriptors, `listener` is given back.
    pub(super) fn serve(
        &self,
        service: &Arc<Service>,
        listener: TcpListener,
        life: &Lifecycle,
    ) -> Result<AcceptLoops, (io::Error, TcpListener)> {
        let copies = match self
            .handles
            .iter()
            .map(|_| listener.as_fd().try_clone_to_owned())
            .collect::<io::Result<Vec<_>>>()
        {
            Ok(copies) => copies,
            Err(e) => return Err((e, listener)),
        };
        drop(listener);
        let loops = copies
            .into_iter()
            .map(std::net::TcpListener::from)
            .zip(&self.handles)
            .enumerate()
            .map(|(i, (std, handle))| {
                let (service, life) = (service.clone(), life.clone());
                let spread = self.spread.clone();
                handle.spawn(async move {
                    // Registered with this worker's reactor: it runs inside it.
                    let listener = TcpListener::from_std(std).inspect_err(|e| {
                        warn!(service = %service.config.load().name, "a worker cannot accept on a listener: {e}");
                        // The others must not wait for it to take its share.
                        spread.retire(i);
                    })?;
                    let seat = spread.seat(i);
                    Ok(service.serve_seated(listener, life, Some(seat)).await)
                })
            })
            .collect();
        Ok(AcceptLoops(loops))
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The accept loops of one listener: one on the main runtime, or one per worker. Each
/// hands its descriptor of the listener back when its stop token is cancelled.
#[derive(Debug)]
pub(super) struct AcceptLoops(Vec<JoinHandle<io::Result<TcpListener>>>);

impl AcceptLoops {
    /// `service`'s accept loop on `listener`, on the calling runtime.
    pub(super) fn here(service: Arc<Service>, listener: TcpListener, life: Lifecycle) -> Self {
        AcceptLoops(vec![tokio::spawn(async move {
            Ok(service.serve(listener, life).await)
        })])
    }

    /// Waits for every loop to end (after its stop token was cancelled) and returns the
    /// listener, registered with the calling runtime; an error when no loop handed it
    /// back.
    pub(super) async fn join(self) -> io::Result<TcpListener> {
        let mut kept = None;
        let mut failed = None;
        for task in self.0 {
            match task.await {
                Ok(Ok(l)) if kept.is_none() => kept = Some(l),
                // Another descriptor of the same socket: closing it leaves the socket open.
                Ok(Ok(l)) => drop(l),
                Ok(Err(e)) => failed = Some(e),
                Err(e) => failed = Some(io::Error::other(e)),
            }
        }
        match kept {
            // Off the reactor it was registered with, onto the caller's.
            Some(l) => TcpListener::from_std(l.into_std()?),
            None => Err(failed.unwrap_or_else(|| io::Error::other("no accept loop"))),
        }
    }
}
