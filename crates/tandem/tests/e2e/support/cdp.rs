//! A Chrome DevTools Protocol client over `--remote-debugging-pipe`: headless
//! Chromium reads commands from its fd 3 and writes answers and events to its fd 4,
//! each a JSON message ended by a NUL byte. Enough to open a page, evaluate
//! expressions in it and take a screenshot.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Chromium headless, as a test wants it: no sandbox (root), no GPU, nothing sent
/// to the network on its own.
pub const HEADLESS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// Debian's chromium, if installed.
pub fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// A headless Chromium driven over its debugging pipe; killed on drop.
pub struct Browser {
    child: Child,
    to_browser: std::io::PipeWriter,
    answers: mpsc::Receiver<Value>,
    pending: HashMap<u64, Value>,
    next_id: u64,
    session: Option<String>,
}

/// Gives the child `to_child` as its fd 3 and `from_child` as its fd 4 (Chromium's
/// debugging pipe), without close-on-exec.
#[allow(unsafe_code)]
fn debugging_pipe_fds(command: &mut Command, to_child: RawFd, from_child: RawFd) {
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // fcntl(2) and dup2(2), which are async-signal-safe. Both ends move above fd 10
    // first, so that placing one on 3 or 4 cannot overwrite the other.
    unsafe {
        command.pre_exec(move || {
            let r = libc::fcntl(to_child, libc::F_DUPFD, 10);
            let w = libc::fcntl(from_child, libc::F_DUPFD, 10);
            if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Browser {
    /// Starts `binary` headless with its profile in `profile`, `extra` arguments
    /// appended.
    pub fn launch(binary: &str, profile: &Path, extra: &[&str]) -> Browser {
        let (child_reads, we_write) = std::io::pipe().expect("a pipe");
        let (we_read, child_writes) = std::io::pipe().expect("a pipe");
        let mut command = Command::new(binary);
        command
            .args(HEADLESS)
            .args(["--remote-debugging-pipe", "--window-size=1280,1000"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        debugging_pipe_fds(
            &mut command,
            child_reads.as_raw_fd(),
            child_writes.as_raw_fd(),
        );
        let child = command.spawn().expect("start chromium");
        drop((child_reads, child_writes));
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(we_read);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop_if(|b| *b == 0);
                if let Ok(v) = serde_json::from_slice::<Value>(&message)
                    && tx.send(v).is_err()
                {
                    return;
                }
                message.clear();
            }
        });
        Browser {
            child,
            to_browser: we_write,
            answers,
            pending: HashMap::new(),
            next_id: 1,
            session: None,
        }
    }

    /// Sends `method` with `params` (to the open page once there is one) and waits
    /// for its answer's `result`; panics with the browser's error.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session
            && !method.starts_with("Target.")
        {
            message["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .expect("write to chromium");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(answer) = self.pending.remove(&id) {
                if let Some(error) = answer.get("error") {
                    panic!("{method}: {error}");
                }
                return answer["result"].clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.answers.recv_timeout(left) {
                Ok(v) => {
                    if let Some(n) = v["id"].as_u64() {
                        self.pending.insert(n, v);
                    }
                }
                Err(_) => panic!("chromium did not answer {method} within 20 s"),
            }
        }
    }

    /// Opens `url` in a new page and attaches to it; later calls go to that page.
    pub fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({ "url": url }));
        let id = target["targetId"]
            .as_str()
            .expect("a target id")
            .to_string();
        let attached = self.call(
            "Target.attachToTarget",
            json!({ "targetId": id, "flatten": true }),
        );
        self.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `expression` every 50 ms until it is true; panics with `what` after
    /// `within`.
    pub fn wait_for(&mut self, expression: &str, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        while self.eval(expression) != Value::Bool(true) {
            assert!(Instant::now() < deadline, "{what} (not within {within:?})");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A PNG of the page as shown.
    pub fn screenshot(&mut self) -> Vec<u8> {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        base64_decode(shot["data"].as_str().expect("screenshot data"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("chromium sends base64")
}
