//! `tandem upgrade`: a new process takes the listening sockets and the sticky tables
//! over while the old one finishes what it holds; a new binary that cannot start
//! leaves the old one serving.

use crate::support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A backend that talks like an IMAP server: a greeting with its name, then
/// `TAG OK NAME` for each `TAG ...` line, until the client leaves.
async fn conversation_server(name: &'static str) -> SocketAddr {
    serve(move |s, _| async move {
        let (read, mut write) = s.into_split();
        if write
            .write_all(format!("{name}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
        let mut lines = BufReader::new(read).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let tag = line.split(' ').next().unwrap_or("*").to_string();
            if write
                .write_all(format!("{tag} OK {name}\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    })
    .await
}

/// Kills a process by pid when dropped (the new tandem is not the test's child).
pub(crate) struct KillOnDrop(pub(crate) u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0 as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

fn alive(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

fn upgrade_cmd(socket: &Path, extra: &[&str]) -> (i32, String, String, Duration) {
    let began = Instant::now();
    let out = Command::new(TANDEM)
        .arg("upgrade")
        .arg("--socket")
        .arg(socket)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        began.elapsed(),
    )
}

struct Setup {
    dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    tandem: Running,
    listen: SocketAddr,
}

async fn start(drain: &str) -> Setup {
    start_with(drain, &[]).await
}

async fn start_with(drain: &str, env: &[(&str, &str)]) -> Setup {
    let a = conversation_server("a").await;
    let b = conversation_server("b").await;
    let c = conversation_server("c").await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tandem.sock");
    let path = write_config(
        dir.path(),
        &format!(
            "[global]\nname = \"node-a\"\ncontrol_socket = \"{}\"\nadmin_listen = \"127.0.0.1:0\"\ndrain_timeout = \"{drain}\"\n\n\
             [[pool]]\nname = \"imap\"\nbalance = \"random\"\nbackends = {}\nsticky = {{ key = \"source-ip\", ttl = \"30m\" }}\n\n\
             [[service]]\nname = \"imap\"\nlisten = [\"127.0.0.1:0\"]\npool = \"imap\"\n",
            socket.display(),
            backends(&[a, b, c]),
        ),
    );
    let mut tandem = Running::spawn_with_env(TANDEM, &["run", "--config", &path], env);
    let line = tandem.wait_for("service ready");
    let listen = listen_addr(&line);
    tandem.wait_for("tandem running");
    Setup {
        dir,
        socket,
        tandem,
        listen,
    }
}

/// The held session: one `TAG NOOP` every 20 ms, each answer timed; returns the
/// answers counted and the longest wait, once `stop` is set.
async fn hold_session(
    mut stream: TcpStream,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> (String, Duration) {
    let (read, mut write) = stream.split();
    let mut lines = BufReader::new(read).lines();
    let name = lines.next_line().await.unwrap().unwrap();
    let mut longest = Duration::ZERO;
    for tag in 0..5_000u32 {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let sent = Instant::now();
        write
            .write_all(format!("t{tag} NOOP\n").as_bytes())
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the held session stalled for 10 s")
            .unwrap()
            .expect("the held session was closed");
        assert_eq!(answer, format!("t{tag} OK {name}"));
        longest = longest.max(sent.elapsed());
        answered.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (name, longest)
}

/// A new connection every 5 ms until `stop` (at most 4000): returns (served, failed,
/// the failures' errors).
async fn connection_stream(to: SocketAddr, stop: Arc<AtomicBool>) -> (u64, u64, Vec<String>) {
    let (mut served, mut failed, mut errors) = (0, 0, Vec::new());
    for _ in 0..4_000 {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let attempt = async {
            let s = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
            let mut lines = BufReader::new(s).lines();
            match lines.next_line().await {
                Ok(Some(name)) if !name.is_empty() => Ok(()),
                other => Err(format!("no greeting: {other:?}")),
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(())) => served += 1,
            Ok(Err(e)) => {
                failed += 1;
                errors.push(e);
            }
            Err(_) => {
                failed += 1;
                errors.push("no greeting within 5 s".into());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (served, failed, errors)
}

async fn pins(to: SocketAddr, clients: &[IpAddr]) -> Vec<String> {
    let mut out = Vec::new();
    for &c in clients {
        out.push(name_via(to, Some(c)).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_session_and_a_stream_of_connections_cross_an_upgrade() {
    raise_fd_limit();
    let mut s = start("60s").await;
    let old_pid = s.tandem.child.id();
    let status = ctl_json(&s.socket, &["status"]);
    assert_eq!(status["pid"], old_pid);

    // Sticky pins made by the old process, from 24 client addresses.
    let clients: Vec<IpAddr> = (10..34).map(|i| IpAddr::from([127, 0, 0, i])).collect();
    let before = pins(s.listen, &clients).await;

    let stop_session = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let held = connect_from(IpAddr::from([127, 0, 0, 2]), s.listen).await;
    let session = tokio::spawn(hold_session(held, stop_session.clone(), answered.clone()));
    let stop_stream = Arc::new(AtomicBool::new(false));
    let stream = tokio::spawn(connection_stream(s.listen, stop_stream.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let socket = s.socket.clone();
    let (code, out, err, took) =
        tokio::task::spawn_blocking(move || upgrade_cmd(&socket, &["--json"]))
            .await
            .unwrap();
    assert_eq!(
        code,
        0,
        "tandem upgrade failed: {err}\n{}",
        s.tandem.drain_lines()
    );
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    let new_pid = reply["new_pid"].as_u64().unwrap() as u32;
    let _new = KillOnDrop(new_pid);
    assert_ne!(new_pid, old_pid);
    assert_eq!(reply["old_pid"], old_pid);
    assert_eq!(
        reply["sockets"], 3,
        "service, admin port, control socket: {reply}"
    );
    assert!(
        reply["pins"].as_u64().unwrap() >= clients.len() as u64,
        "{reply}"
    );
    let answered_at_upgrade = answered.load(Ordering::SeqCst);

    // The control socket answers from the new process, which serves new connections.
    let status = ctl_json(&s.socket, &["status"]);
    assert_eq!(
        status["pid"], new_pid,
        "the control socket moved to the new process"
    );
    let after = pins(s.listen, &clients).await;
    assert_eq!(
        after, before,
        "every client keeps its backend across the upgrade"
    );
    let status = ctl_json(&s.socket, &["status"]);
    let total = status["services"][0]["total"].as_u64().unwrap();
    assert!(
        total >= clients.len() as u64,
        "the new process accepted the clients' connections: {status}"
    );
    s.tandem.wait_for("this one stopped accepting");

    // The stream goes on for a while against the new process; the session through the
    // old one keeps talking.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_stream.store(true, Ordering::SeqCst);
    let (served, failed, errors) = stream.await.unwrap();
    assert!(
        answered.load(Ordering::SeqCst) > answered_at_upgrade + 5,
        "the held session still answers after the upgrade"
    );
    assert!(
        alive(old_pid),
        "the old process waits for its last connection"
    );
    assert!(s.tandem.child.try_wait().unwrap().is_none());
    stop_session.store(true, Ordering::SeqCst);
    let (_, longest) = session.await.unwrap();

    // The last connection of the old process ends: it exits 0 at once.
    let code = s.tandem.wait_exit(Duration::from_secs(10));
    assert_eq!(code, 0, "{}", s.tandem.drain_lines());
    assert!(alive(new_pid), "the new process serves on");
    let status = ctl_json(&s.socket, &["status"]);
    assert_eq!(status["pid"], new_pid);
    let new_name = name_via(s.listen, None).await;
    assert!(!new_name.is_empty());

    let ready_ms = reply["ready_ms"].as_u64().unwrap();
    println!(
        "upgrade: `tandem upgrade` took {took:?}, the new process served {ready_ms} ms after the request; \
         connections: {served} served, {failed} failed; the held session's longest answer: {longest:?}"
    );
    assert_eq!(failed, 0, "connections refused or cut: {errors:?}");
    assert!(served > 20, "the stream ran through the upgrade: {served}");
    drop(s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binary_that_cannot_start_leaves_the_old_one_serving() {
    raise_fd_limit();
    let mut s = start("5s").await;
    let old_pid = s.tandem.child.id();
    // The configuration is broken before the upgrade: the new process refuses it.
    let path = s.dir.path().join("tandem.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        good.replace("balance = \"random\"", "balance = \"sideways\""),
    )
    .unwrap();
    let socket = s.socket.clone();
    let (code, out, err, _) = tokio::task::spawn_blocking(move || upgrade_cmd(&socket, &[]))
        .await
        .unwrap();
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("upgrade refused"), "{err}");
    assert!(err.contains("balance"), "the reason names the key: {err}");
    assert!(
        err.contains("tandem.toml:"),
        "the reason names the file: {err}"
    );
    // The old process serves on, and answers the control socket.
    let status = ctl_json(&s.socket, &["status"]);
    assert_eq!(status["pid"], old_pid);
    assert!(!name_via(s.listen, None).await.is_empty());

    // A binary that does not exist.
    std::fs::write(&path, &good).unwrap();
    let socket = s.socket.clone();
    let (code, _, err, _) = tokio::task::spawn_blocking(move || {
        upgrade_cmd(&socket, &["--binary", "/nonexistent/tandem"])
    })
    .await
    .unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("cannot start /nonexistent/tandem"), "{err}");

    // A binary that exits before taking over.
    let socket = s.socket.clone();
    let (code, _, err, _) =
        tokio::task::spawn_blocking(move || upgrade_cmd(&socket, &["--binary", "/bin/false"]))
            .await
            .unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("exited"), "{err}");
    assert_eq!(ctl_json(&s.socket, &["status"])["pid"], old_pid);
    assert!(!name_via(s.listen, None).await.is_empty());

    // A binary that never asks for the sockets: given up after 10 s, and killed.
    let script = s.dir.path().join("stuck");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let socket = s.socket.clone();
    let stuck = script.to_str().unwrap().to_string();
    let (code, _, err, took) =
        tokio::task::spawn_blocking(move || upgrade_cmd(&socket, &["--binary", &stuck]))
            .await
            .unwrap();
    assert_eq!(code, 1);
    assert!(
        err.contains("did not ask for the sockets within 10s"),
        "{err}"
    );
    assert!(
        err.contains("signal: 9"),
        "the stuck process was killed: {err}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_eq!(ctl_json(&s.socket, &["status"])["pid"], old_pid);
    assert!(!name_via(s.listen, None).await.is_empty());

    // And after all that, a good upgrade still works.
    let socket = s.socket.clone();
    let (code, out, err, _) =
        tokio::task::spawn_blocking(move || upgrade_cmd(&socket, &["--json"]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    let _new = KillOnDrop(reply["new_pid"].as_u64().unwrap() as u32);
    assert_eq!(s.tandem.wait_exit(Duration::from_secs(10)), 0);
    assert!(!name_via(s.listen, None).await.is_empty());
}

/// Under systemd (Type=notify, NotifyAccess=main) the unit must follow the new
/// process: the old one, still the main one, says `MAINPID=NEW` and nothing after it
/// (no STOPPING=1), and the new one sends nothing systemd would refuse. A connection
/// the old process holds past `drain_timeout` is closed then, and the old one exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_follows_the_new_process_and_the_old_one_ends_at_drain_timeout() {
    raise_fd_limit();
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_path = notify_dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut s = start_with("1s", &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())]).await;
    let old_pid = s.tandem.child.id();
    let mut buf = [0u8; 512];
    let mut read_all = || {
        let mut got = Vec::new();
        while let Ok(n) = notify.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).trim_end().to_string());
        }
        got
    };
    assert_eq!(read_all(), ["READY=1"], "the old process started as usual");

    // A session that does not end by itself.
    let mut held = TcpStream::connect(s.listen).await.unwrap();
    read_name(&mut held).await;
    let socket = s.socket.clone();
    let (code, out, err, _) =
        tokio::task::spawn_blocking(move || upgrade_cmd(&socket, &["--json"]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    let new_pid = reply["new_pid"].as_u64().unwrap() as u32;
    let _new = KillOnDrop(new_pid);
    assert_eq!(reply["draining"], 1, "{reply}");
    assert_eq!(reply["old_pid"], old_pid);

    let began = Instant::now();
    let code = s.tandem.wait_exit(Duration::from_secs(10));
    let drained = began.elapsed();
    assert_eq!(code, 0);
    assert!(
        drained >= Duration::from_millis(700),
        "the old process waited for drain_timeout (1 s): {drained:?}"
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::io::AsyncReadExt::read_to_end(&mut held, &mut rest),
    )
    .await;
    assert!(
        closed.is_ok(),
        "the held connection was closed at the deadline"
    );
    assert_eq!(
        read_all(),
        [format!("MAINPID={new_pid}")],
        "the old process hands the unit over and says nothing more"
    );
    assert!(alive(new_pid));
    assert!(!name_via(s.listen, None).await.is_empty());
    println!(
        "upgrade: the old process ended {drained:?} after the upgrade, at drain_timeout (1 s)"
    );
}

/// A node with `[sync]` upgrades: the new process takes the sync listener over (the
/// port keeps accepting, nothing is bound anew) and resumes the sync node. (What is
/// still refused, `[announce]` and redirect services, needs root and a lab.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_carries_the_sync_listener() {
    let a = conversation_server("a").await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tandem.sock");
    let key = dir.path().join("sync.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    let peer = dead_address().await;
    let sync_port = free_port();
    let path = write_config(
        dir.path(),
        &format!(
            "[global]\nname = \"node-a\"\ncontrol_socket = \"{}\"\n\n\
             [[pool]]\nname = \"p\"\nbackends = {}\n\n\
             [[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:0\"]\npool = \"p\"\n\n\
             [sync]\nlisten = \"127.0.0.1:{sync_port}\"\npeers = [\"{peer}\"]\nkey_file = \"{}\"\n",
            socket.display(),
            backends(&[a]),
            key.display(),
        ),
    );
    let mut tandem = Running::spawn(&["run", "--config", &path]);
    let listen = listen_addr(&tandem.wait_for("service ready"));
    tandem.wait_for("tandem running");
    let at = socket.clone();
    let (code, _, err, _) = tokio::task::spawn_blocking(move || upgrade_cmd(&at, &[]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let new_pid = ctl_json(&socket, &["status"])["pid"].as_u64().unwrap() as u32;
    let _new = KillOnDrop(new_pid);
    assert_ne!(new_pid, tandem.child.id(), "the new process answers");
    let ready = tandem.wait_for_nth("sync ready", 2);
    assert!(ready.contains("resumed=true"), "{ready}");
    assert!(!name_via(listen, None).await.is_empty());
    // The sync port accepts: the listener lives on in the new process (the old one
    // exits at once: no connection to drain).
    assert_eq!(tandem.wait_exit(Duration::from_secs(5)), 0);
    tokio::net::TcpStream::connect(("127.0.0.1", sync_port))
        .await
        .expect("the sync listener is the new process's");
}
