//! The `tandem` command as an operator runs it: check, run with SIGTERM drain, demo,
//! and a listener that survives running out of file descriptors.

use crate::support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Running, TANDEM, listen_addr, write_config};

fn examples_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn tandem(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(TANDEM).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_shipped_examples() {
    // ha-pair.toml (redirect services) needs a forwarding host and its key file: it
    // is checked in e2e/redirect.rs, inside a lab.
    for name in ["quickstart.toml", "mail.toml"] {
        let path = examples_dir().join(name);
        let (code, out, err) = tandem(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!((code, out.trim()), (0, "ok"), "{name}: {err}");
    }
}

#[test]
fn check_prints_every_error_with_its_position_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "[[pool]]\nname = \"web\"\nbackends = [{ address = \"10.0.0.1\" }]\n\n[[service]]\nname = \"www\"\nlisten = [\"0.0.0.0:80\"]\npool = \"wbe\"\nconnect_timeout = \"soon\"\n",
    );
    let (code, out, err) = tandem(&["check", "--config", &path]);
    assert_eq!(code, 2);
    assert!(out.is_empty(), "nothing on stdout: {out}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "{path}:3:25: pool.backends.address: \"10.0.0.1\" is not an IP:port address (add the port: \"10.0.0.1:80\", or \"[2001:db8::1]:80\" for IPv6)"
        )
    );
    assert_eq!(
        lines[1],
        format!("{path}:8:8: service.pool: no pool is named \"wbe\" (defined pools: web)")
    );
    assert!(
        lines[2].starts_with(&format!(
            "{path}:9:19: service.connect_timeout: \"soon\" is not a duration"
        )),
        "{err}"
    );
    assert!(lines[3].contains("3 error(s)"), "{err}");
}

#[test]
fn check_of_a_missing_file_says_so() {
    let (code, _, err) = tandem(&["check", "--config", "/nonexistent/tandem.toml"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("/nonexistent/tandem.toml: cannot read the file"),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_2_and_help_teaches() {
    let (code, _, err) = tandem(&["frobnicate"]);
    assert_eq!(code, 2, "{err}");
    let (code, out, _) = tandem(&["--help"]);
    assert_eq!(code, 0);
    for word in ["run", "check", "demo", "Exit codes"] {
        assert!(out.contains(word), "--help lacks {word}: {out}");
    }
}

#[test]
fn run_drains_on_sigterm_letting_a_running_transfer_finish() {
    support::raise_fd_limit();
    // A backend that sends 2 MiB slowly (about 1.2 s).
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let payload = support::random_bytes(99, 2 << 20);
    let expected = support::sha256(&payload);
    std::thread::spawn(move || {
        for s in backend.incoming() {
            let Ok(mut s) = s else { continue };
            let payload = payload.clone();
            std::thread::spawn(move || {
                for chunk in payload.chunks(64 * 1024) {
                    if s.write_all(chunk).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(40));
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!(
            "[global]\nlog_format = \"json\"\ndrain_timeout = \"10s\"\ncontrol_socket = \"{}/tandem.sock\"\n\n[[pool]]\nname = \"slow\"\nbackends = [{{ address = \"{backend_addr}\" }}]\n\n[[service]]\nname = \"dl\"\nlisten = [\"127.0.0.1:0\"]\npool = \"slow\"\n",
            dir.path().display()
        ),
    );
    let mut tandem = Running::spawn(&["run", "--config", &path]);
    let listen = listen_addr(&tandem.wait_for("service ready"));
    let mut client = TcpStream::connect(listen).unwrap();
    let mut first = [0u8; 1024];
    client.read_exact(&mut first).unwrap();
    tandem.signal(rustix::process::Signal::TERM);
    tandem.wait_for("stopping");
    // New connections are refused once accepting stopped.
    let deadline = Instant::now() + Duration::from_secs(3);
    while TcpStream::connect(listen).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The running transfer completes in full.
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    let mut got = first.to_vec();
    got.extend(rest);
    assert_eq!(got.len(), 2 << 20);
    assert_eq!(support::sha256(&got), expected);
    // The client closes after its download, as real clients do: the relay is done.
    drop(client);
    assert_eq!(tandem.wait_exit(Duration::from_secs(10)), 0);
    // One JSON log line for the connection, with its figures.
    let logs = tandem.drain_lines();
    let line = logs
        .lines()
        .find(|l| l.contains("\"message\":\"connection\"") && l.contains("\"end\":\"closed\""))
        .unwrap_or_else(|| panic!("no connection line:\n{logs}"));
    assert!(
        line.contains(&format!("\"to_client\":{}", 2 << 20)),
        "{line}"
    );
    assert!(
        line.contains(&format!("\"backend\":\"{backend_addr}\"")),
        "{line}"
    );
    assert!(logs.contains("\"closed_at_deadline\":0"), "{logs}");
}

#[test]
fn demo_answers_curl_with_changing_names_a_sticky_port_and_a_flapping_backend() {
    let mut demo = Running::spawn(&[
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--flap-after",
        "2",
        "--flap-for",
        "3",
    ]);
    let address_after = |line: &str, marker: &str| -> SocketAddr {
        line.split(marker)
            .nth(1)
            .unwrap()
            .split(['/', ' '])
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let web = address_after(&demo.wait_for("balancer  http://"), "http://");
    let sticky = address_after(&demo.wait_for("sticky    http://"), "http://");
    let demo2 = address_after(&demo.wait_for("demo-2 on "), "demo-2 on ");
    demo.wait_for("demo-2 fails it 2s after start, for 3s");
    let curl = |addr: SocketAddr| {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", &format!("http://{addr}/")])
            .output()
            .expect("curl is installed (scripts/test installs it)");
        assert!(out.status.success(), "curl failed: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let names: Vec<String> = (0..4).map(|_| curl(web)).collect();
    for n in &names {
        assert!(n.starts_with("Hello from demo-"), "{n}");
    }
    let distinct: std::collections::HashSet<_> = names.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "round-robin over three backends: {names:?}"
    );
    let sticky_names: std::collections::HashSet<String> = (0..3).map(|_| curl(sticky)).collect();
    assert_eq!(
        sticky_names.len(),
        1,
        "sticky service moved the client: {sticky_names:?}"
    );
    // demo-2 fails its check: the log says so once per pool, and curl never meets it.
    let down = demo.wait_for(&format!("web {demo2} down: http status 503 after 2 checks"));
    assert!(down.contains("WARN"), "{down}");
    for _ in 0..8 {
        assert!(!curl(web).contains("demo-2"), "demo-2 served while down");
    }
    demo.wait_for(&format!("web {demo2} up: after 2 passed checks"));
    let back: std::collections::HashSet<String> = (0..4).map(|_| curl(web)).collect();
    assert!(
        back.iter().any(|n| n.contains("demo-2")),
        "demo-2 back in rotation: {back:?}"
    );
    demo.signal(rustix::process::Signal::INT);
    demo.wait_for("stopping the demo");
    assert_eq!(demo.wait_exit(Duration::from_secs(5)), 0);
}

#[test]
fn listener_survives_running_out_of_file_descriptors() {
    support::raise_fd_limit();
    // A backend that holds every connection open and greets it.
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in backend.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.write_all(b"hi\n");
                let mut buf = [0u8; 16];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!(
            "[global]\ncontrol_socket = \"{}/tandem.sock\"\n\n[[pool]]\nname = \"p\"\nbackends = [{{ address = \"{backend_addr}\" }}]\n\n[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:0\"]\npool = \"p\"\nretries = 0\n",
            dir.path().display()
        ),
    );
    let mut tandem = Running::spawn(&["run", "--config", &path]);
    let listen = listen_addr(&tandem.wait_for("service ready"));
    // Leave tandem 64 descriptors: a few dozen relayed connections exhaust them.
    let pid = rustix::process::Pid::from_raw(tandem.child.id() as i32).unwrap();
    let limit = rustix::process::Rlimit {
        current: Some(64),
        maximum: Some(64),
    };
    rustix::process::prlimit(Some(pid), rustix::process::Resource::Nofile, limit).unwrap();
    let greeted = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).is_ok()
    };
    let mut held = Vec::new();
    for _ in 0..60 {
        let mut s = TcpStream::connect(listen).unwrap();
        if greeted(&mut s) {
            held.push(s);
        }
    }
    assert!(
        held.len() < 60,
        "the fd limit never bit ({} relayed)",
        held.len()
    );
    tandem.wait_for("accept failed: pausing the listener");
    // Free the descriptors: the same listener serves again.
    drop(held);
    std::thread::sleep(Duration::from_millis(1500));
    for n in 0..20 {
        let mut s = TcpStream::connect(listen).unwrap();
        assert!(greeted(&mut s), "connection {n} after recovery not served");
    }
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn root_without_a_user_is_refused_and_with_one_runs_as_that_user_with_only_what_it_needs() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: dropping root needs root (scripts/test runs as root in CI)");
        return;
    }
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The control socket is created after the switch: nobody must be able to write here.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let text = |user: &str| {
        format!(
            "[global]\ncontrol_socket = \"{}/t.sock\"\n{user}\n[[pool]]\nname = \"p\"\nbackends = [{{ address = \"{}\" }}]\n\n\
[[service]]\nname = \"low\"\nlisten = [\"127.0.0.1:81\"]\npool = \"p\"\n",
            dir.path().display(),
            backend.local_addr().unwrap()
        )
    };
    let path = write_config(dir.path(), &text(""));
    let out = Command::new(TANDEM)
        .args(["run", "--config", &path])
        .env_remove("TANDEM_ALLOW_ROOT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refuses to run as root") && err.contains("user = \"tandem\""),
        "{err}"
    );

    let path = write_config(dir.path(), &text("user = \"nobody\""));
    let mut tandem = Running::spawn(&["run", "--config", &path]);
    let line = tandem.wait_for("running as an ordinary user");
    assert!(line.contains("capabilities=CAP_NET_BIND_SERVICE"), "{line}");
    tandem.wait_for("tandem running");
    let pid = tandem.child.id();
    let nobody = "65534\t65534\t65534\t65534";
    assert_eq!(status_field(pid, "Uid"), nobody);
    assert_eq!(status_field(pid, "Gid"), nobody);
    // Only CAP_NET_BIND_SERVICE (bit 10), also as the bound of what it could regain.
    assert_eq!(status_field(pid, "CapEff"), "0000000000000400");
    assert_eq!(status_field(pid, "CapBnd"), "0000000000000400");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // It still serves, on the port below 1024 it bound after the switch.
    let mut client = TcpStream::connect("127.0.0.1:81").unwrap();
    let (mut server, _) = backend.accept().unwrap();
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    let meta = std::fs::metadata(dir.path().join("t.sock")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        65534,
        "the control socket is nobody's"
    );
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    };
    assert!(version.status.success());
    let unit = std::fs::read_to_string(examples_dir().join("../dist/tandem.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    for key in [
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=",
    ] {
        assert!(unit.contains(key), "{key}");
    }
    // Verify it against the binary built here (the unit names /usr/bin/tandem).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.service");
    std::fs::write(&path, unit.replace("/usr/bin/tandem", TANDEM)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("tandem.service"))
        .collect();
    assert!(out.status.success() && about_unit.is_empty(), "{err}");
}

#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let systemd = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let path = write_config(
        dir.path(),
        &format!(
            "[global]\ncontrol_socket = \"{}/t.sock\"\ndrain_timeout = \"1s\"\n[[pool]]\nname = \"p\"\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:0\"]\npool = \"p\"\n",
            dir.path().display()
        ),
    );
    let mut child = Command::new(TANDEM)
        .args(["run", "--config", &path])
        .env("NOTIFY_SOCKET", &notify)
        .env("TANDEM_ALLOW_ROOT", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let next = || {
        let mut buf = [0u8; 256];
        let n = systemd.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).trim().to_string()
    };
    assert_eq!(next(), "READY=1");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    assert_eq!(next(), "RELOADING=1");
    assert_eq!(next(), "READY=1");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert_eq!(next(), "STOPPING=1");
    assert!(child.wait().unwrap().success());
}

/// A backend that writes `name` and a newline to every connection.
fn std_name_server(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().map_while(Result::ok) {
            let _ = s.write_all(format!("{name}\n").as_bytes());
        }
    });
    address
}

/// The backend that answers a connection to `to` from 127.0.0.`last`.
fn backend_from(last: u8, to: SocketAddr) -> String {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, last], 0)).into())
        .unwrap();
    socket.connect(&to.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut name = String::new();
    stream.read_to_string(&mut name).unwrap();
    name.trim().to_string()
}

#[test]
fn sticky_pins_outlive_a_restart_through_the_state_file() {
    let a = std_name_server("a");
    let b = std_name_server("b");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let text = format!(
        "[global]\ncontrol_socket = \"{d}/tandem.sock\"\nstate_dir = \"{s}\"\n\n[[pool]]\nname = \"imap\"\nbackends = [{{ address = \"{a}\" }}, {{ address = \"{b}\" }}]\nsticky = {{ key = \"source-ip\", ttl = \"30m\" }}\n\n[[service]]\nname = \"imap\"\nlisten = [\"127.0.0.1:0\"]\npool = \"imap\"\n",
        d = dir.path().display(),
        s = state.display()
    );
    let path = write_config(dir.path(), &text);
    let clients: Vec<u8> = (2..22).collect();
    let mut tandem = Running::spawn(&["run", "--config", &path]);
    tandem.wait_for("no sticky state saved yet");
    let listen = listen_addr(&tandem.wait_for("service ready"));
    let before: Vec<String> = clients.iter().map(|&c| backend_from(c, listen)).collect();
    assert!(before.contains(&"a".into()) && before.contains(&"b".into()));
    tandem.signal(rustix::process::Signal::TERM);
    assert_eq!(tandem.wait_exit(Duration::from_secs(10)), 0);
    assert!(
        state.join("sticky.state").is_file(),
        "no state file at stop"
    );

    // Started again: the clients, asking in the other order (round-robin alone would
    // now give each the other backend), find their pins.
    let mut tandem = Running::spawn(&["run", "--config", &path]);
    let restored = tandem.wait_for("sticky tables restored");
    assert!(restored.contains("20 pins"), "{restored}");
    let listen = listen_addr(&tandem.wait_for("service ready"));
    let mut after: Vec<String> = clients
        .iter()
        .rev()
        .map(|&c| backend_from(c, listen))
        .collect();
    after.reverse();
    assert_eq!(after, before, "pins moved across the restart");
    tandem.signal(rustix::process::Signal::TERM);
    assert_eq!(tandem.wait_exit(Duration::from_secs(10)), 0);

    // A damaged file is refused with a clear line; tandem starts empty and serves.
    let file = state.join("sticky.state");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let mut tandem = Running::spawn(&["run", "--config", &path]);
    let refused = tandem.wait_for("sticky state refused");
    assert!(
        refused.contains("starting with empty tables: damaged: its checksum does not match"),
        "{refused}"
    );
    let listen = listen_addr(&tandem.wait_for("service ready"));
    assert!(["a", "b"].contains(&backend_from(2, listen).as_str()));
    tandem.signal(rustix::process::Signal::TERM);
    assert_eq!(tandem.wait_exit(Duration::from_secs(10)), 0);
}
