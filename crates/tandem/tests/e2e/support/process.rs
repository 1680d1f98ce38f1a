//! The tandem binary as a child process: its output read line by line, `tandem ctl`.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The tandem binary under test.
pub const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

/// A child process that is killed if the test fails before it ends.
pub struct Running {
    /// The process.
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    /// Starts tandem with `args`; stderr (logs) and stdout lines both arrive on `lines`.
    pub fn spawn(args: &[&str]) -> Running {
        Running::spawn_program(TANDEM, args)
    }

    /// Starts `program` with `args`, as [`Running::spawn`] does tandem.
    pub fn spawn_program(program: &str, args: &[&str]) -> Running {
        Running::spawn_with_env(program, args, &[])
    }

    /// As [`Running::spawn_program`], with `env` added to the environment.
    pub fn spawn_with_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("TANDEM_TEST_LOG").unwrap_or("info".into()),
            )
            // CI runs the tests as root; the refusal itself is tested in e2e/cli.rs.
            .env("TANDEM_ALLOW_ROOT", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle` and returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.wait_for_nth(needle, 1)
    }

    /// Waits for the `n`-th line containing `needle` and returns it.
    pub fn wait_for_nth(&mut self, needle: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(l) = self.seen.iter().filter(|l| l.contains(needle)).nth(n - 1) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no line {n} with {needle:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for a line containing `needle`; returns its position among the lines read
    /// so far (to compare the order of two lines) and the line.
    pub fn wait_for_position(&mut self, needle: &str) -> (usize, String) {
        let line = self.wait_for(needle);
        let at = self.seen.iter().position(|l| l.contains(needle)).unwrap();
        (at, line)
    }

    /// Every line read so far plus what is pending.
    pub fn drain_lines(&mut self) -> String {
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(l);
        }
        self.seen.join("\n")
    }

    /// Every line read so far plus what has arrived, without waiting for more (for a
    /// process that logs on and on).
    pub fn lines_now(&mut self) -> Vec<String> {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        self.seen.clone()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Waits for the exit code.
    pub fn wait_exit(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "tandem did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `text` as tandem.toml in `dir`.
pub fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("tandem.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The address in a log line's `listen=ADDR` (text) or `"listen":"ADDR"` (json).
pub fn listen_addr(line: &str) -> SocketAddr {
    let at = line.find("listen").expect("listen field") + "listen".len();
    let rest: String = line[at..]
        .trim_start_matches(['=', '"', ':'])
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    rest.parse()
        .unwrap_or_else(|_| panic!("no address in {line}"))
}

/// `tandem ctl --socket SOCKET ARGS`: exit code, stdout, stderr.
pub fn ctl(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(TANDEM)
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `tandem ctl --json ARGS`, which must succeed, as JSON.
pub fn ctl_json(socket: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out, err) = ctl(socket, &all);
    assert_eq!(code, 0, "ctl {args:?}: {err}");
    serde_json::from_str(&out).unwrap()
}

/// What `tandem upgrade --json` answered.
pub struct Upgraded {
    /// The new process.
    pub new_pid: u32,
    /// How long the command took.
    pub took: Duration,
    /// The whole reply (`ready_ms`...).
    pub reply: serde_json::Value,
}

/// `tandem upgrade --json --socket SOCKET` for the node `old` runs, which must
/// succeed: a failure shows the command's stderr and `old`'s log.
pub fn upgrade_json(socket: &Path, old: &mut Running) -> Upgraded {
    let began = Instant::now();
    let out = Command::new(TANDEM)
        .args(["upgrade", "--json", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    let took = began.elapsed();
    assert!(
        out.status.success(),
        "tandem upgrade: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        old.drain_lines()
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Upgraded {
        new_pid: reply["new_pid"].as_u64().unwrap() as u32,
        took,
        reply,
    }
}

/// The path of `program` in PATH, /usr/sbin or /sbin.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}
