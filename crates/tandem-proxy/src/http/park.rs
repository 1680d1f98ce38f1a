//! Idle keep-alive connections of the fast path, parked without a task.
//!
//! A plain HTTP/1.1 client quiet for [`PARK_AFTER`] between requests has nothing in
//! flight and no buffer: what it still needs is its socket, its connection's state and
//! its place under the limits. Its task ends and leaves those in a [`Parked`] entry of
//! the service's [`Lot`], whose waker sits in the socket's registration: when the
//! socket becomes readable (the next request, or the client's goodbye) the waker
//! spawns a task that serves it again. An idle connection then costs its socket's
//! registration and the entry, instead of a task and the request-serving future.
//!
//! The lot closes what it holds at each connection's `http.header_timeout` deadline
//! (as the waiting task did) and, at once, at the drain deadline (`close_all`); a task
//! of its own does both, and runs only while something is parked. Each entry keeps
//! the connection counted where a task did: its slots under the service's, the node's
//! and the client's limits, and a token of the daemon's task tracker.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Connection;
use crate::service::Held;

/// How long a plain fast-path connection waits for its next request in its own task
/// (busy keep-alive clients send the next one well within it) before it is parked.
pub(super) const PARK_AFTER: Duration = Duration::from_millis(100);

/// A parked connection: what its next task needs to serve it again.
pub(super) struct Resume {
    pub(super) stream: TcpStream,
    pub(super) service: Arc<crate::Service>,
    pub(super) state: Arc<super::HttpState>,
    pub(super) peer: std::net::SocketAddr,
    pub(super) close_all: tokio_util::sync::CancellationToken,
    /// Requests it has served.
    pub(super) requests: u32,
    pub(super) held: Held,
}

impl Resume {
    /// The connection, its socket and its slots, to be served on.
    pub(super) fn serve_on(self) -> (Arc<Connection>, TcpStream, Held) {
        let conn = Connection::new(
            self.service,
            self.state,
            self.peer,
            self.close_all,
            self.requests,
        );
        (conn, self.stream, self.held)
    }
}

/// The parked connections of one service.
#[derive(Default)]
pub(crate) struct Lot {
    inner: Mutex<Inner>,
    /// An entry came with a deadline before those the lot's task waits for.
    earlier: Notify,
    /// The runtime whose tasks take parked connections up again when a wake comes from
    /// outside any runtime, and where the lot's task runs.
    runtime: OnceLock<tokio::runtime::Handle>,
}

impl std::fmt::Debug for Lot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lot")
            .field("parked", &self.lock().parked.len())
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    /// By deadline, then by number.
    parked: BTreeMap<(Instant, u64), Arc<Parked>>,
    next: u64,
    /// The lot's task runs.
    watching: bool,
}

/// One parked connection: taken by whichever comes first, its socket's readiness
/// (the waker), its deadline or the drain (the lot's task).
struct Parked {
    key: (Instant, u64),
    resume: Mutex<Option<Resume>>,
}

impl Lot {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remove(&self, key: (Instant, u64)) {
        self.lock().parked.remove(&key);
    }

    /// Closes the parked connections whose deadline is not after `now` (all of them
    /// with `None`).
    fn close(&self, now: Option<Instant>) {
        let closing: Vec<Arc<Parked>> = {
            let mut inner = self.lock();
            match now {
                None => std::mem::take(&mut inner.parked).into_values().collect(),
                Some(now) => {
                    let later = inner.parked.split_off(&(now, u64::MAX));
                    std::mem::replace(&mut inner.parked, later)
                        .into_values()
                        .collect()
                }
            }
        };
        // (Outside the lot's lock: closing a socket clears its waker, one of these.)
        for parked in closing {
            drop(parked.take());
        }
    }
}

impl Parked {
    fn take(&self) -> Option<Resume> {
        self.resume.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Wake for Parked {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    /// The socket is readable (or closed, or failed): a new task serves it.
    fn wake_by_ref(self: &Arc<Self>) {
        let Some(resume) = self.take() else {
            return;
        };
        let service = resume.service.clone();
        let lot = &service.parked;
        lot.remove(self.key);
        // The wake comes from the I/O driver of the runtime the socket is registered
        // with (each worker thread has its own): the connection goes on there.
        let runtime = tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| lot.runtime.get().cloned());
        if let Some(runtime) = runtime {
            let (conn, stream, held) = resume.serve_on();
            runtime.spawn(super::serve_plain(conn, stream, held));
        }
    }
}

/// Parks an idle connection until its socket is readable, its `deadline` passes (then
/// it is closed) or the drain deadline comes (closed at once). Gives it back when its
/// socket is readable already: the caller serves on.
pub(super) fn park(resume: Resume, deadline: Instant) -> Option<Resume> {
    let service = resume.service.clone();
    let close_all = resume.close_all.clone();
    let lot = &service.parked;
    let runtime = lot.runtime.get_or_init(tokio::runtime::Handle::current);
    let mut inner = lot.lock();
    if close_all.is_cancelled() {
        // Draining: an idle connection closes now.
        drop(inner);
        drop(resume);
        return None;
    }
    let key = (deadline, inner.next);
    inner.next += 1;
    let parked = Arc::new(Parked {
        key,
        resume: Mutex::new(None),
    });
    {
        let mut slot = parked.resume.lock().unwrap_or_else(|e| e.into_inner());
        let waker = Waker::from(parked.clone());
        let mut cx = Context::from_waker(&waker);
        if resume.stream.poll_read_ready(&mut cx).is_ready() {
            // Readable already (or failed: the next read says so).
            return Some(resume);
        }
        // From here a wake takes it, once this lock is let go.
        *slot = Some(resume);
    }
    let earliest = inner.parked.keys().next().is_none_or(|first| key < *first);
    inner.parked.insert(key, parked);
    if !inner.watching {
        inner.watching = true;
        runtime.spawn(watch(service.clone(), close_all));
    } else if earliest {
        lot.earlier.notify_one();
    }
    None
}

/// The lot's task: closes each parked connection at its deadline, and all of them at
/// the drain deadline; ends when nothing is parked.
async fn watch(service: Arc<crate::Service>, close_all: tokio_util::sync::CancellationToken) {
    let lot = &service.parked;
    loop {
        let next = {
            let mut inner = lot.lock();
            match inner.parked.keys().next() {
                Some(&(deadline, _)) => deadline,
                None => {
                    inner.watching = false;
                    return;
                }
            }
        };
        tokio::select! {
            () = close_all.cancelled() => {
                lot.close(None);
                // (Later ones see close_all and close themselves.)
                lot.lock().watching = false;
                return;
            }
            () = tokio::time::sleep_until(next) => lot.close(Some(Instant::now())),
            () = lot.earlier.notified() => {}
        }
    }
}
