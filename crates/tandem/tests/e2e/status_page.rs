//! The status page as a person sees it: rendered by headless Chromium (Debian's
//! chromium package, installed by scripts/test as root), checked in the DOM it built,
//! with a screenshot kept in target/ for a human to look at.

use crate::support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use support::cdp::{self, Browser, chromium};
use support::*;

fn headless(binary: &str, profile: &std::path::Path) -> Command {
    let mut c = Command::new(binary);
    c.args(cdp::HEADLESS)
        .arg("--window-size=1200,900")
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
    // The backends' agent (one for all: they share 127.0.0.1) asks for 75% weight.
    let agent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_port = agent.local_addr().unwrap().port();
    backends::serve_on(agent, |mut s, _| async move {
        let _ = tokio::io::AsyncWriteExt::write_all(&mut s, b"75%\n").await;
    });
    let text = format!(
        "[global]\nname = \"lb-test\"\nadmin_listen = \"127.0.0.1:0\"\n\n\
[[pool]]\nname = \"web\"\nbackends = {}\ncheck = {{ type = \"tcp\", interval = \"100ms\", timeout = \"50ms\", rise = 1, fall = 1, initial = \"up\" }}\nagent = {{ port = {agent_port}, interval = \"100ms\", timeout = \"50ms\" }}\n\n\
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
    assert!(
        dom.contains("<span class=\"agent\">agent: "),
        "what the agent says is shown:\n{dom}"
    );
    assert!(dom.contains("75%"), "the agent's weight is shown:\n{dom}");
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

/// The page as an operator keeps it open, driven in Chromium over the DevTools
/// protocol: while traffic runs the charts draw; a backend fails and the page shows it
/// down within a second of tandem's verdict, with the check's reason in the timeline;
/// a reload adds a pool and the page shows it without being reloaded; a drain clicked
/// on the page reaches tandem. A screenshot is kept in target/tmp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_follows_failures_and_reloads_and_drains_from_the_page() {
    let Some(binary) = chromium() else {
        eprintln!("SKIPPED: chromium is not installed (scripts/test installs it as root)");
        return;
    };
    let a = name_server("a", false).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = listener.local_addr().unwrap();
    let b_server = serve_on(listener, |mut s, _| async move {
        let _ = tokio::io::AsyncWriteExt::write_all(&mut s, b"b\n").await;
    });
    let text = format!(
        "[global]\nname = \"lb-live\"\nadmin_listen = \"127.0.0.1:0\"\nadmin_write = true\n\n\
[[pool]]\nname = \"web\"\nbackends = {}\ncheck = {{ type = \"tcp\", interval = \"100ms\", timeout = \"50ms\", rise = 1, fall = 1, initial = \"up\" }}\n\n\
[[service]]\nname = \"www\"\nlisten = [\"127.0.0.1:0\"]\npool = \"web\"\n",
        backends_toml(&[a, b], &[1, 1])
    );
    let d = start(&text).await;
    let admin = d.admin_addr().unwrap();
    let www = addr_of(&d, "www");
    // Traffic all along: 20 connections a second, for at most a minute.
    let traffic = tokio::spawn(async move {
        // (Clients are turned away once no backend is left: that is fine here.)
        for _ in 0..1200 {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let mut s = tokio::net::TcpStream::connect(www).await?;
                let mut name = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut s, &mut name).await
            })
            .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    // An action without the page's header, or with actions off, is refused.
    let refused = raw_post(
        admin,
        "/action",
        &[],
        r#"{"action":"disable","pool":"web","address":"x"}"#,
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");

    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{admin}/");
    let mut browser = tokio::task::spawn_blocking({
        let profile = profile.path().to_path_buf();
        move || {
            let mut browser = Browser::launch(binary, &profile, &[]);
            browser.open(&url);
            browser
        }
    })
    .await
    .unwrap();
    let page = |browser: Browser, f: Box<dyn FnOnce(&mut Browser) + Send>| async move {
        tokio::task::spawn_blocking(move || {
            let mut browser = browser;
            f(&mut browser);
            browser
        })
        .await
        .unwrap()
    };
    let row = |address: SocketAddr| {
        format!("document.querySelector('tr.backend[data-address=\"{address}\"]')")
    };
    browser = page(
        browser,
        Box::new({
            let (ra, rb) = (row(a), row(b));
            move |br| {
                br.wait_for(
                    &format!("{ra}?.dataset.state === 'up' && {rb}?.dataset.state === 'up'"),
                    Duration::from_secs(5),
                    "both backends up on the page",
                );
                // The charts draw from the history (one point per 5 s).
                br.wait_for(
                    "document.querySelectorAll('table.pool svg.spark polyline').length >= 2",
                    Duration::from_secs(15),
                    "the backends' charts drawn",
                );
                let label = br.eval(
                    "document.querySelector('#services svg.spark').getAttribute('aria-label')",
                );
                assert!(
                    label.as_str().unwrap().contains("connections per second"),
                    "{label}"
                );
            }
        }),
    )
    .await;

    // b fails: tandem's verdict, then the page.
    b_server.abort();
    let verdict = wait_until("tandem finds b down", Duration::from_secs(3), || {
        !d.pools()
            .get("web")
            .unwrap()
            .backend(&b)
            .unwrap()
            .state
            .is_healthy()
    })
    .await;
    let seen_at = std::time::Instant::now();
    browser = page(browser, Box::new({
        let rb = row(b);
        move |br| {
            br.wait_for(&format!("{rb}?.dataset.state === 'down'"), Duration::from_secs(3), "b down on the page");
            let late = seen_at.elapsed();
            assert!(late <= Duration::from_secs(1), "the page showed b down {late:?} after tandem's verdict");
            br.wait_for(
                &format!("[...document.querySelectorAll('#timeline li[data-kind=\"health\"]')].some(li => li.dataset.subject === 'web/{b}' && li.textContent.includes('up -> down') && li.textContent.includes('refused'))"),
                Duration::from_secs(3),
                "the timeline names b going down and why",
            );
        }
    })).await;
    let _ = verdict;

    // A reload adds a pool: the page shows it without being reloaded.
    let more = format!(
        "{text}\n[[pool]]\nname = \"extra\"\nbackends = {}\n\n[[service]]\nname = \"more\"\nlisten = [\"127.0.0.1:0\"]\npool = \"extra\"\n",
        backends_toml(&[a], &[1])
    );
    d.apply(config(&more)).await.unwrap();
    browser = page(
        browser,
        Box::new(|br| {
            br.wait_for(
                "document.querySelector('table.pool[data-pool=\"extra\"]') !== null",
                Duration::from_secs(3),
                "the new pool on the page",
            );
            br.wait_for(
                "[...document.querySelectorAll('#timeline li[data-kind=\"reload\"]')].length >= 1",
                Duration::from_secs(3),
                "the reload in the timeline",
            );
        }),
    )
    .await;

    // A drain from the page reaches tandem.
    browser = page(browser, Box::new({
        let a = a.to_string();
        move |br| {
            br.eval(&format!("document.querySelector('button.act[data-address=\"{a}\"][data-pool=\"web\"]').click()"));
            br.wait_for(&format!("document.getElementById('result').textContent.includes('drained {a}')"), Duration::from_secs(3), "the page says the drain was done");
        }
    })).await;
    wait_until("a disabled in tandem", Duration::from_secs(2), || {
        !d.pools()
            .get("web")
            .unwrap()
            .backend(&a)
            .unwrap()
            .state
            .is_enabled()
    })
    .await;
    browser = page(
        browser,
        Box::new({
            let ra = row(a);
            move |br| {
                br.wait_for(
                    &format!("{ra}?.dataset.state === 'disabled'"),
                    Duration::from_secs(2),
                    "a disabled on the page",
                );
                let shot =
                    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page-live.png");
                let png = br.screenshot();
                assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
                assert!(png.len() > 20_000, "screenshot of {} bytes", png.len());
                std::fs::write(&shot, png).unwrap();
                println!("screenshot: {}", shot.display());
            }
        }),
    )
    .await;
    drop(browser);
    traffic.abort();
}

/// Sends a bare HTTP/1.1 POST and returns the whole answer.
async fn raw_post(to: SocketAddr, path: &str, headers: &[&str], body: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(to).await.unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    tokio::io::AsyncWriteExt::write_all(&mut s, request.as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut s, &mut answer)
        .await
        .unwrap();
    answer
}

/// An HTTP service's p50 and p99 response times are charted on the page, for the
/// service and for each backend: a backend that takes 40 ms to answer one request in
/// ten shows a p99 of tens of ms and a p50 of a few, and a TCP service has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_charts_http_response_times() {
    let Some(binary) = chromium() else {
        eprintln!("SKIPPED: chromium is not installed (scripts/test installs it as root)");
        return;
    };
    let slow_every = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let backend = hyper_backend(None, move |_req, _peer| {
        let n = slow_every.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            if n % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            text("ok")
        }
    })
    .await;
    let tcp = name_server("t", false).await;
    let d = start(&format!(
        "[global]\nadmin_listen = \"127.0.0.1:0\"\n\n\
[[pool]]\nname = \"api\"\nbackends = {}\n\n\
[[pool]]\nname = \"plain\"\nbackends = {}\n\n\
[[service]]\nname = \"api\"\nmode = \"http\"\nlisten = [\"127.0.0.1:0\"]\npool = \"api\"\n\n\
[[service]]\nname = \"plain\"\nlisten = [\"127.0.0.1:0\"]\npool = \"plain\"\n",
        backends(&[backend]),
        backends(&[tcp])
    ))
    .await;
    let admin = d.admin_addr().unwrap();
    let api = addr_of(&d, "api");
    // 50 requests a second on one keep-alive connection, for at most 40 s.
    let traffic = tokio::spawn(async move {
        let s = tokio::net::TcpStream::connect(api).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
                .await
                .unwrap();
        tokio::spawn(conn);
        for _ in 0..2000 {
            let req = hyper::Request::get("/")
                .header("host", "api")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let answer = send.send_request(req).await.unwrap();
            assert_eq!(answer.status(), 200);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{admin}/");
    let (p50, p99, backend_label, plain) = tokio::task::spawn_blocking({
        let profile = profile.path().to_path_buf();
        move || {
            let mut br = Browser::launch(binary, &profile, &[]);
            br.open(&url);
            // A point per 5 s: the first step's quantiles come with the second point.
            br.wait_for(
                "document.querySelectorAll('tr[data-service=\"api\"] td.latency svg polyline.slow').length >= 1",
                Duration::from_secs(20),
                "the api service's response-time chart drawn",
            );
            let reading = br.eval(
                "document.querySelector('tr[data-service=\"api\"] td.latency .reading').textContent",
            );
            let backend_label = br.eval(&format!(
                "document.querySelector('tr.backend[data-address=\"{backend}\"] td.latency svg').getAttribute('aria-label')"
            ));
            let plain = br.eval(
                "document.querySelector('tr[data-service=\"plain\"] td:last-child').textContent",
            );
            let shot =
                std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page-http.png");
            std::fs::write(&shot, br.screenshot()).unwrap();
            println!("screenshot: {}", shot.display());
            let reading = reading.as_str().unwrap().to_string();
            let (p50, p99) = reading.split_once(" / ").expect(&reading);
            let ms = |s: &str| s.trim_end_matches(" ms").parse::<f64>().expect(s);
            (ms(p50), ms(p99), backend_label.as_str().unwrap().to_string(), plain)
        }
    })
    .await
    .unwrap();
    traffic.abort();
    println!("api: p50 {p50} ms, p99 {p99} ms; backend: {backend_label}");
    assert!(
        p50 < 20.0,
        "p50 {p50} ms: nine requests in ten answer at once"
    );
    assert!(p99 >= 25.0, "p99 {p99} ms: one request in ten takes 40 ms");
    assert!(
        backend_label.starts_with(&format!("{backend} response time"))
            && backend_label.contains("p50 now")
            && backend_label.contains("p99 now"),
        "{backend_label}"
    );
    assert_eq!(
        plain.as_str(),
        Some("\u{2013}"),
        "a TCP service has no response times"
    );
}
