//! Connections spread over worker threads. Every worker accepts on its own descriptor
//! of each shared listening socket, and the kernel wakes all of them for a new
//! connection: whichever runs first takes every connection queued, so a burst (a load
//! generator's 32 keep-alive connections, opened at once) can land on one worker while
//! the others idle. A worker holding more than its share of the open connections
//! therefore leaves the socket to the others until they catch up, as HAProxy's threads
//! hand a connection to the least loaded one.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The open connections of each worker.
#[derive(Debug)]
pub struct Spread {
    workers: Box<[Worker]>,
}

/// One worker's figures, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Worker {
    /// Connections open now.
    live: AtomicUsize,
    /// Accept loops of this worker waiting for their turn.
    waiting: AtomicUsize,
    /// Told when the worker may be back within its share.
    turn: Notify,
}

impl Spread {
    /// Counts for `n` workers.
    pub fn new(n: usize) -> Arc<Spread> {
        Arc::new(Spread {
            workers: (0..n).map(|_| Worker::default()).collect(),
        })
    }

    /// The connections open on each worker now.
    pub fn live(&self) -> Vec<u64> {
        self.workers
            .iter()
            .map(|w| w.live.load(SeqCst) % RETIRED)
            .map(|n| n as u64)
            .collect()
    }

    /// Worker `index`'s place (its accept loops take one each).
    pub fn seat(self: &Arc<Self>, index: usize) -> Seat {
        assert!(index < self.workers.len(), "no worker {index}");
        Seat {
            spread: self.clone(),
            index,
        }
    }

    /// Whether worker `index` holds more than its share: more than the least loaded
    /// worker, beyond a slack of one connection and an eighth, so that connections
    /// that come and go (one request each) do not hold accepting up.
    fn ahead(&self, index: usize) -> bool {
        let mine = self.workers[index].live.load(SeqCst);
        let least = self
            .workers
            .iter()
            .map(|w| w.live.load(SeqCst))
            .min()
            .unwrap_or(0);
        ahead_of(mine, least)
    }

    /// Takes worker `index` out of the comparison for good (it cannot accept on some
    /// listener): counted as far ahead, it never holds the others back, and its own
    /// loops wait while others take the connections.
    pub fn retire(&self, index: usize) {
        self.workers[index].live.fetch_add(RETIRED, SeqCst);
        (0..self.workers.len()).for_each(|i| self.tell(i));
    }

    /// Wakes worker `index`'s accept loops that wait for their turn, if any.
    fn tell(&self, index: usize) {
        let w = &self.workers[index];
        if w.waiting.load(SeqCst) > 0 {
            w.turn.notify_waiters();
        }
    }
}

/// What a retired worker counts as, beyond its connections.
const RETIRED: usize = usize::MAX / 4;

/// The share rule of [`Spread::ahead`], on counts.
fn ahead_of(mine: usize, least: usize) -> bool {
    mine > least + 1 + least / 8
}

/// One worker's place in a [`Spread`].
#[derive(Debug, Clone)]
pub struct Seat {
    spread: Arc<Spread>,
    index: usize,
}

impl Seat {
    /// Returns once this worker holds no more than its share of the open connections
    /// (at once, mostly), or when `stop` fires.
    pub async fn turn(&self, stop: &CancellationToken) {
        let spread = &*self.spread;
        if !spread.ahead(self.index) {
            return;
        }
        let worker = &spread.workers[self.index];
        worker.waiting.fetch_add(1, SeqCst);
        loop {
            let mut told = pin!(worker.turn.notified());
            // Registered before the counts are read again: a change after this read
            // wakes it.
            told.as_mut().enable();
            if !spread.ahead(self.index) || stop.is_cancelled() {
                break;
            }
            tokio::select! {
                () = told => {}
                () = stop.cancelled() => break,
            }
        }
        worker.waiting.fetch_sub(1, SeqCst);
    }

    /// Counts a connection this worker accepted, until the returned guard is dropped.
    pub fn hold(&self) -> Hold {
        let spread = &*self.spread;
        spread.workers[self.index].live.fetch_add(1, SeqCst);
        // Another worker that waits for its turn may be within its share now.
        for i in (0..spread.workers.len()).filter(|&i| i != self.index) {
            spread.tell(i);
        }
        Hold(self.clone())
    }
}

/// A connection counted on its worker; dropping it ends the count.
#[derive(Debug)]
pub struct Hold(Seat);

impl Drop for Hold {
    fn drop(&mut self) {
        let Seat { spread, index } = &self.0;
        spread.workers[*index].live.fetch_sub(1, SeqCst);
        spread.tell(*index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_worker_is_ahead_only_beyond_the_slack() {
        assert!(!ahead_of(0, 0));
        assert!(!ahead_of(1, 0));
        assert!(ahead_of(2, 0));
        assert!(!ahead_of(17, 15));
        assert!(ahead_of(18, 15));
        assert!(!ahead_of(100, 90));
        assert!(ahead_of(103, 90));
    }

    #[test]
    fn a_retired_worker_never_holds_the_others_back() {
        let spread = Spread::new(3);
        let (a, b) = (spread.seat(0), spread.seat(1));
        let _held: Vec<_> = (0..10).map(|_| a.hold()).collect();
        assert!(spread.ahead(0));
        spread.retire(2);
        let _more: Vec<_> = (0..8).map(|_| b.hold()).collect();
        assert!(!spread.ahead(0) && !spread.ahead(1));
        assert!(spread.ahead(2));
        assert_eq!(spread.live(), vec![10, 8, 0]);
    }

    #[test]
    fn holds_count_per_worker_until_dropped() {
        let spread = Spread::new(2);
        let (a, b) = (spread.seat(0), spread.seat(1));
        let held: Vec<_> = (0..3).map(|_| a.hold()).collect();
        let one = b.hold();
        assert_eq!(spread.live(), vec![3, 1]);
        drop(held);
        drop(one);
        assert_eq!(spread.live(), vec![0, 0]);
    }

    #[tokio::test]
    async fn a_worker_ahead_waits_until_another_catches_up_or_its_own_end() {
        let stop = CancellationToken::new();
        let spread = Spread::new(2);
        let (a, b) = (spread.seat(0), spread.seat(1));
        // Within the share: at once.
        a.turn(&stop).await;
        let mut mine: Vec<_> = (0..2).map(|_| a.hold()).collect();
        let waiting = {
            let (a, stop) = (a.clone(), stop.clone());
            tokio::spawn(async move { a.turn(&stop).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "2 against 0 is ahead");
        // The other worker takes one: 2 against 1 is within the share.
        let theirs = b.hold();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken when another worker caught up")
            .unwrap();

        // Ahead again, then one of its own connections ends.
        drop(theirs);
        mine.push(a.hold());
        let waiting = {
            let (a, stop) = (a.clone(), stop.clone());
            tokio::spawn(async move { a.turn(&stop).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "3 against 0 is ahead");
        mine.truncate(1);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken when its own connections ended")
            .unwrap();

        // Stopping ends the wait too.
        mine.extend((0..3).map(|_| a.hold()));
        let waiting = {
            let (a, stop) = (a.clone(), stop.clone());
            tokio::spawn(async move { a.turn(&stop).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("stopping ends the wait")
            .unwrap();
    }
}
