//! Worker threads (`threads` other than 1): every worker accepts on every listener
//! through its own descriptor of the one socket, across reloads that hand a listener
//! to another service and across an upgrade, which hands each socket over once.

use crate::support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::*;

const WORKERS: usize = 3;

/// The names of `pid`'s threads that are connection workers.
fn worker_threads(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .filter(|n| n.starts_with("tandem-worker-"))
        .collect();
    names.sort();
    names
}

/// The inode of the socket listening on 127.0.0.1:`port`, from /proc/net/tcp.
fn listening_inode(port: u16) -> Option<String> {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 9 && f[1] == want && f[3] == "0A")
        .map(|f| f[9].to_string())
}

/// How many of `pid`'s descriptors are the socket listening on `port`.
fn descriptors_of_listener(pid: u32, port: u16) -> usize {
    let Some(inode) = listening_inode(port) else {
        return 0;
    };
    let want = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.to_str() == Some(want.as_str()))
        .count()
}

/// Sends `n` connections to `to` at once; every one must be relayed to `name`.
async fn all_answered(to: SocketAddr, name: &str, n: usize) {
    let clients: Vec<_> = (0..n)
        .map(|_| tokio::spawn(async move { name_via(to, None).await }))
        .collect();
    for c in clients {
        assert_eq!(c.await.unwrap(), name, "through {to}");
    }
}

/// Each of `listeners` (port, backend name) is held by one descriptor per worker of
/// `pid` and the copy to hand over, and relays every connection to its backend.
async fn serves_on_every_worker(pid: u32, listeners: &[(u16, &str)], when: &str) {
    for &(port, name) in listeners {
        assert_eq!(
            descriptors_of_listener(pid, port),
            WORKERS + 1,
            "{when}: descriptors of :{port}"
        );
        all_answered(SocketAddr::from(([127, 0, 0, 1], port)), name, 64).await;
    }
}

fn config(socket: &Path, services: &str, backends: &[(&str, SocketAddr)]) -> String {
    let pools: String = backends
        .iter()
        .map(|(name, a)| {
            format!("[[pool]]\nname = \"{name}\"\nbackends = [{{ address = \"{a}\" }}]\n\n")
        })
        .collect();
    format!(
        "[global]\nname = \"workers\"\ncontrol_socket = \"{}\"\nthreads = {WORKERS}\ndrain_timeout = \"1s\"\n\n{pools}{services}",
        socket.display()
    )
}

fn service(name: &str, port: u16, pool: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = [\"127.0.0.1:{port}\"]\npool = \"{pool}\"\n\n"
    )
}

/// Each listener is one socket that every worker holds a descriptor of (and one copy
/// kept to hand over at an upgrade): connections on every service are all relayed,
/// before and after a reload that moves a listener to another service and adds one,
/// and in the new process after an upgrade, which holds the same sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_serves_every_listener_across_reload_and_upgrade() {
    let backends = [
        ("a", name_server("a", false).await),
        ("b", name_server("b", false).await),
        ("c", name_server("c", false).await),
    ];
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tandem.sock");
    let first = config(
        &socket,
        &(service("a", pa, "a") + &service("b", pb, "b")),
        &backends,
    );
    let path = write_config(dir.path(), &first);
    let mut tandem = Running::spawn(&["run", "--config", &path]);
    tandem.wait_for("tandem running");
    let pid = tandem.child.id();
    let names: Vec<String> = (0..WORKERS).map(|i| format!("tandem-worker-{i}")).collect();
    // A thread takes its name as it starts: until then it shows the process's.
    wait_until("the worker threads", Duration::from_secs(5), || {
        worker_threads(pid) == names
    })
    .await;
    serves_on_every_worker(pid, &[(pa, "a"), (pb, "b")], "at start").await;

    // Listener pb passes from service b to c; a new service b listens on pc.
    std::fs::write(
        &path,
        config(
            &socket,
            &(service("a", pa, "a") + &service("c", pb, "c") + &service("b", pc, "b")),
            &backends,
        ),
    )
    .unwrap();
    let (code, out, err) = ctl(&socket, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let now = [(pa, "a"), (pb, "c"), (pc, "b")];
    serves_on_every_worker(pid, &now, "after the reload").await;

    let new_pid = upgrade_json(&socket, &mut tandem).new_pid;
    let _new = crate::upgrade::KillOnDrop(new_pid);
    assert_eq!(tandem.wait_exit(Duration::from_secs(10)), 0);
    // A thread takes its name as it starts: until then it shows the process's.
    wait_until("the worker threads", Duration::from_secs(5), || {
        worker_threads(new_pid) == names
    })
    .await;
    serves_on_every_worker(new_pid, &now, "in the successor").await;
}

/// Connections opened at once, as a load generator opens its keep-alive connections,
/// are spread over the workers: each holds some, and none more than its share beyond
/// the slack of `tandem_proxy::spread` (one connection and an eighth), as `tandem ctl
/// status` shows per worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_opened_at_once_spread_over_the_workers() {
    const HELD: usize = 48;
    let backends = [("a", name_server("a", true).await)];
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tandem.sock");
    let path = write_config(
        dir.path(),
        &config(&socket, &service("a", port, "a"), &backends),
    );
    let mut tandem = Running::spawn(&["run", "--config", &path]);
    tandem.wait_for("tandem running");
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let opened: Vec<_> = (0..HELD)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(to).await.unwrap();
                let mut name = [0u8; 2];
                tokio::io::AsyncReadExt::read_exact(&mut s, &mut name)
                    .await
                    .unwrap();
                assert_eq!(&name, b"a\n");
                s
            })
        })
        .collect();
    let mut held = Vec::new();
    for o in opened {
        held.push(o.await.unwrap());
    }
    let per_worker = |status: &serde_json::Value| -> Vec<u64> {
        status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .collect()
    };
    let open = per_worker(&ctl_json(&socket, &["status"]));
    assert_eq!(open.len(), WORKERS, "{open:?}");
    assert_eq!(open.iter().sum::<u64>(), HELD as u64, "{open:?}");
    let (least, most) = (*open.iter().min().unwrap(), *open.iter().max().unwrap());
    assert!(least > 0, "a worker holds none: {open:?}");
    assert!(most <= least + 2 + least / 8, "beyond the share: {open:?}");
    drop(held);
    wait_until("the connections closed", Duration::from_secs(5), || {
        per_worker(&ctl_json(&socket, &["status"])) == vec![0; WORKERS]
    })
    .await;
}
