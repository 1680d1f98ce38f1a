//! The monitor under simulated time: when checks run, when states flip, what is
//! published. A scripted checker answers instead of real servers.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_balance::PoolSet;
use tandem_config::{BackendConfig, Balance, Check, CheckKind, InitialHealth, Pool};
use tandem_health::{Checker, Monitor, Probe, Started};
use tokio::time::Instant;

#[derive(Default)]
struct Script {
    up: Mutex<HashMap<SocketAddr, bool>>,
    calls: Mutex<Vec<(Duration, SocketAddr)>>,
    start: Mutex<Option<Instant>>,
}

impl Script {
    fn set(&self, backend: SocketAddr, up: bool) {
        self.up.lock().unwrap().insert(backend, up);
    }
    fn calls_of(&self, backend: SocketAddr) -> Vec<Duration> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, b)| *b == backend)
            .map(|(t, _)| *t)
            .collect()
    }
}

struct ScriptChecker(Arc<Script>);

impl Checker for ScriptChecker {
    fn probe(&self, target: SocketAddr) -> Pin<Box<dyn Future<Output = Probe> + Send + '_>> {
        Box::pin(async move {
            let start = self.0.start.lock().unwrap().expect("start set");
            self.0.calls.lock().unwrap().push((start.elapsed(), target));
            tokio::time::sleep(Duration::from_millis(5)).await;
            if self
                .0
                .up
                .lock()
                .unwrap()
                .get(&target)
                .copied()
                .unwrap_or(true)
            {
                Probe::pass(Duration::from_millis(5))
            } else {
                Probe::fail(Duration::from_millis(5), "http status 503")
            }
        })
    }
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 80))
}

fn pool(backends: &[u8], initial: InitialHealth) -> Pool {
    Pool {
        name: "web".into(),
        balance: Balance::RoundRobin,
        backends: backends
            .iter()
            .map(|&n| BackendConfig {
                address: addr(n),
                weight: 1,
                max_conns: 0,
                backup: false,
            })
            .collect(),
        sticky: None,
        fallback: None,
        agent: None,
        check: Some(Check {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            initial,
            ..Check::new(CheckKind::Http)
        }),
    }
}

fn start(script: &Arc<Script>, configs: &[Pool]) -> (Monitor, PoolSet) {
    *script.start.lock().unwrap() = Some(Instant::now());
    let mut monitor = Monitor::new();
    let pools = reload(&mut monitor, script, configs, None);
    (monitor, pools)
}

/// Applies `configs` (a new generation after `previous`) with the scripted checker.
fn reload(
    monitor: &mut Monitor,
    script: &Arc<Script>,
    configs: &[Pool],
    previous: Option<&PoolSet>,
) -> PoolSet {
    let pools = PoolSet::build(configs, previous);
    let s = script.clone();
    monitor
        .apply_with(&pools, configs, |_| {
            Ok(Arc::new(ScriptChecker(s.clone())) as Arc<dyn Checker>)
        })
        .unwrap();
    pools
}

/// The `i`-th of four backends' times (checks or asks, of `what`): first at phase i/4
/// of the one-second interval plus at most 50 ms of jitter, then every second.
fn assert_phase_then_every_second(times: &[Duration], i: usize, what: &str) {
    let phase = Duration::from_millis(250 * i as u64);
    assert!(
        times[0] >= phase && times[0] <= phase + Duration::from_millis(50),
        "{what} first at {:?}",
        times[0]
    );
    for pair in times.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            Duration::from_secs(1),
            "{what}: {times:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn checks_of_a_pool_are_spread_over_the_interval() {
    let script = Arc::new(Script::default());
    let configs = [pool(&[1, 2, 3, 4], InitialHealth::Down)];
    let (_monitor, _pools) = start(&script, &configs);
    tokio::time::sleep(Duration::from_millis(3_990)).await;
    for (i, n) in [1, 2, 3, 4].into_iter().enumerate() {
        let calls = script.calls_of(addr(n));
        assert_eq!(calls.len(), 4, "backend {n}: {calls:?}");
        assert_phase_then_every_second(&calls, i, &format!("backend {n}"));
    }
}

#[tokio::test(start_paused = true)]
async fn checked_pools_interleave_within_each_backend_s_slot() {
    let script = Arc::new(Script::default());
    let mut other = pool(&[5, 6], InitialHealth::Down);
    other.name = "api".into();
    let configs = [pool(&[1, 2], InitialHealth::Down), other];
    let (_monitor, _pools) = start(&script, &configs);
    tokio::time::sleep(Duration::from_millis(1_990)).await;
    // Two pools of two backends, interval 1 s: slots of 500 ms, the second pool half a
    // slot later; at most 50 ms of jitter each.
    for (n, phase) in [(1, 0), (2, 500), (5, 250), (6, 750)] {
        let calls = script.calls_of(addr(n));
        assert_eq!(calls.len(), 2, "backend {n}: {calls:?}");
        let phase = Duration::from_millis(phase);
        assert!(
            calls[0] >= phase && calls[0] <= phase + Duration::from_millis(50),
            "backend {n} first at {:?}",
            calls[0]
        );
        assert_eq!(calls[1] - calls[0], Duration::from_secs(1), "backend {n}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_down_backend_carries_traffic_only_after_rise_checks() {
    let script = Arc::new(Script::default());
    let configs = [pool(&[1], InitialHealth::Down)];
    let (monitor, pools) = start(&script, &configs);
    let state = pools.get("web").unwrap().backends[0].state.clone();
    let mut changes = monitor.board().subscribe();
    assert!(!state.is_healthy(), "initial = down");
    assert!(pools.pick("web", addr(9).ip(), &[], 0).is_none());
    // First check at ~0 ms passes (1 of 2); second at ~1 s makes it up.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!state.is_healthy());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(state.is_healthy());
    let t = changes.try_recv().expect("one transition published");
    assert!(t.up && t.after == 2 && t.pool == "web" && t.backend == addr(1));
    assert!(changes.try_recv().is_err(), "published once");
    assert!(pools.pick("web", addr(9).ip(), &[], 0).is_some());
}

#[tokio::test(start_paused = true)]
async fn an_up_backend_goes_down_after_fall_failures_and_back_after_rise_passes() {
    let script = Arc::new(Script::default());
    let configs = [pool(&[1, 2], InitialHealth::Up)];
    let (monitor, pools) = start(&script, &configs);
    let board = monitor.board();
    let mut changes = board.subscribe();
    let web = pools.get("web").unwrap().clone();
    let state = web.backends[0].state.clone();
    // An established connection (a lease) to the backend that will go down.
    let lease = web.backends[0].lease().unwrap();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    script.set(addr(1), false);
    let failing_since = script.calls_of(addr(1)).len();
    // fall = 3: down at the third failing check, not before.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert!(state.is_healthy(), "two failures do not make it down");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(!state.is_healthy(), "three failures do");
    assert_eq!(script.calls_of(addr(1)).len() - failing_since, 3);
    let t = changes.recv().await.unwrap();
    assert_eq!(
        (t.up, t.after, t.reason.as_str()),
        (false, 3, "http status 503")
    );
    let h = board.get("web", addr(1)).unwrap();
    assert!(!h.up);
    assert_eq!(h.last.as_ref().unwrap().error, "http status 503");
    // New connections avoid it; the established one is untouched.
    for n in 0..10 {
        assert_eq!(
            pools
                .pick("web", SocketAddr::from(([192, 0, 2, n], 1)).ip(), &[], 0)
                .unwrap()
                .lease
                .address,
            addr(2)
        );
    }
    assert_eq!(state.active(), 1);
    drop(lease);
    // Recovery: rise = 2 passing checks.
    script.set(addr(1), true);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert!(state.is_healthy());
    let t = changes.recv().await.unwrap();
    assert_eq!((t.up, t.after), (true, 2));
}

#[tokio::test(start_paused = true)]
async fn a_new_generation_keeps_state_of_backends_that_stay() {
    let script = Arc::new(Script::default());
    let configs = [pool(&[1, 2], InitialHealth::Down)];
    let (mut monitor, pools) = start(&script, &configs);
    script.set(addr(2), false);
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    assert!(monitor.board().get("web", addr(1)).unwrap().up);
    // Reload: backend 2 leaves, backend 3 joins.
    let next = [pool(&[1, 3], InitialHealth::Down)];
    let pools2 = reload(&mut monitor, &script, &next, Some(&pools));
    let board = monitor.board();
    assert!(
        board.get("web", addr(1)).unwrap().up,
        "state kept across the reload"
    );
    assert!(
        pools2
            .get("web")
            .unwrap()
            .backend(&addr(1))
            .unwrap()
            .state
            .is_healthy()
    );
    assert!(
        board.get("web", addr(2)).is_none(),
        "removed backend left the board"
    );
    assert!(
        !board.get("web", addr(3)).unwrap().up,
        "new backend starts down"
    );
    let checks_of_2 = script.calls_of(addr(2)).len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        script.calls_of(addr(2)).len(),
        checks_of_2,
        "removed backend is no longer checked"
    );
    assert!(board.get("web", addr(3)).unwrap().up);
}

#[tokio::test(start_paused = true)]
async fn hundreds_of_backends_are_each_checked_every_interval() {
    let script = Arc::new(Script::default());
    let mut config = pool(&[], InitialHealth::Down);
    config.backends = (0..300u16)
        .map(|n| BackendConfig {
            address: SocketAddr::from(([10, 1, (n / 200) as u8, (n % 200) as u8 + 1], 80)),
            weight: 1,
            max_conns: 0,
            backup: false,
        })
        .collect();
    let (monitor, pools) = start(&script, std::slice::from_ref(&config));
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let calls = script.calls.lock().unwrap().len();
    assert!(
        (900..=1200).contains(&calls),
        "{calls} checks of 300 backends in 3.1 s"
    );
    let web = pools.get("web").unwrap();
    assert!(web.backends.iter().all(|b| b.state.is_healthy()));
    assert_eq!(monitor.board().all().len(), 300);
    // Spread: no 100 ms window holds more than a sixth of a round's checks.
    let mut per_window = HashMap::<u128, usize>::new();
    for (t, _) in script.calls.lock().unwrap().iter() {
        *per_window.entry(t.as_millis() / 100).or_default() += 1;
    }
    assert!(per_window.values().all(|&n| n <= 50), "{per_window:?}");
}

#[tokio::test(start_paused = true)]
async fn a_pool_counts_as_decided_once_every_backend_reached_its_first_rise_or_fall() {
    let script = Arc::new(Script::default());
    // Rise 2, fall 3, every second: backend 1 passes, backend 2 fails.
    script.set(addr(2), false);
    let mut unchecked = pool(&[7], InitialHealth::Down);
    unchecked.name = "plain".into();
    unchecked.check = None;
    let configs = [pool(&[1, 2], InitialHealth::Down), unchecked];
    let (monitor, pools) = start(&script, &configs);
    let board = monitor.board();
    let mut decisions = board.decisions();
    assert!(
        board.decided("plain"),
        "a pool without checks has nothing to wait for"
    );
    assert!(!board.decided("web"));
    // Backend 1 rises at its second check (~1 s); backend 2 (phase 0.5 s) fails its
    // third at ~2.5 s: still down as it started, but now known to be.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(board.get("web", addr(1)).unwrap().is_decided());
    assert!(pools.get("web").unwrap().backends[0].state.is_decided());
    assert!(!board.decided("web"));
    assert!(decisions.has_changed().unwrap());
    decisions.borrow_and_update();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(board.decided("web"));
    assert!(decisions.has_changed().unwrap());
    let b2 = &pools.get("web").unwrap().backends[1].state;
    assert!(b2.is_decided() && !b2.is_healthy());
}

/// A pool called `name` of `count` backends 10.2.P.N:80 (P = `net`).
fn big_pool(name: &str, net: u8, count: u8) -> Pool {
    let mut config = pool(&[], InitialHealth::Down);
    config.name = name.into();
    config.backends = (1..=count)
        .map(|n| BackendConfig {
            address: SocketAddr::from(([10, 2, net, n], 80)),
            weight: 1,
            max_conns: 0,
            backup: false,
        })
        .collect();
    config
}

#[tokio::test(start_paused = true)]
async fn every_backend_is_checked_once_in_each_interval() {
    let script = Arc::new(Script::default());
    let configs = [
        big_pool("a", 1, 40),
        big_pool("b", 2, 40),
        big_pool("c", 3, 40),
    ];
    let (_monitor, _pools) = start(&script, &configs);
    tokio::time::sleep(Duration::from_millis(6_200)).await;
    let calls = script.calls.lock().unwrap().clone();
    let mut per_backend = HashMap::<SocketAddr, Vec<Duration>>::new();
    for (t, b) in &calls {
        per_backend.entry(*b).or_default().push(*t);
    }
    assert_eq!(per_backend.len(), 120);
    for (b, times) in &per_backend {
        // First within the interval (plus jitter), then in every 1 s window once.
        assert!(times[0] <= Duration::from_millis(1_050), "{b}: {times:?}");
        for start in [1_100u64, 2_100, 3_100, 4_100, 5_100] {
            let window = Duration::from_millis(start)..Duration::from_millis(start + 1_000);
            let n = times.iter().filter(|&t| window.contains(t)).count();
            assert_eq!(n, 1, "{b} in {window:?}: {times:?}");
        }
    }
    // Spread over the interval: no 50 ms window holds more than a tenth of a round.
    let mut per_window = HashMap::<u128, usize>::new();
    for (t, _) in &calls {
        *per_window.entry(t.as_millis() / 50).or_default() += 1;
    }
    assert!(per_window.values().all(|&n| n <= 12), "{per_window:?}");
}

#[tokio::test(start_paused = true)]
async fn a_reload_keeps_the_phase_and_state_of_backends_that_stay() {
    let script = Arc::new(Script::default());
    let configs = [pool(&[1, 2], InitialHealth::Down)];
    let (mut monitor, pools) = start(&script, &configs);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let board = monitor.board();
    let checks_before = board.get("web", addr(1)).unwrap().checks;
    assert!(board.get("web", addr(1)).unwrap().up);
    let next = [pool(&[1, 2, 3], InitialHealth::Down)];
    let _pools2 = reload(&mut monitor, &script, &next, Some(&pools));
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    // Backend 1's checks went on one second apart: none added or lost by the reload.
    let calls = script.calls_of(addr(1));
    assert_eq!(calls.len(), 6, "{calls:?}");
    for pair in calls.windows(2) {
        assert_eq!(pair[1] - pair[0], Duration::from_secs(1), "{calls:?}");
    }
    let h = board.get("web", addr(1)).unwrap();
    assert!(h.up);
    assert_eq!(h.checks, checks_before + 3);
    assert_eq!(script.calls_of(addr(3)).len(), 3);
}

/// A checker whose checks take `delay`, noting when each began and ended.
struct Slow {
    delay: Duration,
    start: Instant,
    spans: Mutex<Vec<(Duration, Duration)>>,
    /// Checks only of this backend are noted, when set.
    only: Option<SocketAddr>,
}

impl Checker for Slow {
    fn probe(&self, target: SocketAddr) -> Pin<Box<dyn Future<Output = Probe> + Send + '_>> {
        Box::pin(async move {
            let began = self.start.elapsed();
            tokio::time::sleep(self.delay).await;
            if self.only.is_none_or(|only| only == target) {
                self.spans
                    .lock()
                    .unwrap()
                    .push((began, self.start.elapsed()));
            }
            Probe::pass(self.delay)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_check_slower_than_its_interval_never_overlaps_the_next() {
    let slow = Arc::new(Slow {
        delay: Duration::from_millis(1_500),
        start: Instant::now(),
        spans: Mutex::default(),
        only: None,
    });
    let configs = [pool(&[1], InitialHealth::Down)];
    let pools = PoolSet::build(&configs, None);
    let mut monitor = Monitor::new();
    let c = slow.clone();
    monitor
        .apply_with(&pools, &configs, |_| Ok(c.clone() as Arc<dyn Checker>))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(8_000)).await;
    let spans = slow.spans.lock().unwrap().clone();
    assert!(spans.len() >= 3, "{spans:?}");
    for pair in spans.windows(2) {
        // The next begins one interval after the late one ended, not before.
        assert_eq!(pair[1].0, pair[0].1 + Duration::from_secs(1), "{spans:?}");
    }
}

/// A checker whose every check is over when begun (as a tcp check on loopback).
struct AtOnce(std::sync::atomic::AtomicUsize);

impl Checker for AtOnce {
    fn probe(&self, _target: SocketAddr) -> Pin<Box<dyn Future<Output = Probe> + Send + '_>> {
        unreachable!("begun checks are over at once")
    }

    fn begin(self: Arc<Self>, _target: SocketAddr) -> Started {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Started::Done(Probe::pass(Duration::ZERO))
    }
}

#[tokio::test(start_paused = true)]
async fn checks_over_when_begun_are_recorded_in_place_and_count_changes() {
    let checker = Arc::new(AtOnce(Default::default()));
    let configs = [pool(&[1, 2, 3, 4], InitialHealth::Down)];
    let pools = PoolSet::build(&configs, None);
    let mut monitor = Monitor::new();
    let c = checker.clone();
    monitor
        .apply_with(&pools, &configs, |_| Ok(c.clone() as Arc<dyn Checker>))
        .unwrap();
    let board = monitor.board();
    assert_eq!(board.generation("web"), 0);
    tokio::time::sleep(Duration::from_millis(1_900)).await;
    // Each backend's second pass: rise 2 reached (a first decision and a change each).
    assert!(
        pools
            .get("web")
            .unwrap()
            .backends
            .iter()
            .all(|b| b.state.is_healthy())
    );
    let generation = board.generation("web");
    assert_eq!(generation, 8);
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert_eq!(checker.0.load(std::sync::atomic::Ordering::Relaxed), 4 * 5);
    assert_eq!(
        board.generation("web"),
        generation,
        "passing checks of up backends change nothing a status shows"
    );
    assert_eq!(board.get("web", addr(3)).unwrap().checks, 5);
}

/// Applies `configs` to `monitor` with `checker` for every check.
fn apply_slow(monitor: &mut Monitor, checker: &Arc<Slow>, configs: &[Pool]) -> PoolSet {
    let pools = PoolSet::build(configs, None);
    let c = checker.clone();
    monitor
        .apply_with(&pools, configs, |_| Ok(c.clone() as Arc<dyn Checker>))
        .unwrap();
    pools
}

/// Asserts that no check in `spans` began before the one before it ended.
fn assert_no_overlap(spans: &[(Duration, Duration)]) {
    let mut spans = spans.to_vec();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "checks overlap: {spans:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_replaces_a_running_check_waits_for_its_end() {
    let slow = Arc::new(Slow {
        delay: Duration::from_millis(900),
        start: Instant::now(),
        spans: Mutex::default(),
        only: None,
    });
    let configs = [pool(&[1], InitialHealth::Down)];
    let mut monitor = Monitor::new();
    let _pools = apply_slow(&mut monitor, &slow, &configs);
    // The first check runs from ~0 to ~0.9 s; the reload at 0.3 s changes the check
    // (its timeout), whose first check is due at once (phase 0, some jitter).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut changed = configs.clone();
    changed[0].check.as_mut().unwrap().timeout = Duration::from_millis(600);
    let _pools = apply_slow(&mut monitor, &slow, &changed);
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    let spans = slow.spans.lock().unwrap().clone();
    assert_no_overlap(&spans);
    // The new check began as the replaced one ended, then went on every interval.
    assert!(spans.len() >= 4, "{spans:?}");
    assert_eq!(spans[1].0, spans[0].1, "{spans:?}");
    let board = monitor.board();
    assert_eq!(
        board.get("web", addr(1)).unwrap().checks,
        spans.len() as u64 - 1,
        "the replaced check's result is dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn a_backend_removed_and_added_again_waits_for_its_running_check() {
    let slow = Arc::new(Slow {
        delay: Duration::from_millis(900),
        start: Instant::now(),
        spans: Mutex::default(),
        only: Some(addr(1)),
    });
    let with = [pool(&[1, 2], InitialHealth::Down)];
    let without = [pool(&[2], InitialHealth::Down)];
    let mut monitor = Monitor::new();
    let _pools = apply_slow(&mut monitor, &slow, &with);
    // Backend 1's first check runs from ~0 to ~0.9 s: removed at 0.2 s, back at 0.4 s.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _pools = apply_slow(&mut monitor, &slow, &without);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _pools = apply_slow(&mut monitor, &slow, &with);
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    let mut first = slow.spans.lock().unwrap().clone();
    first.sort();
    assert_no_overlap(&first);
    assert!(first.len() >= 4, "{first:?}");
    assert_eq!(first[1].0, first[0].1, "{first:?}");
    // Removed and added again: a new backend to the board, whose checks count anew.
    assert_eq!(
        monitor.board().get("web", addr(1)).unwrap().checks,
        first.len() as u64 - 1
    );
}

/// Agents on `port` of 127.0.0.`ips`, answering "up" after `delay`; each ask noted
/// (the backend's address octet, when it began and ended, in simulated time).
async fn agents(ips: &[u8], delay: Duration) -> (u16, Arc<Mutex<Vec<(u8, Duration, Duration)>>>) {
    use tokio::io::AsyncWriteExt;
    let asks = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let first = tokio::net::TcpListener::bind((format!("127.0.0.{}", ips[0]), 0))
        .await
        .unwrap();
    let port = first.local_addr().unwrap().port();
    let mut listeners = vec![(ips[0], first)];
    for &ip in &ips[1..] {
        let l = tokio::net::TcpListener::bind((format!("127.0.0.{ip}"), port))
            .await
            .unwrap();
        listeners.push((ip, l));
    }
    for (ip, l) in listeners {
        let asks = asks.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let asks = asks.clone();
                tokio::spawn(async move {
                    let began = start.elapsed();
                    tokio::time::sleep(delay).await;
                    let _ = s.write_all(b"up\n").await;
                    asks.lock().unwrap().push((ip, began, start.elapsed()));
                });
            }
        });
    }
    (port, asks)
}

/// A pool of backends 127.0.0.`ips`:80 without check, with an agent on `port`.
fn agent_pool(ips: &[u8], port: u16) -> Pool {
    let mut config = pool(&[], InitialHealth::Up);
    config.check = None;
    config.backends = ips
        .iter()
        .map(|&n| BackendConfig {
            address: SocketAddr::from(([127, 0, 0, n], 80)),
            weight: 1,
            max_conns: 0,
            backup: false,
        })
        .collect();
    config.agent = Some(tandem_config::AgentCheck {
        port,
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(900),
        send: None,
    });
    config
}

/// The times each of `ips` was asked at.
fn asks_of(asks: &Mutex<Vec<(u8, Duration, Duration)>>, ip: u8) -> Vec<(Duration, Duration)> {
    let mut of: Vec<_> = asks
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.0 == ip)
        .map(|a| (a.1, a.2))
        .collect();
    of.sort();
    of
}

#[tokio::test(start_paused = true)]
async fn agent_asks_are_spread_and_keep_their_phase_across_a_reload() {
    let ips = [41, 42, 43, 44];
    let (port, asks) = agents(&ips, Duration::ZERO).await;
    let script = Arc::new(Script::default());
    let configs = [agent_pool(&ips, port)];
    let (mut monitor, pools) = start(&script, &configs);
    tokio::time::sleep(Duration::from_millis(2_990)).await;
    // A reload that changes nothing of the agent keeps each backend's phase.
    let _pools = reload(&mut monitor, &script, &configs, Some(&pools));
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    for (i, ip) in ips.into_iter().enumerate() {
        let times: Vec<Duration> = asks_of(&asks, ip).into_iter().map(|a| a.0).collect();
        assert_eq!(times.len(), 6, "{ip}: {times:?}");
        assert_phase_then_every_second(&times, i, &ip.to_string());
        let seen = monitor
            .board()
            .agent("web", SocketAddr::from(([127, 0, 0, ip], 80)))
            .unwrap();
        assert_eq!((seen.said.as_str(), seen.failed), ("up", false));
    }
    assert!(script.calls.lock().unwrap().is_empty(), "no health checks");
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_changes_an_agent_waits_for_its_running_ask() {
    let (port, asks) = agents(&[45], Duration::from_millis(700)).await;
    let script = Arc::new(Script::default());
    let configs = [agent_pool(&[45], port)];
    let (mut monitor, pools) = start(&script, &configs);
    // The first ask runs from ~0 to ~0.7 s; the reload at 0.3 s changes what is sent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut changed = configs.clone();
    changed[0].agent.as_mut().unwrap().send = Some("status\n".into());
    let _pools = reload(&mut monitor, &script, &changed, Some(&pools));
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let spans = asks_of(&asks, 45);
    assert!(spans.len() >= 3, "{spans:?}");
    for pair in spans.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "asks overlap: {spans:?}");
    }
}
