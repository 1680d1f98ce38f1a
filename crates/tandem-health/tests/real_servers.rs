//! Checks against the servers operators run: nginx for http, dovecot for IMAP and POP3
//! banners. Each test starts its own server on loopback ports from a temporary folder
//! and stops it at the end. They need the Debian packages nginx, dovecot-imapd and
//! dovecot-pop3d (scripts/test installs them as root); without them, or without root
//! for dovecot, they say SKIPPED loudly and pass.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tandem_config::{Check, CheckKind};
use tandem_health::Prober;

fn check(kind: CheckKind) -> Check {
    Check {
        rise: 1,
        fall: 1,
        ..Check::new(kind)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn find(program: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| p.exists())
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A server process, killed and waited for on drop.
struct Server {
    child: Child,
}

impl Server {
    fn stop(&mut self) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.child.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first: a master killed outright would leave its workers behind.
        self.stop();
    }
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "server on port {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_nginx(dir: &Path, port: u16) -> Server {
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
events {{ worker_connections 64; }}\n\
http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
  server {{\n    listen 127.0.0.1:{port};\n    location = /health {{ return 200 \"status: ok\\n\"; }}\n    location = /maintenance {{ return 503 \"down for maintenance\\n\"; }}\n  }}\n}}\n"
        ),
    )
    .unwrap();
    let child = Command::new(find("nginx").unwrap())
        .args([
            "-e",
            &format!("{d}/error.log"),
            "-p",
            &d.to_string(),
            "-c",
            &conf.display().to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(port);
    Server { child }
}

#[tokio::test]
async fn http_checks_against_nginx_follow_its_status_and_its_life() {
    if find("nginx").is_none() {
        eprintln!("SKIPPED: nginx is not installed (scripts/test installs it as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let mut nginx = start_nginx(dir.path(), port);
    let mut healthy = check(CheckKind::Http);
    healthy.path = "/health".into();
    healthy.expect_body = Some("ok".into());
    let mut maintenance = check(CheckKind::Http);
    maintenance.path = "/maintenance".into();
    let p = Prober::new(&healthy).unwrap().probe(target).await;
    assert!(p.ok, "nginx /health: {}", p.error);
    let p = Prober::new(&maintenance).unwrap().probe(target).await;
    assert_eq!(p.error, "http status 503");
    // nginx stopped: connection refused.
    nginx.stop();
    let p = Prober::new(&healthy).unwrap().probe(target).await;
    assert!(
        p.error.starts_with("connect: ") && p.error.contains("refused"),
        "{}",
        p.error
    );
    // Started again: passes again.
    let _nginx = start_nginx(dir.path(), port);
    let p = Prober::new(&healthy).unwrap().probe(target).await;
    assert!(p.ok, "nginx restarted: {}", p.error);
}

fn start_dovecot(dir: &Path, imap: u16, pop3: u16) -> Server {
    let d = dir.display();
    let conf = dir.join("dovecot.conf");
    std::fs::write(
        &conf,
        format!(
            "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\nprotocols = imap pop3\nlisten = 127.0.0.1\nssl = no\n\
default_login_user = dovenull\ndefault_internal_user = dovecot\n\
service imap-login {{\n  inet_listener imap {{\n    port = {imap}\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
service pop3-login {{\n  inet_listener pop3 {{\n    port = {pop3}\n  }}\n  inet_listener pop3s {{\n    port = 0\n  }}\n}}\n\
service anvil {{\n  chroot =\n}}\n\
passdb {{\n  driver = static\n  args = password=unused\n}}\nuserdb {{\n  driver = static\n  args = uid=nobody gid=nogroup home={d}/home/%u\n}}\n"
        ),
    )
    .unwrap();
    let child = Command::new(find("dovecot").unwrap())
        .args(["-F", "-c", &conf.display().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(imap);
    wait_listening(pop3);
    Server { child }
}

#[tokio::test]
async fn send_expect_checks_read_dovecot_imap_and_pop3_banners() {
    if find("dovecot").is_none() || !is_root() {
        eprintln!(
            "SKIPPED: dovecot needs the dovecot-imapd/dovecot-pop3d packages and root (scripts/test as root)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // dovecot's unprivileged processes must reach their files.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (imap_port, pop3_port) = (free_port(), free_port());
    let mut dovecot = start_dovecot(dir.path(), imap_port, pop3_port);
    let imap = SocketAddr::from(([127, 0, 0, 1], imap_port));
    let pop3 = SocketAddr::from(([127, 0, 0, 1], pop3_port));
    let mut imap_check = check(CheckKind::SendExpect);
    imap_check.expect = Some(r"^\* OK".into());
    imap_check.quit = Some("a1 LOGOUT\r\n".into());
    let mut pop3_check = check(CheckKind::SendExpect);
    pop3_check.expect = Some(r"^\+OK".into());
    pop3_check.quit = Some("QUIT\r\n".into());
    let p = Prober::new(&imap_check).unwrap().probe(imap).await;
    assert!(p.ok, "imap banner: {}", p.error);
    let p = Prober::new(&pop3_check).unwrap().probe(pop3).await;
    assert!(p.ok, "pop3 banner: {}", p.error);
    // The IMAP check against the POP3 port sees the wrong banner.
    let p = Prober::new(&imap_check).unwrap().probe(pop3).await;
    assert!(p.error.starts_with("answer \"+OK"), "{}", p.error);
    assert!(
        p.error.ends_with("does not match \"^\\\\* OK\""),
        "{}",
        p.error
    );
    dovecot.stop();
    let p = Prober::new(&imap_check).unwrap().probe(imap).await;
    assert!(!p.ok, "dovecot stopped but the check passed");
}
