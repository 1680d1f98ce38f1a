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
    assert_eq!(worker_threads(pid), names);
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    for (port, name) in [(pa, "a"), (pb, "b")] {
        assert_eq!(
            descriptors_of_listener(pid, port),
            WORKERS + 1,
            "one per worker and the copy to hand over, for :{port}"
        );
        all_answered(at(port), name, 64).await;
    }

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
    for (port, name) in [(pa, "a"), (pb, "c"), (pc, "b")] {
        assert_eq!(
            descriptors_of_listener(pid, port),
            WORKERS + 1,
            "after the reload, :{port}"
        );
        all_answered(at(port), name, 64).await;
    }

    let new_pid = upgrade_json(&socket, &mut tandem).new_pid;
    let _new = crate::upgrade::KillOnDrop(new_pid);
    assert_eq!(tandem.wait_exit(Duration::from_secs(10)), 0);
    assert_eq!(worker_threads(new_pid), names);
    for (port, name) in [(pa, "a"), (pb, "c"), (pc, "b")] {
        assert_eq!(
            descriptors_of_listener(new_pid, port),
            WORKERS + 1,
            "the successor holds :{port} the same way"
        );
        all_answered(at(port), name, 64).await;
    }
}
