//! The status page as a person sees it: rendered by headless Chromium (Debian's
//! chromium package, installed by scripts/test as root), checked in the DOM it built,
//! with a screenshot kept in target/ for a human to look at.

use crate::support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

fn headless(binary: &str, profile: &std::path::Path) -> Command {
    let mut c = Command::new(binary);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,900",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_backends_with_their_states_in_chromium() {
    let Some(binary) = chromium() else {
        eprintln!("SKIPPED: chromium is not installed (scripts/test installs it as root)");
        return;
    };
    let a = name_server("a", false).await;
    let b = name_server("b", false).await;
    let dead = dead_address().await;
    let text = format!(
        "[global]\nname = \"lb-test\"\nadmin_listen = \"127.0.0.1:0\"\n\n\
[[pool]]\nname = \"web\"\nbackends = {}\ncheck = {{ type = \"tcp\", interval = \"100ms\", timeout = \"50ms\", rise = 1, fall = 1, initial = \"up\" }}\n\n\
[[service]]\nname = \"www\"\nlisten = [\"127.0.0.1:0\"]\npool = \"web\"\n",
        backends_toml(&[a, b, dead], &[1, 1, 1])
    );
    let d = start(&text).await;
    let admin = d.admin_addr().unwrap();
    d.set_backend_enabled("web", &b.to_string(), false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while d
        .pools()
        .get("web")
        .unwrap()
        .backend(&dead)
        .unwrap()
        .state
        .is_healthy()
    {
        assert!(Instant::now() < deadline, "dead backend not found down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        name_via(addr_of(&d, "www"), None).await;
    }
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{admin}/");
    let dom = tokio::task::spawn_blocking({
        let mut c = headless(binary, profile.path());
        c.arg("--dump-dom").arg(&url);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(dom.contains("<span id=\"node\">lb-test</span>"), "{dom}");
    for (address, state) in [(a, "up"), (b, "disabled"), (dead, "down")] {
        let row = format!("data-address=\"{address}\" data-state=\"{state}\"");
        assert!(dom.contains(&row), "no row {row} in the DOM:\n{dom}");
    }
    assert!(
        dom.contains("connect: Connection refused"),
        "the failing check's reason is shown"
    );
    assert!(dom.contains("<td>www</td>"), "the service is listed");
    // A screenshot for people; the test checks it is a real PNG of some size.
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = tokio::task::spawn_blocking({
        let mut c = headless(binary, profile.path());
        c.arg(format!("--screenshot={}", shot.display())).arg(&url);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 10_000, "screenshot of {} bytes", png.len());
    println!("screenshot: {}", shot.display());
}
