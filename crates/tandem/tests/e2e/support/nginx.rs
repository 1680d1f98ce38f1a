//! nginx as a real backend: one launcher for the loopback tests ([`nginx`]) and the
//! configuration lines every private instance needs ([`temp_paths`], also used by the
//! site lab's servers).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, which};

/// Two nginx server blocks on loopback that answer with their name and the headers
/// they got; stopped on Drop.
pub struct Nginx {
    child: Child,
    /// The ports of nginx-a and nginx-b.
    pub ports: [u16; 2],
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would orphan them).
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `http` block's lines that keep a private nginx's temporary files in `dir`.
pub fn temp_paths(dir: &str) -> String {
    format!(
        "  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n\
  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n"
    )
}

/// Starts nginx with the two servers nginx-a and nginx-b, or `None` (with a loud
/// SKIPPED line) where nginx is not installed.
pub fn nginx() -> Option<Nginx> {
    let Some(binary) = which("nginx") else {
        eprintln!("SKIPPED: nginx is not installed (scripts/test installs it as root)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let ports = [free_port(), free_port()];
    let server = |name: &str, port: u16| {
        format!(
            "  server {{\n    listen 127.0.0.1:{port};\n    keepalive_requests 10000;\n    location / {{\n      add_header X-Secret-Backend-Header hidden;\n      add_header X-Backend {name};\n      \
return 200 \"{name} xff=$http_x_forwarded_for proto=$http_x_forwarded_proto xhost=$http_x_forwarded_host fwd=$http_forwarded via=$http_via added=$http_x_added gone=$http_x_gone secret=$http_x_secret host=$host\\n\";\n    }}\n  }}\n"
        )
    };
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 256; }}\n\
http {{\n  access_log off;\n{}{}{}}}\n",
        temp_paths(&d.to_string()),
        server("nginx-a", ports[0]),
        server("nginx-b", ports[1])
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let child = Command::new(binary)
        .args([
            "-e",
            &format!("{d}/error.log"),
            "-p",
            &d.to_string(),
            "-c",
            &format!("{d}/nginx.conf"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for port in ports {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Some(Nginx {
        child,
        ports,
        _dir: dir,
    })
}

impl Nginx {
    /// The TOML list of both servers as backends.
    pub fn backends(&self) -> String {
        format!(
            "[{{ address = \"127.0.0.1:{}\" }}, {{ address = \"127.0.0.1:{}\" }}]",
            self.ports[0], self.ports[1]
        )
    }
}
