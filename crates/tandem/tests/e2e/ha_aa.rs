//! Active/active in a network-namespace lab: examples/active-active.toml as shipped
//! (only addresses and paths filled in, and lb2's lines marked "per node") on two
//! tandem nodes, each master of one of two virtual addresses; clients of both
//! addresses, each from several source addresses, pinned to their backends. Then the
//! split brain: the VRRP path between the nodes cut until both are master, healed.

use crate::support;
use crate::support::lab;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lab::Lab;
use support::Running;

/// Address A (vrid 51, preferred by lb1) and B (vrid 52, preferred by lb2).
const A: &str = "10.99.0.100";
const B: &str = "10.99.0.101";
/// Client sources per address: an odd number, so that the round-robin of the node
/// that pinned the other address stands elsewhere than where the first node's did (a
/// client whose pin were lost would move).
const SOURCES: u8 = 5;

fn example() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/active-active.toml");
    std::fs::read_to_string(path).unwrap()
}

/// Replaces the one occurrence of `from` in `text` (the example must hold it once).
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "examples/active-active.toml should hold {from:?} once"
    );
    text.replacen(from, to, 1)
}

/// The configuration of node `name`: the example with the lab's addresses and paths,
/// and for lb2 the lines marked "per node".
fn node_config(lab: &Lab, name: &str) -> String {
    let dir = lab.dir.path().display();
    let mut text = example();
    // The lab's addresses for the example's (every occurrence: each names one host).
    for (from, to) in [
        ("192.0.2.10", A),
        ("192.0.2.11", B),
        ("192.0.2.2:", "10.99.0.1:"),
        ("192.0.2.3:", "10.99.0.2:"),
        ("10.1.0.31", "10.99.0.11"),
        ("10.1.0.32", "10.99.0.12"),
    ] {
        assert!(text.contains(from), "the example names {from}");
        text = text.replace(from, to);
    }
    text = replace_once(
        &text,
        "control_socket = \"/run/tandem/tandem.sock\"",
        &format!("control_socket = \"{dir}/{name}.sock\""),
    );
    text = replace_once(
        &text,
        "key_file = \"/etc/tandem/sync.key\"",
        &format!("key_file = \"{dir}/sync.key\""),
    );
    if name == "lb2" {
        for (from, to) in [
            ("name = \"lb1\"", "name = \"lb2\""),
            (
                "priority = 150                        # per node: 100 on lb2",
                "priority = 100",
            ),
            (
                "priority = 100                        # per node: 150 on lb2",
                "priority = 150",
            ),
            ("listen = \"10.99.0.1:7946\"", "listen = \"10.99.0.2:7946\""),
            (
                "peers = [\"10.99.0.2:7946\"]",
                "peers = [\"10.99.0.1:7946\"]",
            ),
        ] {
            text = replace_once(&text, from, to);
        }
    }
    lab.write_config(name, &text)
}

/// Two balancers, two web backends, a client host per address (with `SOURCES`
/// addresses each: .50.. for A, .60.. for B).
fn lab(tag: &str) -> Option<Lab> {
    let mut lab = Lab::new(tag)?;
    lab.host("lb1", "10.99.0.1/24");
    lab.host("lb2", "10.99.0.2/24");
    lab.host("be1", "10.99.0.11/24");
    lab.host("be2", "10.99.0.12/24");
    lab.host("ca", "10.99.0.50/24");
    lab.host("cb", "10.99.0.60/24");
    lab::add_addresses(
        &lab,
        "ca",
        &sources(50)
            .skip(1)
            .map(|a| format!("{a}/24"))
            .collect::<Vec<_>>(),
    );
    lab::add_addresses(
        &lab,
        "cb",
        &sources(60)
            .skip(1)
            .map(|a| format!("{a}/24"))
            .collect::<Vec<_>>(),
    );
    lab.http_backend("be1", "10.99.0.11:80".parse().unwrap(), "be1\n");
    lab.http_backend("be2", "10.99.0.12:80".parse().unwrap(), "be2\n");
    std::fs::write(
        lab.dir.path().join("sync.key"),
        "a shared key for the lab, 32 b!!",
    )
    .unwrap();
    Some(lab)
}

fn sources(first: u8) -> impl Iterator<Item = IpAddr> + Clone {
    (first..first + SOURCES).map(|n| IpAddr::from([10, 99, 0, n]))
}

fn start(lab: &Lab, name: &str) -> Running {
    lab.run_tandem(name, &node_config(lab, name))
}

/// (sent at, source, answer, ended at) of each request.
type Log = Arc<Mutex<Vec<(Instant, IpAddr, Option<String>, Instant)>>>;

/// Requests from host `name` to `target` every 10 ms, taking its sources in turn,
/// until the lab ends or a minute passes.
fn clients(lab: &Lab, name: &str, first: u8, target: SocketAddr) -> Log {
    let log: Log = Arc::default();
    let record = log.clone();
    let stop = lab.stopped();
    lab.thread_in(name, move || {
        let started = Instant::now();
        for from in sources(first).cycle() {
            if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(60) {
                return;
            }
            let at = Instant::now();
            let record = record.clone();
            std::thread::spawn(move || {
                let answer = lab::request_from(from, target);
                record
                    .lock()
                    .unwrap()
                    .push((at, from, answer, Instant::now()));
            });
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    log
}

/// Waits until every source of `log` has been answered since `t`.
fn wait_all_answered(log: &Log, t: Instant, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let answered = log
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _, a, _)| *at >= t && a.is_some())
            .map(|(_, from, _, _)| *from)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if answered == usize::from(SOURCES) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not every client answered within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last answered request sent before `t` and the first sent after it: the gap.
fn gap_around(log: &Log, t: Instant) -> Option<Duration> {
    let log = log.lock().unwrap();
    let last = log
        .iter()
        .filter(|(at, _, a, _)| *at < t && a.is_some())
        .map(|(at, _, _, _)| *at)
        .max()?;
    let first = log
        .iter()
        .filter(|(at, _, a, _)| *at >= t && a.is_some())
        .map(|(at, _, _, _)| *at)
        .min()?;
    Some(first - last)
}

/// Each source's backends over the run, in order of first use.
fn backends_by_source(log: &Log) -> BTreeMap<IpAddr, Vec<String>> {
    let mut out: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for (_, from, answer, _) in log.lock().unwrap().iter() {
        if let Some(a) = answer {
            let seen = out.entry(*from).or_default();
            if !seen.contains(a) {
                seen.push(a.clone());
            }
        }
    }
    out
}

fn holds(lab: &Lab, node: &str, a: &str) -> bool {
    lab.has_address(node, a)
}

#[test]
fn each_node_serves_its_address_takes_the_other_at_a_kill_and_gives_it_back() {
    let Some(lab) = lab("aa") else { return };
    let mut lb1 = start(&lab, "lb1");
    let mut lb2 = start(&lab, "lb2");
    lab.wait(
        "lb1 holds A, lb2 holds B, each only its own",
        Duration::from_secs(20),
        || {
            holds(&lab, "lb1", A)
                && holds(&lab, "lb2", B)
                && !holds(&lab, "lb1", B)
                && !holds(&lab, "lb2", A)
        },
    );
    // Pins are made from here on: with both backends up on both nodes (their checks
    // decided: the readiness line), so that the clients spread over both.
    lb1.wait_for("VRRP eth0 vrid 51 may preempt");
    lb2.wait_for("VRRP eth0 vrid 52 may preempt");
    let started = Instant::now();
    let ca = clients(&lab, "ca", 50, format!("{A}:80").parse().unwrap());
    let cb = clients(&lab, "cb", 60, format!("{B}:80").parse().unwrap());
    wait_all_answered(&ca, started, Duration::from_secs(10));
    wait_all_answered(&cb, started, Duration::from_secs(10));
    let serving = Instant::now();
    // Both nodes serve at once, each pinning its own clients (and sending the pins
    // to the other).
    std::thread::sleep(Duration::from_millis(500));
    assert!(holds(&lab, "lb1", A) && holds(&lab, "lb2", B));
    let report = String::from_utf8(
        Command::new(support::TANDEM)
            .args(["ctl", "--socket"])
            .arg(lab.socket("lb1"))
            .arg("ha")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    println!("tandem ctl ha on lb1:\n{report}");
    assert!(
        report.contains("state MASTER\ninterface eth0  vrid 51")
            && report.contains("state BACKUP\ninterface eth0  vrid 52"),
        "{report}"
    );
    assert!(
        !report.contains("packet(s): vrid"),
        "each instance hears the other's adverts without counting them as dropped: {report}"
    );

    // SIGKILL lb1: A moves to lb2, B stays where it is.
    let killed = Instant::now();
    lb1.signal(rustix::process::Signal::KILL);
    lb2.wait_for("VRRP BACKUP -> MASTER (eth0 vrid 51)");
    let (served_at, _) = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let first = ca
                .lock()
                .unwrap()
                .iter()
                .filter(|(at, _, a, _)| *at >= killed && a.is_some())
                .map(|(at, _, a, _)| (*at, a.clone()))
                .min_by_key(|(at, _)| *at);
            if let Some(f) = first {
                break f;
            }
            assert!(
                Instant::now() < deadline,
                "A not served within 5 s of the kill"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let gap = gap_around(&ca, killed).expect("answers before and after the kill");
    println!(
        "A after SIGKILL of lb1: last answer (from lb1) to first (from lb2): {} ms; first request served {} ms after the kill",
        gap.as_millis(),
        served_at.duration_since(killed).as_millis()
    );
    assert!(gap < Duration::from_secs(1), "A failed over in {gap:?}");
    let b_gap = gap_around(&cb, killed).unwrap();
    println!(
        "B meanwhile: longest wait around the kill {} ms",
        b_gap.as_millis()
    );
    assert!(holds(&lab, "lb2", A) && holds(&lab, "lb2", B));

    // lb1 returns: it takes A back once ready (after its sync and checks), B stays.
    drop(lb1);
    let mut lb1 = start(&lab, "lb1");
    let (ready, line) = lb1.wait_for_position("VRRP eth0 vrid 51 may preempt");
    let (master, _) = lb1.wait_for_position("VRRP BACKUP -> MASTER (eth0 vrid 51)");
    println!(
        "lb1 again: {}",
        &line[line.find("ready to preempt").unwrap_or(0)..]
    );
    assert!(ready < master, "A taken back only once lb1 was ready");
    lab.wait("lb2 released A", Duration::from_secs(3), || {
        !holds(&lab, "lb2", A)
    });
    lab.wait("lb1 holds A", Duration::from_secs(3), || {
        holds(&lab, "lb1", A)
    });
    let back = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        holds(&lab, "lb2", B) && !holds(&lab, "lb1", B),
        "B stays on lb2"
    );
    wait_all_answered(&ca, back, Duration::from_secs(5));
    wait_all_answered(&cb, back, Duration::from_secs(5));
    // The lab's end stops the backends too: what was sent in its last moments may
    // fail, so the count ends a little before.
    let end = Instant::now() - Duration::from_millis(300);
    lab.stopped().store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(700));

    // Every client kept its backend throughout: pinned by one node, found there by
    // the other.
    for (name, log) in [("A", &ca), ("B", &cb)] {
        let by_source = backends_by_source(log);
        println!("clients of {name}: {by_source:?}");
        let spread: std::collections::BTreeSet<_> =
            by_source.values().flat_map(|b| b.iter()).collect();
        println!("clients of {name} use {} backend(s)", spread.len());
        assert_eq!(
            spread.len(),
            2,
            "the clients of {name} spread over both backends"
        );
        for (source, backends) in &by_source {
            assert_eq!(
                backends.len(),
                1,
                "client {source} of {name} moved: {backends:?}"
            );
        }
        let l = log.lock().unwrap();
        for (phase, from, to) in [
            ("both serving", serving, killed),
            ("lb1 killed, until it is back", killed, back),
            ("after lb1's return", back, end),
        ] {
            // A request belongs to the phase it was sent in, except one still in
            // flight at the kill: the kill cut it, so it counts with the move.
            let phase_of = |at: Instant, ended: Instant| {
                if at < killed && ended >= killed {
                    killed
                } else {
                    at
                }
            };
            let sent: Vec<_> = l
                .iter()
                .filter(|(at, _, _, ended)| {
                    let t = phase_of(*at, *ended);
                    t >= from && t < to
                })
                .collect();
            let failed = sent.iter().filter(|(_, _, a, _)| a.is_none()).count();
            println!(
                "clients of {name}, {phase}: {} requests, {failed} failed",
                sent.len()
            );
            // B never moves: served throughout. A fails only while it moves.
            if name == "B" || phase != "lb1 killed, until it is back" {
                assert_eq!(failed, 0, "clients of {name}, {phase}");
            }
        }
    }
}

/// The MAC address of host `name`'s eth0.
fn mac(lab: &Lab, name: &str) -> String {
    let out = lab.ip_in(name, &["link", "show", "eth0"]);
    let after = out
        .split("link/ether ")
        .nth(1)
        .expect("an ethernet address");
    after.split_whitespace().next().unwrap().to_string()
}

/// The link-layer address host `name` has for `address`, if any.
fn neighbour(lab: &Lab, name: &str, address: &str) -> Option<String> {
    let out = lab.ip_in(name, &["neigh", "show", address]);
    let after = out.split("lladdr ").nth(1)?;
    Some(after.split_whitespace().next()?.to_string())
}

/// Drops (or lets through again) VRRP in and out of host `name`: the nodes no longer
/// hear each other, while clients still reach both.
fn cut_vrrp(lab: &Lab, name: &str, cut: bool) {
    let script = if cut {
        "add table inet splitbrain\n\
         add chain inet splitbrain in { type filter hook input priority 0 ; }\n\
         add chain inet splitbrain out { type filter hook output priority 0 ; }\n\
         add rule inet splitbrain in ip protocol vrrp drop\n\
         add rule inet splitbrain out ip protocol vrrp drop\n"
    } else {
        "delete table inet splitbrain\n"
    };
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(name), "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(script.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "nft in {name}");
}

#[test]
fn a_healed_split_brain_leaves_one_master_and_the_clients_pointing_at_it() {
    if Command::new("nft").arg("--version").output().is_err() {
        eprintln!("SKIPPED: the split brain lab needs nft (package nftables)");
        return;
    }
    let Some(lab) = lab("sb") else { return };
    let _lb1 = start(&lab, "lb1");
    let mut lb2 = start(&lab, "lb2");
    lab.wait("lb1 holds A, lb2 holds B", Duration::from_secs(20), || {
        holds(&lab, "lb1", A) && holds(&lab, "lb2", B) && !holds(&lab, "lb2", A)
    });
    let started = Instant::now();
    let ca = clients(&lab, "ca", 50, format!("{A}:80").parse().unwrap());
    wait_all_answered(&ca, started, Duration::from_secs(10));
    let (mac1, mac2) = (mac(&lab, "lb1"), mac(&lab, "lb2"));
    assert_eq!(neighbour(&lab, "ca", A).as_deref(), Some(mac1.as_str()));

    // Cut: lb2 hears no advert from lb1, and lb1 none from it: both master of A.
    cut_vrrp(&lab, "lb2", true);
    lab.wait("lb2 master of A too", Duration::from_secs(3), || {
        holds(&lab, "lb2", A)
    });
    assert!(holds(&lab, "lb1", A), "lb1 still master of A");
    // lb2's gratuitous ARPs (up to 2 s after its takeover) win the client over.
    lab.wait(
        "the client sends A's traffic to lb2",
        Duration::from_secs(4),
        || neighbour(&lab, "ca", A).as_deref() == Some(mac2.as_str()),
    );
    std::thread::sleep(Duration::from_millis(2500));

    // Heal. Times count from before the nft command (which itself takes a while: the
    // heal happens somewhere within it).
    let healed = Instant::now();
    cut_vrrp(&lab, "lb2", false);
    let nft_took = healed.elapsed();
    lab.wait("lb2 gave A up", Duration::from_secs(3), || {
        !holds(&lab, "lb2", A)
    });
    let one_master = healed.elapsed();
    lab.wait(
        "the client's neighbour entry for A is lb1's",
        Duration::from_secs(3),
        || neighbour(&lab, "ca", A).as_deref() == Some(mac1.as_str()),
    );
    let pointed = healed.elapsed();
    lb2.wait_for("VRRP MASTER -> BACKUP (eth0 vrid 51)");
    println!(
        "split brain healed: one master of A after {} ms (adverts every 100 ms), client's entry for A back to lb1 ({mac1}) after {} ms, both from before the nft command that took {} ms",
        one_master.as_millis(),
        pointed.as_millis(),
        nft_took.as_millis()
    );
    assert!(
        holds(&lab, "lb1", A),
        "lb1, the higher priority, stayed master"
    );
    // One interval after the heal, which is within the nft command; and what polling
    // `ip addr` adds (a few ms; tens on a busy machine).
    assert!(
        one_master < nft_took + Duration::from_millis(150),
        "one master after {one_master:?}"
    );
    assert!(
        pointed < Duration::from_secs(1),
        "entry moved after {pointed:?}"
    );
    wait_all_answered(&ca, Instant::now(), Duration::from_secs(5));
}

/// Node `name` of the example (without its `[sync]` unless `sync`), with a short
/// drain.
fn start_for_upgrade(lab: &Lab, name: &str, sync: bool) -> Running {
    let mut text = std::fs::read_to_string(node_config(lab, name)).unwrap();
    if !sync {
        let (head, _) = text.split_once("\n[sync]").expect("the example has [sync]");
        text = head.to_string();
    }
    let text = replace_once(&text, "[global]\n", "[global]\ndrain_timeout = \"1s\"\n");
    lab.run_tandem(name, &lab.write_config(name, &text))
}

/// How many of `node`'s log lines so far contain `needle`.
fn count_lines(node: &mut Running, needle: &str) -> usize {
    node.lines_now()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

/// Bulk transfers `node` logged so far, sent or received.
fn bulks(node: &mut Running) -> usize {
    count_lines(node, "bulk transfer sent") + count_lines(node, "bulk transfer received")
}

/// Whether tandem `node` has a pin for `client`.
fn pinned(lab: &Lab, node: &str, client: &str) -> bool {
    let entries = support::ctl_json(&lab.socket(node), &["sticky", "show", "--client", client]);
    entries.as_array().is_some_and(|e| !e.is_empty())
}

/// One request to A from `source` (an address of host ca), answered.
fn request_a_from(lab: &Lab, source: &str) {
    let from: IpAddr = source.parse().unwrap();
    let target: SocketAddr = format!("{A}:80").parse().unwrap();
    let answer = lab
        .thread_in("ca", move || lab::request_from(from, target))
        .join()
        .unwrap();
    assert!(answer.is_some(), "a request from {source} to A answered");
}

/// `tandem upgrade` of lb1, master of A and backup of B: each router resumes in its
/// predecessor's state (keyed by interface and vrid); lb2 sees no transition on either
/// instance, the addresses stay where they are, and every request to either is
/// answered. With `[sync]`: the new process resumes the sync session (no bulk transfer
/// either way, lb2 does not take the old session's end for lb1's exit) and pins made
/// just before and just after the upgrade reach lb2.
fn upgrade_lb1(tag: &str, sync: bool) {
    let Some(lab) = lab(tag) else { return };
    // Sources for the pins made around the upgrade.
    lab::add_addresses(
        &lab,
        "ca",
        &["10.99.0.71/24".into(), "10.99.0.72/24".into()],
    );
    let mut lb1 = start_for_upgrade(&lab, "lb1", sync);
    let mut lb2 = start_for_upgrade(&lab, "lb2", sync);
    lab.wait(
        "lb1 holds A, lb2 holds B, each only its own",
        Duration::from_secs(20),
        || {
            holds(&lab, "lb1", A)
                && holds(&lab, "lb2", B)
                && !holds(&lab, "lb1", B)
                && !holds(&lab, "lb2", A)
        },
    );
    lb1.wait_for("VRRP eth0 vrid 51 may preempt");
    lb2.wait_for("VRRP eth0 vrid 52 may preempt");
    let started = Instant::now();
    let ca = clients(&lab, "ca", 50, format!("{A}:80").parse().unwrap());
    let cb = clients(&lab, "cb", 60, format!("{B}:80").parse().unwrap());
    wait_all_answered(&ca, started, Duration::from_secs(10));
    wait_all_answered(&cb, started, Duration::from_secs(10));
    if sync {
        until_pinned(&lab, "10.99.0.71", "before");
    }
    let bulks_before = (bulks(&mut lb1), bulks(&mut lb2));
    let before = support::ctl_json(&lab.socket("lb2"), &["ha"]);
    assert_eq!(before[0]["state"], "BACKUP", "{before}");
    assert_eq!(before[1]["state"], "MASTER", "{before}");

    let began = Instant::now();
    let support::Upgraded {
        new_pid,
        took,
        reply,
    } = support::upgrade_json(&lab.socket("lb1"), &mut lb1);
    let _new = crate::upgrade::KillOnDrop(new_pid);
    lb1.wait_for("INIT -> MASTER (eth0 vrid 51): taken over from the previous process");
    lb1.wait_for("INIT -> BACKUP (eth0 vrid 52): taken over from the previous process");
    if sync {
        until_pinned(&lab, "10.99.0.72", "after");
    }
    let mine = support::ctl_json(&lab.socket("lb1"), &["ha"]);
    assert_eq!(mine[0]["state"], "MASTER", "{mine}");
    assert_eq!(mine[1]["state"], "BACKUP", "{mine}");
    assert_eq!(
        lb1.wait_exit(Duration::from_secs(5)),
        0,
        "the old process ends"
    );
    // Long enough for lb2 to take A over several times (3.6 intervals of 100 ms) had
    // the new process not advertised it.
    std::thread::sleep(Duration::from_millis(1500));
    let after = support::ctl_json(&lab.socket("lb2"), &["ha"]);
    for i in 0..2 {
        assert_eq!(after[i]["state"], before[i]["state"], "{after}");
        assert_eq!(
            after[i]["transitions"], before[i]["transitions"],
            "lb2 saw no change on instance {i}: {before} then {after}"
        );
    }
    assert!(holds(&lab, "lb1", A) && !holds(&lab, "lb2", A));
    assert!(holds(&lab, "lb2", B) && !holds(&lab, "lb1", B));
    let failed = |log: &Log| {
        let log = log.lock().unwrap();
        let after: Vec<_> = log.iter().filter(|(at, _, _, _)| *at >= began).collect();
        (
            after.iter().filter(|(_, _, a, _)| a.is_some()).count(),
            after.iter().filter(|(_, _, a, _)| a.is_none()).count(),
        )
    };
    let ((a_ok, a_failed), (b_ok, b_failed)) = (failed(&ca), failed(&cb));
    println!(
        "upgrade of lb1 (two instances): `tandem upgrade` took {} ms (new process ready after {} ms); lb2's transitions {} then {}; A: {a_ok} answered, {a_failed} failed; B: {b_ok} answered, {b_failed} failed",
        took.as_millis(),
        reply["ready_ms"],
        before
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["transitions"].to_string())
            .collect::<Vec<_>>()
            .join("/"),
        after
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["transitions"].to_string())
            .collect::<Vec<_>>()
            .join("/"),
    );
    assert_eq!(a_failed, 0, "no request to A failed");
    assert_eq!(b_failed, 0, "no request to B failed");
    assert!(a_ok > 50 && b_ok > 50, "the clients ran: {a_ok}, {b_ok}");
    if sync {
        let bulks = (
            bulks(&mut lb1) - bulks_before.0,
            bulks(&mut lb2) - bulks_before.1,
        );
        let handed = count_lines(
            &mut lb2,
            "a sync session with this peer ended; another one is up",
        );
        println!(
            "upgrade of lb1 with [sync]: bulk transfers sent or received since the upgrade: {} on lb1, {} on lb2; lb2 logged the old session's end beside the new one {handed} time(s)",
            bulks.0, bulks.1
        );
        assert_eq!(
            bulks,
            (0, 0),
            "no bulk transfer either way: {:#?}",
            lb2.lines_now()
                .iter()
                .filter(|l| l.contains("bulk transfer") || l.contains("sync session"))
                .collect::<Vec<_>>()
        );
        assert_eq!(handed, 1, "lb2 took the old session's end for what it is");
    }
}

/// Pins a new client (`source`) on lb1 through A, then waits until the pin reaches
/// lb2 (`when`: before or after the upgrade).
fn until_pinned(lab: &Lab, source: &str, when: &str) {
    request_a_from(lab, source);
    let t = Instant::now();
    lab.wait(
        &format!("the pin made {when} the upgrade ({source}) on lb2"),
        Duration::from_secs(5),
        || pinned(lab, "lb2", source),
    );
    println!(
        "the pin made {when} the upgrade reached lb2 after {} ms",
        t.elapsed().as_millis()
    );
}

#[test]
fn an_upgrade_of_a_node_with_two_instances_is_not_seen_by_the_peer() {
    upgrade_lb1("aau", false);
}

#[test]
fn an_upgrade_with_sync_is_not_seen_by_the_peer_and_needs_no_bulk() {
    upgrade_lb1("aus", true);
}
