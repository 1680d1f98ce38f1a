//! Checks against the servers operators run: nginx for http, dovecot for IMAP and POP3
//! banners. Each test starts its own server on loopback ports from a temporary folder
//! and stops it at the end. They need the Debian packages nginx, dovecot-imapd and
//! dovecot-pop3d (scripts/test installs them as root); without them, or without root
//! for dovecot, they say SKIPPED loudly and pass.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tandem_config::{Check, CheckKind, ProxyProtocol, Step};
use tandem_health::Prober;

fn step(send: Option<&str>, expect: &str) -> Step {
    Step {
        send: send.map(str::to_string),
        expect: expect.into(),
        starttls: false,
    }
}

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

/// A folder for a test's Dovecot, or `None` (SKIPPED, loudly) without dovecot or root.
fn dovecot_dir() -> Option<tempfile::TempDir> {
    if find("dovecot").is_none() || !is_root() {
        eprintln!(
            "SKIPPED: dovecot needs the dovecot-imapd/dovecot-pop3d packages and root (scripts/test as root)"
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    // dovecot's unprivileged processes must reach their files.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(dir)
}

/// How a test's Dovecot listens: plain banners, or STARTTLS with a certificate and
/// PROXY-protocol listeners (haproxy = yes), as behind a balancer.
enum Dovecot<'a> {
    Plain,
    ProxiedTls { cert: &'a Path, key: &'a Path },
}

fn start_dovecot(dir: &Path, imap: u16, pop3: u16, mode: Dovecot) -> Server {
    let d = dir.display();
    let conf = dir.join("dovecot.conf");
    let (ssl, haproxy) = match mode {
        Dovecot::Plain => ("ssl = no\n".to_string(), ""),
        Dovecot::ProxiedTls { cert, key } => (
            format!(
                "ssl = yes\nssl_cert = <{}\nssl_key = <{}\nhaproxy_trusted_networks = 127.0.0.0/8\n",
                cert.display(),
                key.display()
            ),
            "    haproxy = yes\n",
        ),
    };
    std::fs::write(
        &conf,
        format!(
            "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\nprotocols = imap pop3\nlisten = 127.0.0.1\n{ssl}\
default_login_user = dovenull\ndefault_internal_user = dovecot\n\
service imap-login {{\n  inet_listener imap {{\n    port = {imap}\n{haproxy}  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
service pop3-login {{\n  inet_listener pop3 {{\n    port = {pop3}\n{haproxy}  }}\n  inet_listener pop3s {{\n    port = 0\n  }}\n}}\n\
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
    let Some(dir) = dovecot_dir() else { return };
    let (imap_port, pop3_port) = (free_port(), free_port());
    let mut dovecot = start_dovecot(dir.path(), imap_port, pop3_port, Dovecot::Plain);
    let imap = SocketAddr::from(([127, 0, 0, 1], imap_port));
    let pop3 = SocketAddr::from(([127, 0, 0, 1], pop3_port));
    let mut imap_check = check(CheckKind::SendExpect);
    imap_check.steps = vec![step(None, r"^\* OK")];
    imap_check.quit = Some("a1 LOGOUT\r\n".into());
    let mut pop3_check = check(CheckKind::SendExpect);
    pop3_check.steps = vec![step(None, r"^\+OK")];
    pop3_check.quit = Some("QUIT\r\n".into());
    let p = Prober::new(&imap_check).unwrap().probe(imap).await;
    assert!(p.ok, "imap banner: {}", p.error);
    let p = Prober::new(&pop3_check).unwrap().probe(pop3).await;
    assert!(p.ok, "pop3 banner: {}", p.error);
    // The IMAP check against the POP3 port sees the wrong banner.
    let p = Prober::new(&imap_check).unwrap().probe(pop3).await;
    assert!(
        p.error.starts_with("the banner: answer \"+OK"),
        "{}",
        p.error
    );
    assert!(
        p.error.ends_with("does not match \"^\\\\* OK\""),
        "{}",
        p.error
    );
    dovecot.stop();
    let p = Prober::new(&imap_check).unwrap().probe(imap).await;
    assert!(!p.ok, "dovecot stopped but the check passed");
}

/// A CA and a certificate for `mail.test` signed by it, as PEM files in `dir`:
/// (ca.pem, cert.pem, key.pem).
fn mail_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tandem test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["mail.test".into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

#[tokio::test]
async fn starttls_checks_with_proxy_headers_pass_against_dovecot() {
    let Some(dir) = dovecot_dir() else { return };
    let (ca, cert, key) = mail_certificates(dir.path());
    let (imap_port, pop3_port) = (free_port(), free_port());
    let _dovecot = start_dovecot(
        dir.path(),
        imap_port,
        pop3_port,
        Dovecot::ProxiedTls {
            cert: &cert,
            key: &key,
        },
    );
    let imap = SocketAddr::from(([127, 0, 0, 1], imap_port));
    let pop3 = SocketAddr::from(([127, 0, 0, 1], pop3_port));
    let secured = |steps: Vec<Step>, quit: &str| {
        let mut c = check(CheckKind::SendExpect);
        c.steps = steps;
        c.quit = Some(quit.into());
        c.send_proxy = ProxyProtocol::V2;
        c.verify = true;
        c.ca_file = Some(ca.clone());
        c.host = Some("mail.test".into());
        c
    };
    let imap_check = secured(
        vec![
            step(None, r"^\* OK"),
            Step {
                starttls: true,
                ..step(Some("a1 STARTTLS\r\n"), "^a1 OK")
            },
            step(Some("a2 CAPABILITY\r\n"), "AUTH=PLAIN(?s:.*)^a2 OK"),
        ],
        "a3 LOGOUT\r\n",
    );
    let pop3_check = secured(
        vec![
            step(None, r"^\+OK"),
            Step {
                starttls: true,
                ..step(Some("STLS\r\n"), r"^\+OK")
            },
        ],
        "QUIT\r\n",
    );
    let p = Prober::new(&imap_check).unwrap().probe(imap).await;
    assert!(p.ok, "imap STARTTLS: {}", p.error);
    assert!(p.not_after.is_some());
    let p = Prober::new(&pop3_check).unwrap().probe(pop3).await;
    assert!(p.ok, "pop3 STLS: {}", p.error);
    // What the issue saw: without the PROXY header Dovecot's PROXY listener hangs
    // up ("haproxy: Client disconnected") and the check fails.
    let mut bare = imap_check.clone();
    bare.send_proxy = ProxyProtocol::None;
    let p = Prober::new(&bare).unwrap().probe(imap).await;
    assert!(!p.ok, "dovecot greeted a connection without a PROXY header");
    // Another name than the certificate's: verification fails after STARTTLS.
    let mut wrong_name = imap_check.clone();
    wrong_name.host = Some("other.test".into());
    let p = Prober::new(&wrong_name).unwrap().probe(imap).await;
    assert!(
        p.error.starts_with("after STARTTLS: tls handshake") && p.error.contains("certificate"),
        "{}",
        p.error
    );
}
