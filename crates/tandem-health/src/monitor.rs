//! Scheduling checks and publishing their effect.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use tandem_balance::{Agent, BackendState, PoolSet};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::machine::{Probe, RiseFall};
use crate::probe::{Begun, Prober, fmt_duration};

/// Anything that can check a backend: the real [`Prober`], or a script in tests.
pub trait Checker: Send + Sync + 'static {
    /// Checks `target` once; must end within the check's timeout.
    fn probe(&self, target: SocketAddr) -> Pin<Box<dyn Future<Output = Probe> + Send + '_>>;

    /// Begins a check of `target`: its result when it needs no waiting, else the check
    /// to await (by default the whole [`Checker::probe`]).
    fn begin(self: Arc<Self>, target: SocketAddr) -> Started {
        Started::Waiting(Box::pin(async move { self.probe(target).await }))
    }
}

/// A check begun by [`Checker::begin`].
pub enum Started {
    /// Over already.
    Done(Probe),
    /// Under way: its result when awaited.
    Waiting(Pin<Box<dyn Future<Output = Probe> + Send>>),
}

impl Checker for Prober {
    fn probe(&self, target: SocketAddr) -> Pin<Box<dyn Future<Output = Probe> + Send + '_>> {
        Box::pin(Prober::probe(self, target))
    }

    fn begin(self: Arc<Self>, target: SocketAddr) -> Started {
        match Prober::begin(&self, target) {
            Begun::Done(probe) => Started::Done(probe),
            Begun::Connecting(socket, started) => {
                Started::Waiting(Box::pin(async move { self.finish(socket, started).await }))
            }
            Begun::Waiting => {
                Started::Waiting(Box::pin(async move { self.probe_waiting(target).await }))
            }
        }
    }
}

/// The last check of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastCheck {
    /// Whether it passed.
    pub ok: bool,
    /// How long it took.
    pub latency: Duration,
    /// Why it failed.
    pub error: String,
    /// When it ended.
    pub at: SystemTime,
}

/// What is known of one checked backend.
#[derive(Debug, Clone)]
pub struct BackendHealth {
    /// Whether it counts as up.
    pub up: bool,
    /// The last result.
    pub last: Option<LastCheck>,
    /// When the state last changed (or checking began).
    pub since: SystemTime,
    /// Checks run so far.
    pub checks: u64,
    /// Checks failed so far.
    pub failures: u64,
    /// The end of validity of the certificate the last TLS check saw.
    pub not_after: Option<SystemTime>,
    /// When a near expiry was last logged.
    expiry_logged: Option<SystemTime>,
    machine: RiseFall,
}

/// How often a certificate that is about to expire is logged again.
const EXPIRY_LOG_EVERY: Duration = Duration::from_secs(24 * 3600);

impl BackendHealth {
    /// Whether its checks have decided (first rise or fall reached): until then `up` is
    /// only the check's `initial` guess.
    pub fn is_decided(&self) -> bool {
        self.machine.is_decided()
    }
}

/// A change of state, as published to watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Pool of the backend.
    pub pool: String,
    /// The backend.
    pub backend: SocketAddr,
    /// New state.
    pub up: bool,
    /// Consecutive results that caused it.
    pub after: u32,
    /// Why (the last failure, going down).
    pub reason: String,
    /// When.
    pub at: SystemTime,
}

/// The health of every checked backend, readable by other parts of tandem (control
/// socket, metrics, VRRP tracking), and the stream of transitions.
#[derive(Debug)]
pub struct HealthBoard {
    /// Each pool's backends' slots, which their check tasks hold too (a result takes no
    /// lookup; a reader finds a backend without building a key).
    backends: RwLock<HashMap<String, HashMap<SocketAddr, Slot>>>,
    changes: broadcast::Sender<Transition>,
    /// Counts backends whose checks reached their first decision.
    decisions: watch::Sender<u64>,
    /// The last answer of each backend's agent (agent checks).
    agents: RwLock<HashMap<(String, SocketAddr), AgentSeen>>,
    /// Counts agent answers that changed a backend's weight.
    weights: watch::Sender<u64>,
    /// Each pool's count of changes a reader shows (see [`HealthBoard::generation`]).
    generations: RwLock<HashMap<String, Arc<AtomicU64>>>,
}

/// One checked backend's health, shared by the board and the backend's check task.
type Slot = Arc<Mutex<BackendHealth>>;

fn lock(slot: &Mutex<BackendHealth>) -> MutexGuard<'_, BackendHealth> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a backend's agent said last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSeen {
    /// The states it set.
    pub agent: Agent,
    /// Its answer as read (first line, trimmed), or why asking failed.
    pub said: String,
    /// Whether the last ask failed (the states of the last answer stay).
    pub failed: bool,
    /// When.
    pub at: SystemTime,
}

impl Default for HealthBoard {
    fn default() -> Self {
        HealthBoard {
            backends: RwLock::default(),
            changes: broadcast::channel(1024).0,
            decisions: watch::channel(0).0,
            agents: RwLock::default(),
            weights: watch::channel(0).0,
            generations: RwLock::default(),
        }
    }
}

impl HealthBoard {
    /// The health of `backend` in `pool`, when it is checked.
    pub fn get(&self, pool: &str, backend: SocketAddr) -> Option<BackendHealth> {
        self.read()
            .get(pool)
            .and_then(|backends| backends.get(&backend))
            .map(|slot| lock(slot).clone())
    }

    /// Every checked backend.
    pub fn all(&self) -> Vec<((String, SocketAddr), BackendHealth)> {
        self.read()
            .iter()
            .flat_map(|(pool, backends)| {
                backends
                    .iter()
                    .map(|(a, slot)| ((pool.clone(), *a), lock(slot).clone()))
            })
            .collect()
    }

    /// Whether every checked backend of `pool` has decided (first rise or fall
    /// reached); true for a pool without checks (or unknown here).
    pub fn decided(&self, pool: &str) -> bool {
        self.read().get(pool).is_none_or(|backends| {
            backends
                .values()
                .all(|slot| lock(slot).machine.is_decided())
        })
    }

    /// Counts the changes of `pool`'s backends that a status shows: up or down, the
    /// first decision, the states an agent set. A reader that saw the same count saw
    /// the same (0 for a pool without checks or agent).
    pub fn generation(&self, pool: &str) -> u64 {
        self.generations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(pool)
            .map_or(0, |g| g.load(Relaxed))
    }

    /// The change count of `pool` (made when it has none yet).
    fn generation_of(&self, pool: &str) -> Arc<AtomicU64> {
        if let Some(g) = self
            .generations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(pool)
        {
            return g.clone();
        }
        self.generations
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(pool.to_string())
            .or_default()
            .clone()
    }

    /// Changes each time a backend's checks reach their first decision (which need not
    /// be a transition: an initially down backend whose first checks fail).
    pub fn decisions(&self) -> watch::Receiver<u64> {
        self.decisions.subscribe()
    }

    /// A receiver of every transition from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.changes.subscribe()
    }

    /// What the agent of `backend` in `pool` said last, when its pool has an agent.
    pub fn agent(&self, pool: &str, backend: SocketAddr) -> Option<AgentSeen> {
        self.agents
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(pool.to_string(), backend))
            .cloned()
    }

    /// Changes each time an agent's answer changes a backend's weight: the pools'
    /// selectors then need a new generation (the daemon builds it).
    pub fn weight_changes(&self) -> watch::Receiver<u64> {
        self.weights.subscribe()
    }

    /// Records one ask of an agent: an answer sets the backend's agent states, a
    /// failure keeps them; changes are logged once.
    fn record_agent(
        &self,
        pool: &str,
        backend: SocketAddr,
        state: &BackendState,
        asked: Result<String, String>,
    ) {
        let now = SystemTime::now();
        let before = state.agent();
        let seen = match asked.as_deref().map(crate::agent::parse) {
            Ok(Some(answer)) => {
                if !answer.ignored.is_empty() {
                    tracing::debug!(target: "tandem::health", pool, backend = %backend, ignored = ?answer.ignored, "agent words ignored");
                }
                AgentSeen {
                    agent: answer.agent,
                    said: asked
                        .as_deref()
                        .unwrap_or_default()
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                    failed: false,
                    at: now,
                }
            }
            Ok(None) => AgentSeen {
                agent: before,
                said: "empty answer".into(),
                failed: true,
                at: now,
            },
            Err(e) => AgentSeen {
                agent: before,
                said: e.clone(),
                failed: true,
                at: now,
            },
        };
        let previous = self
            .agents
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert((pool.to_string(), backend), seen.clone());
        if seen.agent != before {
            self.generation_of(pool).fetch_add(1, Relaxed);
            if state.set_agent(seen.agent) {
                self.weights.send_modify(|n| *n += 1);
            }
            info!(target: "tandem::health", pool, backend = %backend, agent = %seen.said,
                "{pool} {backend}: agent says {} (was {})", seen.agent.describe(), before.describe());
        }
        let failed_before = previous.as_ref().is_some_and(|p| p.failed);
        if seen.failed && !failed_before {
            warn!(target: "tandem::health", pool, backend = %backend, "{pool} {backend}: {}; its last answer stays", seen.said);
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, HashMap<SocketAddr, Slot>>> {
        self.backends.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, HashMap<SocketAddr, Slot>>> {
        self.backends.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds a result; on a change, flips the backend's state, logs once and publishes.
    /// A certificate within `warn_expiry` of its end is logged (again each day).
    fn record(&self, entry: &Entry, check: &HealthJob, probe: Probe) {
        let HealthJob {
            slot,
            warn_expiry,
            generation,
            ..
        } = check;
        let (pool, backend, state, warn_expiry) = (
            entry.pool.as_str(),
            entry.backend,
            &entry.state,
            *warn_expiry,
        );
        let now = SystemTime::now();
        let change = {
            let mut entry = lock(slot);
            entry.checks += 1;
            if !probe.ok {
                entry.failures += 1;
            }
            if probe.not_after.is_some() {
                entry.not_after = probe.not_after;
            }
            if let (Some(warn), Some(not_after)) = (warn_expiry, probe.not_after) {
                let left = not_after.duration_since(now).unwrap_or_default();
                let due = entry
                    .expiry_logged
                    .is_none_or(|t| now.duration_since(t).unwrap_or_default() >= EXPIRY_LOG_EVERY);
                if left < warn && due {
                    entry.expiry_logged = Some(now);
                    warn!(target: "tandem::health", pool, backend = %backend,
                        days_left = left.as_secs() / 86_400,
                        "{pool} {backend}: certificate expires in {} (not after {})",
                        crate::probe::fmt_days(left), humantime::format_rfc3339_seconds(not_after));
                }
            }
            let was_decided = entry.machine.is_decided();
            let change = entry.machine.observe(&probe);
            if !was_decided && entry.machine.is_decided() {
                generation.fetch_add(1, Relaxed);
                state.set_decided();
                self.decisions.send_modify(|n| *n += 1);
            }
            entry.last = Some(LastCheck {
                ok: probe.ok,
                latency: probe.latency,
                error: probe.error.clone(),
                at: now,
            });
            if let Some(c) = &change {
                entry.up = c.up;
                entry.since = now;
                generation.fetch_add(1, Relaxed);
            }
            change
        };
        let Some(change) = change else { return };
        state.set_healthy(change.up);
        if change.up {
            info!(target: "tandem::health", pool, backend = %backend, latency_ms = probe.latency.as_millis() as u64,
                "{pool} {backend} up: after {} passed checks", change.after);
        } else {
            warn!(target: "tandem::health", pool, backend = %backend,
                "{pool} {backend} down: {} after {} checks", change.reason, change.after);
        }
        let _ = self.changes.send(Transition {
            pool: pool.to_string(),
            backend,
            up: change.up,
            after: change.after,
            reason: change.reason,
            at: now,
        });
    }
}

/// Runs the checks of every checked backend (one scheduler task) and keeps the board.
#[derive(Debug, Default)]
pub struct Monitor {
    board: Arc<HealthBoard>,
    tasks: HashMap<Key, Watch>,
    /// Removed backends whose last check was still running at the reload: their
    /// place in the schedule, kept so that a backend added again waits for it.
    leaving: HashMap<Key, usize>,
    scheduler: Option<Scheduler>,
}

/// What a scheduled job is: a backend's health check or its agent's asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Check,
    Agent,
}

/// A scheduled job's key: its kind, pool and backend.
type Key = (Kind, String, SocketAddr);

/// A backend's check or agent, as the monitor knows it: its entry in the schedule.
#[derive(Debug)]
struct Watch {
    what: What,
    /// Its place in the schedule.
    index: usize,
}

/// What a [`Watch`] runs.
#[derive(Debug)]
enum What {
    Check(tandem_config::Check),
    /// The agent and the state it sets.
    Agent(tandem_config::AgentCheck, Arc<BackendState>),
}

impl PartialEq for What {
    fn eq(&self, other: &What) -> bool {
        match (self, other) {
            (What::Check(a), What::Check(b)) => a == b,
            (What::Agent(a, s), What::Agent(b, t)) => a == b && Arc::ptr_eq(s, t),
            _ => false,
        }
    }
}

/// One backend's checks or agent asks, as the scheduler runs them.
struct Entry {
    pool: String,
    backend: SocketAddr,
    state: Arc<BackendState>,
    interval: Duration,
    job: Job,
    /// When the next check is due (while one runs: when it was due).
    next: Instant,
    /// Whether a check of it runs now (it is then in no lane).
    running: bool,
    /// What the result of the check that runs now is for.
    fate: Fate,
}

/// What an entry runs.
enum Job {
    /// Health checks.
    Check(HealthJob),
    /// Asks of the backend's agent.
    Agent(Arc<tandem_config::AgentCheck>),
}

/// A backend's health checks.
struct HealthJob {
    slot: Slot,
    checker: Arc<dyn Checker>,
    warn_expiry: Option<Duration>,
    /// The pool's change count.
    generation: Arc<AtomicU64>,
}

/// The result of a check or an ask.
enum Outcome {
    Probe(Probe),
    Answer(Result<String, String>),
}

/// What becomes of the result of a running check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// It is recorded, and the next check queued.
    Record,
    /// It is of a check a reload replaced: dropped, and the new check's first check
    /// queued (when it was due, or at once when that passed).
    Replaced,
    /// It is of a backend a reload removed: dropped (the monitor frees the place).
    Removed,
}

/// Every checked backend's entry, and when each is due next. A backend whose check
/// runs is in no lane until its result is in, so checks of one backend never
/// overlap, also across reloads: a reload that replaces a running check's entry puts
/// the new one in the same place, where it waits for the running check's end. An
/// entry is found by its index (no lookup per check); a lane's reference to an entry
/// replaced or removed since is told by its ticket and skipped.
#[derive(Default)]
struct Queue {
    places: Vec<Place>,
    /// Indexes of free places.
    free: Vec<usize>,
    lanes: Vec<Lane>,
}

/// One place of the schedule: an entry, or none.
#[derive(Default)]
struct Place {
    /// Changes each time the entry is queued (or the place changes hands): what a
    /// lane's reference must match.
    ticket: u32,
    entry: Option<Entry>,
}

/// A lane's reference to a due check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Instant,
    index: u32,
    ticket: u32,
}

/// The checks of one interval, in the order they are due. A check is queued again
/// one interval after it was due, which is after every other check of the lane (they
/// are all due within one interval): the lane is a ring, taken at its front and added
/// to at its back, with no reordering (a binary heap of 10,000 checks cost a dozen
/// cache misses per check taken).
struct Lane {
    interval: Duration,
    due: std::collections::VecDeque<Due>,
}

/// The schedule, shared by the monitor (which changes it) and the scheduler task.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Told when the monitor changed the schedule.
    changed: tokio::sync::Notify,
}

/// The task that starts every check when it is due: one timer for all the checks
/// (HAProxy's single scheduler likewise), instead of a task, a sleep and a timeout per
/// backend; a check that needs no waiting (see [`Checker::begin`]) is done in place.
struct Scheduler {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Running = futures_util::stream::FuturesUnordered<Tagged>;

fn lock_queue(shared: &Shared) -> MutexGuard<'_, Queue> {
    shared.queue.lock().unwrap_or_else(|e| e.into_inner())
}

impl Queue {
    /// The lane of checks every `interval`.
    fn lane(&mut self, interval: Duration) -> &mut Lane {
        let i = match self.lanes.iter().position(|l| l.interval == interval) {
            Some(i) => i,
            None => {
                self.lanes.push(Lane {
                    interval,
                    due: Default::default(),
                });
                self.lanes.len() - 1
            }
        };
        &mut self.lanes[i]
    }

    /// Queues the entry at `index` (not running) for its `next` check: at the back of
    /// its lane, unless a slower check ended after those queued since (then in its
    /// place). Earlier references to it go stale.
    fn queue(&mut self, index: usize) {
        let Some((interval, due)) = self.next_due(index) else {
            return;
        };
        let lane = &mut self.lane(interval).due;
        if lane.back().is_none_or(|last| last.at <= due.at) {
            lane.push_back(due);
        } else {
            let i = lane.partition_point(|d| d.at <= due.at);
            lane.insert(i, due);
        }
    }

    /// A new reference to the next check of the entry at `index` and its lane's
    /// interval (earlier references go stale); none for an empty place.
    fn next_due(&mut self, index: usize) -> Option<(Duration, Due)> {
        let place = &mut self.places[index];
        let entry = place.entry.as_ref()?;
        place.ticket = place.ticket.wrapping_add(1);
        let due = Due {
            at: entry.next,
            index: index as u32,
            ticket: place.ticket,
        };
        Some((entry.interval, due))
    }

    /// Whether a lane's reference still stands for its entry's next check.
    fn stands(&self, due: &Due) -> bool {
        self.places
            .get(due.index as usize)
            .is_some_and(|p| p.ticket == due.ticket && p.entry.is_some())
    }

    /// Whether the entry at `index` has a check running.
    fn running(&self, index: usize) -> bool {
        self.places[index].entry.as_ref().is_some_and(|e| e.running)
    }

    /// Removes the entry at `index`; true when its check runs (the place is then kept
    /// until [`Queue::release`], its result dropped).
    fn remove(&mut self, index: usize) -> bool {
        match self.places[index].entry.as_mut() {
            Some(entry) if entry.running => {
                entry.fate = Fate::Removed;
                true
            }
            _ => {
                self.release(index);
                false
            }
        }
    }

    /// Frees the place at `index`.
    fn release(&mut self, index: usize) {
        let place = &mut self.places[index];
        place.entry = None;
        place.ticket = place.ticket.wrapping_add(1);
        self.free.push(index);
    }

    /// Puts `entry` in the schedule, in place of the entry at `at` when given (a
    /// check replaced), and returns its index. Not queued yet: see [`Queue::add`].
    fn put(&mut self, at: Option<usize>, mut entry: Entry) -> usize {
        let index = match at {
            Some(index) => index,
            None => self.free.pop().unwrap_or_else(|| {
                self.places.push(Place::default());
                self.places.len() - 1
            }),
        };
        if self.running(index) {
            // The replaced check runs: the new one waits for its end.
            entry.running = true;
            entry.fate = Fate::Replaced;
        }
        self.places[index].entry = Some(entry);
        index
    }

    /// Queues the entries put at `indexes` (a start or a reload): each touched lane is
    /// sorted once, without stale references.
    fn add(&mut self, indexes: &[usize]) {
        let mut touched = Vec::new();
        for &index in indexes {
            if self.running(index) {
                continue;
            }
            let Some((interval, due)) = self.next_due(index) else {
                continue;
            };
            if !touched.contains(&interval) {
                touched.push(interval);
            }
            self.lane(interval).due.push_back(due);
        }
        for i in 0..self.lanes.len() {
            if !touched.contains(&self.lanes[i].interval) {
                continue;
            }
            let lane = std::mem::take(&mut self.lanes[i].due);
            let mut due: Vec<Due> = lane.into_iter().filter(|d| self.stands(d)).collect();
            due.sort_unstable();
            self.lanes[i].due = due.into();
        }
    }

    /// Takes the first check due at `now` or before, or tells when the next is due.
    fn take_due(&mut self, now: Instant) -> Result<Due, Option<Instant>> {
        let first = self
            .lanes
            .iter_mut()
            .filter_map(|l| l.due.front().map(|d| d.at).map(|at| (at, l)))
            .min_by_key(|(at, _)| *at);
        match first {
            Some((at, lane)) if at <= now => lane.due.pop_front().ok_or(None),
            Some((at, _)) => Err(Some(at)),
            None => Err(None),
        }
    }

    /// Starts every check due at `now`; the next due time after them.
    fn start_due(
        &mut self,
        board: &HealthBoard,
        now: Instant,
        running: &Running,
    ) -> Option<Instant> {
        loop {
            let due = match self.take_due(now) {
                Ok(due) => due,
                Err(next) => return next,
            };
            if !self.stands(&due) {
                continue;
            }
            let index = due.index as usize;
            let Some(entry) = self.places[index].entry.as_mut() else {
                continue;
            };
            entry.running = true;
            let work = match &entry.job {
                Job::Check(job) => match job.checker.clone().begin(entry.backend) {
                    Started::Done(probe) => {
                        self.finish(board, index, Outcome::Probe(probe));
                        continue;
                    }
                    Started::Waiting(check) => Work::Check(check),
                },
                Job::Agent(agent) => {
                    let (agent, backend) = (agent.clone(), entry.backend);
                    Work::Agent(Box::pin(
                        async move { crate::agent::ask(&agent, backend).await },
                    ))
                }
            };
            running.push(Tagged { index, work });
        }
    }

    /// Takes in a result of the entry at `index` and queues its next check: one
    /// interval after the last was due, or, when a check overran its slot, one
    /// interval from now (the phase kept, what was missed skipped). The result of a
    /// check that a reload replaced or removed is dropped.
    fn finish(&mut self, board: &HealthBoard, index: usize, outcome: Outcome) {
        let Some(entry) = self.places[index].entry.as_mut() else {
            return;
        };
        entry.running = false;
        let now = Instant::now();
        match entry.fate {
            Fate::Removed => return,
            Fate::Replaced => {
                entry.fate = Fate::Record;
                entry.next = entry.next.max(now);
            }
            Fate::Record => {
                match (&entry.job, outcome) {
                    (Job::Check(job), Outcome::Probe(probe)) => board.record(entry, job, probe),
                    (Job::Agent(_), Outcome::Answer(asked)) => {
                        board.record_agent(&entry.pool, entry.backend, &entry.state, asked)
                    }
                    // An index keeps its kind while a result is awaited.
                    _ => {}
                }
                entry.next += entry.interval;
                if entry.next < now {
                    tracing::debug!(pool = entry.pool, backend = %entry.backend, "check late by {}", fmt_duration(now - entry.next));
                    entry.next = now + entry.interval;
                }
            }
        }
        self.queue(index);
    }
}

/// A running check or ask and the index of its entry.
struct Tagged {
    index: usize,
    work: Work,
}

/// A running check or ask.
enum Work {
    Check(Pin<Box<dyn Future<Output = Probe> + Send>>),
    Agent(Pin<Box<dyn Future<Output = Result<String, String>> + Send>>),
}

impl Future for Tagged {
    type Output = (usize, Outcome);

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<(usize, Outcome)> {
        let index = self.index;
        match &mut self.work {
            Work::Check(check) => check.as_mut().poll(cx).map(Outcome::Probe),
            Work::Agent(ask) => ask.as_mut().poll(cx).map(Outcome::Answer),
        }
        .map(|outcome| (index, outcome))
    }
}

/// The scheduler task: starts what is due, takes results in, sleeps until the next
/// due check (or a change of the schedule).
async fn schedule(shared: Arc<Shared>, board: Arc<HealthBoard>) {
    use futures_util::StreamExt;
    let mut running = Running::new();
    let idle = Duration::from_secs(3600);
    let sleep = tokio::time::sleep(idle);
    tokio::pin!(sleep);
    let mut armed = None;
    loop {
        let next = lock_queue(&shared).start_due(&board, Instant::now(), &running);
        let wake = next.unwrap_or_else(|| Instant::now() + idle);
        if armed != Some(wake) {
            sleep.as_mut().reset(wake);
            armed = Some(wake);
        }
        tokio::select! {
            biased;
            Some((index, outcome)) = running.next(), if !running.is_empty() => {
                lock_queue(&shared).finish(&board, index, outcome);
            }
            () = &mut sleep => {}
            () = shared.changed.notified() => {}
        }
    }
}

impl Monitor {
    /// A monitor with no checks yet.
    pub fn new() -> Monitor {
        Monitor::default()
    }

    /// The board other parts read.
    pub fn board(&self) -> Arc<HealthBoard> {
        self.board.clone()
    }

    /// Makes the running checks match `pools` (a new generation): starts checks of new
    /// backends, stops those of removed ones, restarts those whose check changed.
    /// Backends that stay keep their state and counts. Unchecked backends count as up.
    pub fn apply(
        &mut self,
        pools: &PoolSet,
        configs: &[tandem_config::Pool],
    ) -> Result<(), String> {
        self.apply_with(pools, configs, |check| {
            Prober::new(check).map(|p| Arc::new(p) as Arc<dyn Checker>)
        })
    }

    /// [`Monitor::apply`] with the checker made by `make` (tests use a scripted one).
    /// Agents are scheduled as the checks are (spread, interleaved, kept across
    /// reloads); a backend whose pool no longer has an agent goes back to ready and
    /// full weight.
    pub fn apply_with(
        &mut self,
        pools: &PoolSet,
        configs: &[tandem_config::Pool],
        make: impl Fn(&tandem_config::Check) -> Result<Arc<dyn Checker>, String>,
    ) -> Result<(), String> {
        let mut wanted: std::collections::HashSet<Key> = Default::default();
        // What changes: new entries (with what they run, in place of the entry at the
        // index when one is replaced), the watches of removed ones.
        let mut added: Vec<(Key, What, Option<usize>, Entry)> = Vec::new();
        let mut unchecked = Vec::new();
        let now = Instant::now();
        // Checked pools interleave: the k-th of them starts k/checked of one backend's
        // slot later, so that the first backends of a thousand pools are not checked
        // at the same moment (HAProxy spreads all its servers' checks likewise). Pools
        // with an agent likewise among themselves.
        let checked = configs.iter().filter(|c| c.check.is_some()).count().max(1) as u32;
        let asked = configs.iter().filter(|c| c.agent.is_some()).count().max(1) as u32;
        let (mut k, mut ka) = (0u32, 0u32);
        for config in configs {
            let Some(pool) = pools.get(&config.name) else {
                continue;
            };
            let n = pool.backends.len();
            // Spread the pool's jobs over the interval, plus a little jitter.
            let first = |interval: Duration, i: usize, k: u32, of: u32| {
                let offset = interval / n.max(1) as u32 * k / of;
                let jitter = Duration::from_millis(fastrand::u64(
                    ..=(interval.as_millis() as u64 / 20).max(1),
                ));
                now + crate::agent::phase(interval, i, n) + offset + jitter
            };
            if let Some(agent) = &config.agent {
                let shared = Arc::new(agent.clone());
                for (i, b) in pool.backends.iter().enumerate() {
                    let key = (Kind::Agent, config.name.clone(), b.address);
                    wanted.insert(key.clone());
                    let what = What::Agent(agent.clone(), b.state.clone());
                    let watch = self.tasks.get(&key);
                    if watch.is_some_and(|w| w.what == what) {
                        continue;
                    }
                    let replaces = watch.map(|w| w.index);
                    added.push((
                        key,
                        what,
                        replaces,
                        Entry {
                            pool: config.name.clone(),
                            backend: b.address,
                            state: b.state.clone(),
                            interval: agent.interval,
                            job: Job::Agent(shared.clone()),
                            next: first(agent.interval, i, ka, asked),
                            running: false,
                            fate: Fate::Record,
                        },
                    ));
                }
                ka += 1;
            }
            let Some(check) = &config.check else {
                unchecked.extend(pool.backends.iter().map(|b| b.state.clone()));
                continue;
            };
            let checker = make(check).map_err(|e| format!("pool {}: {e}", config.name))?;
            let generation = self.board.generation_of(&config.name);
            for (i, b) in pool.backends.iter().enumerate() {
                let key = (Kind::Check, config.name.clone(), b.address);
                wanted.insert(key.clone());
                let watch = self.tasks.get(&key);
                if watch.is_some_and(|w| matches!(&w.what, What::Check(c) if c == check)) {
                    continue;
                }
                let slot = {
                    let mut map = self.board.write();
                    let backends = map.entry(config.name.clone()).or_default();
                    let slot = backends.entry(b.address).or_insert_with(|| {
                        Arc::new(Mutex::new(BackendHealth {
                            up: b.state.is_healthy(),
                            last: None,
                            since: SystemTime::now(),
                            checks: 0,
                            failures: 0,
                            not_after: None,
                            expiry_logged: None,
                            machine: if b.state.is_decided() {
                                RiseFall::decided(check.rise, check.fall, b.state.is_healthy())
                            } else {
                                RiseFall::new(check.rise, check.fall, b.state.is_healthy())
                            },
                        }))
                    });
                    lock(slot).machine.reconfigure(check.rise, check.fall);
                    slot.clone()
                };
                let replaces = watch.map(|w| w.index);
                added.push((
                    key,
                    What::Check(check.clone()),
                    replaces,
                    Entry {
                        pool: config.name.clone(),
                        backend: b.address,
                        state: b.state.clone(),
                        interval: check.interval,
                        job: Job::Check(HealthJob {
                            slot,
                            checker: checker.clone(),
                            warn_expiry: check.warn_expiry,
                            generation: generation.clone(),
                        }),
                        next: first(check.interval, i, k, checked),
                        running: false,
                        fate: Fate::Record,
                    },
                ));
            }
            k += 1;
        }
        let mut removed = Vec::new();
        let mut unasked = Vec::new();
        self.tasks.retain(|key, w| {
            let keep = wanted.contains(key);
            if !keep {
                if let What::Agent(_, state) = &w.what {
                    unasked.push(state.clone());
                }
                removed.push((key.clone(), w.index));
            }
            keep
        });
        self.board.write().retain(|pool, backends| {
            backends.retain(|a, _| wanted.contains(&(Kind::Check, pool.clone(), *a)));
            !backends.is_empty()
        });
        // Backends whose pool lost its check or agent go back to up, ready and full
        // weight: after their jobs in flight are marked removed (under the queue's lock,
        // which a job's result also takes), so that no late result undoes it.
        let board = &self.board;
        let reset = || {
            for state in &unchecked {
                state.set_healthy(true);
                state.set_decided();
            }
            let mut weights_changed = false;
            for state in &unasked {
                weights_changed |= state.set_agent(Agent::READY);
            }
            board
                .agents
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|(pool, a), _| wanted.contains(&(Kind::Agent, pool.clone(), *a)));
            if weights_changed {
                board.weights.send_modify(|n| *n += 1);
            }
        };
        if added.is_empty() && removed.is_empty() && self.leaving.is_empty() {
            reset();
        } else {
            let board = self.board.clone();
            let shared = &self
                .scheduler
                .get_or_insert_with(|| {
                    let shared = Arc::new(Shared::default());
                    let task = tokio::spawn(schedule(shared.clone(), board));
                    Scheduler { shared, task }
                })
                .shared;
            let mut queue = lock_queue(shared);
            // Removed backends whose last check has ended since free their place.
            self.leaving.retain(|_, &mut index| {
                let running = queue.running(index);
                if !running {
                    queue.release(index);
                }
                running
            });
            for (key, index) in removed {
                if queue.remove(index) {
                    self.leaving.insert(key, index);
                }
            }
            reset();
            let mut indexes = Vec::with_capacity(added.len());
            for (key, what, replaces, entry) in added {
                // A backend removed while its check ran, now back: in its old place.
                let at = replaces.or_else(|| self.leaving.remove(&key));
                let index = queue.put(at, entry);
                indexes.push(index);
                self.tasks.insert(key, Watch { what, index });
            }
            queue.add(&indexes);
            drop(queue);
            shared.changed.notify_one();
        }
        let names: std::collections::HashSet<&str> =
            configs.iter().map(|c| c.name.as_str()).collect();
        self.board
            .generations
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|pool, _| names.contains(pool.as_str()));
        Ok(())
    }

    /// Stops every check.
    pub fn stop(&mut self) {
        self.tasks.clear();
        self.leaving.clear();
        self.scheduler = None;
    }
}
