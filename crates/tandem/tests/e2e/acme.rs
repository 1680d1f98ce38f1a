//! ACME with Pebble (Debian `pebble`) as the CA and `pebble-challtestsrv` as its DNS,
//! answering every name with tandem's address. Pebble validates against tandem's real
//! port-80 and port-443 services; certificates live 24 to 30 s, so renewal (at two
//! thirds) happens within the test.
//!
//! `single_node_*` runs on loopback: a name through HTTP-01 and one through TLS-ALPN-01,
//! both renewed while curl requests every 200 ms without a failure. `pair_*` is a
//! namespace lab: two nodes with VRRP and sync; the master is SIGKILLed during a
//! renewal and the backup finishes it with the synced account; the CA validates one
//! name at the backup's own address, which answers from the token the master synced;
//! the backup served the same certificate before.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Running, lab::Lab, which};

/// What the tests need installed; `None` (with a SKIPPED line) when something is missing.
fn tools(test: &str) -> Option<()> {
    for program in ["pebble", "pebble-challtestsrv", "openssl", "curl"] {
        if which(program).is_none() {
            eprintln!(
                "SKIPPED: {test} needs {program} (Debian packages pebble, openssl, curl; scripts/test installs them)"
            );
            return None;
        }
    }
    Some(())
}

/// `program args` run in namespace `ns` (or here); its stdout, asserting success.
/// Signs the request `csr` with the CA `ca`/`ca_key` into `out` for two days, with the
/// extensions in the file `ext`.
fn sign(csr: &str, ca: &str, ca_key: &str, out: &str, ext: &str) {
    run_in(
        None,
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            out,
            "-days",
            "2",
            "-extfile",
            ext,
        ],
    );
}

fn run_in(ns: Option<&str>, program: &str, args: &[&str]) -> String {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    };
    let out = cmd.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A test CA and a certificate from it for Pebble's own HTTPS (the ACME API) at `ip`:
/// returns the CA file tandem trusts for the directory.
fn api_certificate(dir: &Path, ip: &str) -> PathBuf {
    let p = |f: &str| dir.join(f).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509"];
    args.extend_from_slice(&ec);
    let (ca_key, ca) = (p("api-ca.key"), p("api-ca.pem"));
    args.extend_from_slice(&[
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "2",
        "-subj",
        "/CN=tandem test API CA",
    ]);
    run_in(None, "openssl", &args);
    let (key, csr, cert) = (p("pebble.key"), p("pebble.csr"), p("pebble.pem"));
    let mut args = vec!["req"];
    args.extend_from_slice(&ec);
    args.extend_from_slice(&["-keyout", &key, "-out", &csr, "-subj", "/CN=pebble"]);
    run_in(None, "openssl", &args);
    let ext = p("san.ext");
    std::fs::write(&ext, format!("subjectAltName=IP:{ip}\n")).unwrap();
    sign(&csr, &ca, &ca_key, &cert, &ext);
    PathBuf::from(ca)
}

/// Pebble and its DNS, running until dropped.
struct Pebble {
    _dns: Running,
    _ca: Running,
    /// The directory URL.
    directory: String,
    /// The CA file of the API's certificate.
    api_ca: PathBuf,
    /// Pebble's management address (roots of the issued chains).
    management: SocketAddr,
    /// The DNS server's management address (records of their own for some names).
    dns_management: SocketAddr,
    ns: Option<String>,
}

impl Pebble {
    /// Pebble on `ip` (in namespace `ns`, or on loopback), validating against
    /// `http_port` and `tls_port` of `answer` (every name resolves to it), issuing
    /// certificates that live `lifetime_secs`.
    fn start(
        dir: &Path,
        ns: Option<&str>,
        ip: &str,
        answer: &str,
        http_port: u16,
        tls_port: u16,
        lifetime_secs: u64,
    ) -> Pebble {
        let api_ca = api_certificate(dir, ip);
        let port = |base: u16| {
            if ns.is_some() {
                base
            } else {
                crate::support::free_port()
            }
        };
        let (api, management, dns, dns_management) =
            (port(14000), port(15000), port(8053), port(8055));
        let config = dir.join("pebble.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"pebble": {{"listenAddress": "{ip}:{api}", "managementListenAddress": "{ip}:{management}",
"certificate": "{}", "privateKey": "{}", "httpPort": {http_port}, "tlsPort": {tls_port},
"ocspResponderURL": "", "externalAccountBindingRequired": false, "certificateValidityPeriod": {lifetime_secs}}}}}"#,
                dir.join("pebble.pem").display(),
                dir.join("pebble.key").display()
            ),
        )
        .unwrap();
        let spawn = |program: &str, args: &[&str]| match ns {
            Some(ns) => {
                let mut all = vec!["netns", "exec", ns, program];
                all.extend_from_slice(args);
                Running::spawn_program("ip", &all)
            }
            None => Running::spawn_program(program, args),
        };
        let dns_at = format!("{ip}:{dns}");
        let mut dns_server = spawn(
            "pebble-challtestsrv",
            &[
                "-dns01",
                &dns_at,
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("{ip}:{dns_management}"),
                "-defaultIPv4",
                answer,
                "-defaultIPv6",
                "",
            ],
        );
        dns_server.wait_for("Starting challenge servers");
        let config = config.display().to_string();
        // No random validation sleeps, no nonces refused on purpose, and no reuse of
        // earlier authorizations: every renewal is validated again.
        let mut ca = spawn(
            "env",
            &[
                "PEBBLE_VA_NOSLEEP=1",
                "PEBBLE_WFE_NONCEREJECT=0",
                "PEBBLE_AUTHZREUSE=0",
                "pebble",
                "-config",
                &config,
                "-dnsserver",
                &dns_at,
            ],
        );
        ca.wait_for("ACME directory available");
        Pebble {
            _dns: dns_server,
            _ca: ca,
            directory: format!("https://{ip}:{api}/dir"),
            api_ca,
            management: format!("{ip}:{management}").parse().unwrap(),
            dns_management: format!("{ip}:{dns_management}").parse().unwrap(),
            ns: ns.map(str::to_string),
        }
    }

    /// Makes the DNS answer `host` with `address` (instead of the default answer): the
    /// CA then validates that name's challenges there.
    fn resolve(&self, host: &str, address: &str) {
        run_in(
            self.ns.as_deref(),
            "curl",
            &[
                "-sSf",
                "-X",
                "POST",
                "-d",
                &format!(r#"{{"host":"{host}","addresses":["{address}"]}}"#),
                &format!("http://{}/add-a", self.dns_management),
            ],
        );
    }

    /// Pebble's root of the issued chains, written to `dir/pebble-root.pem`.
    fn root(&self, dir: &Path) -> PathBuf {
        let pem = run_in(
            self.ns.as_deref(),
            "curl",
            &[
                "-sSf",
                "--cacert",
                &self.api_ca.display().to_string(),
                &format!("https://{}/roots/0", self.management),
            ],
        );
        let path = dir.join("pebble-root.pem");
        std::fs::write(&path, pem).unwrap();
        path
    }
}

/// The SHA-256 fingerprint of the certificate `addr` serves for `name`, as
/// `openssl s_client` sees it (run in `ns`).
fn fingerprint(ns: Option<&str>, addr: SocketAddr, name: &str) -> String {
    let script = format!(
        "openssl s_client -connect {addr} -servername {name} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
    );
    let out = run_in(ns, "sh", &["-c", &script]);
    out.trim()
        .strip_prefix("sha256 Fingerprint=")
        .or_else(|| out.trim().strip_prefix("SHA256 Fingerprint="))
        .unwrap_or_else(|| panic!("no fingerprint from {addr} for {name}: {out:?}"))
        .to_string()
}

/// A curl of `https://name:port/` against `addr`, verifying with `root`: the HTTP
/// status and the response's Strict-Transport-Security, or curl's error.
fn curl(
    ns: Option<&str>,
    addr: SocketAddr,
    name: &str,
    root: &Path,
) -> Result<(u16, Option<String>), String> {
    let resolve = format!("{name}:{}:{}", addr.port(), addr.ip());
    let url = format!("https://{name}:{}/", addr.port());
    let root = root.display().to_string();
    let mut args = vec![];
    if let Some(ns) = ns {
        args.extend(["netns", "exec", ns, "curl"]);
    }
    args.extend([
        "-sS",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "--max-time",
        "3",
        "--cacert",
        &root,
        "--resolve",
        &resolve,
        &url,
    ]);
    let program = if ns.is_some() { "ip" } else { "curl" };
    let out = Command::new(program).args(&args).output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let hsts = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("strict-transport-security")
            .then(|| value.trim().to_string())
    });
    Ok((status, hsts))
}

/// An HTTP backend on loopback (on a runtime of its own, so the test's blocking
/// clients do not stall it).
fn backend() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            tx.send(crate::support::rust_backend().await).unwrap();
            std::future::pending::<()>().await
        })
    });
    rx.recv().unwrap()
}

#[test]
fn single_node_issues_by_http01_and_tls_alpn01_and_renews_without_a_failed_request() {
    if tools("acme single node").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (plain, alpn, https) = (
        crate::support::free_port(),
        crate::support::free_port(),
        crate::support::free_port(),
    );
    let lifetime = 24;
    let pebble = Pebble::start(
        dir.path(),
        None,
        "127.0.0.1",
        "127.0.0.1",
        plain,
        alpn,
        lifetime,
    );
    let be = backend();
    let admin = crate::support::free_port();
    let d = dir.path().display();
    let acme = |domains: &str, challenge: &str| {
        format!(
            "[service.tls.acme]\ndirectory = \"{}\"\ncontact = [\"mailto:ops@acme.test\"]\ndomains = [{domains}]\nchallenge = \"{challenge}\"\nca_file = \"{}\"\n",
            pebble.directory,
            pebble.api_ca.display()
        )
    };
    let config = format!(
        "[global]\nname = \"lb1\"\nstate_dir = \"{d}/state\"\ncontrol_socket = \"{d}/tandem.sock\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\n\
[[pool]]\nname = \"app\"\nbackends = [{{ address = \"{be}\" }}]\n\n\
[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:{plain}\"]\npool = \"app\"\nmode = \"http\"\n\n\
[[service]]\nname = \"www\"\nlisten = [\"127.0.0.1:{https}\"]\npool = \"app\"\nmode = \"http\"\n[service.http]\nhsts = \"max-age=600; includeSubDomains\"\n{}\n\
[[service]]\nname = \"wiki\"\nlisten = [\"127.0.0.1:{alpn}\"]\npool = \"app\"\nmode = \"http\"\n{}",
        acme("\"www.acme.test\", \"web.acme.test\"", "http-01"),
        acme("\"wiki.acme.test\"", "tls-alpn-01"),
    );
    let path = crate::support::write_config(dir.path(), &config);
    let started = Instant::now();
    let mut node = Running::spawn(&["run", "--config", &path]);
    node.wait_for("tandem running");
    let www = node.wait_for("certificate issued and served names=[\"www.acme.test\"");
    let wiki = node.wait_for("certificate issued and served names=[\"wiki.acme.test\"");
    println!("{www}\n{wiki}");
    println!(
        "both certificates issued {} ms after start",
        started.elapsed().as_millis()
    );
    let root = pebble.root(dir.path());
    let (www_addr, wiki_addr): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{https}").parse().unwrap(),
        format!("127.0.0.1:{alpn}").parse().unwrap(),
    );
    let first = (
        fingerprint(None, www_addr, "www.acme.test"),
        fingerprint(None, wiki_addr, "wiki.acme.test"),
    );
    // The second name of the first certificate is served too.
    assert_eq!(fingerprint(None, www_addr, "web.acme.test"), first.0);
    // The expiry of every served name as a metric.
    let metrics = run_in(
        None,
        "curl",
        &["-sSf", &format!("http://127.0.0.1:{admin}/metrics")],
    );
    for (service, name) in [
        ("www", "www.acme.test"),
        ("www", "web.acme.test"),
        ("wiki", "wiki.acme.test"),
    ] {
        let label =
            format!("tandem_certificate_expiry_seconds{{service=\"{service}\",name=\"{name}\"}} ");
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&label))
            .unwrap_or_else(|| panic!("no {label} in\n{metrics}"));
        println!("{line}");
        let left: i64 = line[label.len()..].trim().parse().unwrap();
        assert!(0 < left && left <= lifetime as i64, "{line}");
    }
    // Files: keys 0600.
    use std::os::unix::fs::PermissionsExt;
    for f in ["www.acme.test.key", "wiki.acme.test.key"] {
        let mode = std::fs::metadata(dir.path().join("state/acme").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }

    // A client every 200 ms on both names until both are renewed (bounded by the
    // lifetime and a half), verifying against Pebble's root.
    let loop_started = Instant::now();
    let (mut ok, mut failed) = (0u32, Vec::new());
    let mut renewed = (false, false);
    let mut hsts_seen = None;
    while !(renewed.0 && renewed.1)
        && loop_started.elapsed() < Duration::from_secs(lifetime * 3 / 2)
    {
        for (addr, name) in [(www_addr, "www.acme.test"), (wiki_addr, "wiki.acme.test")] {
            match curl(None, addr, name, &root) {
                Ok((200, hsts)) => {
                    ok += 1;
                    if name == "www.acme.test" {
                        hsts_seen = hsts;
                    } else {
                        assert_eq!(hsts, None, "hsts only where configured");
                    }
                }
                other => failed.push(format!("{name}: {other:?}")),
            }
        }
        renewed = (
            fingerprint(None, www_addr, "www.acme.test") != first.0,
            fingerprint(None, wiki_addr, "wiki.acme.test") != first.1,
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let lines = node.drain_lines();
    let renewals: Vec<&str> = lines
        .lines()
        .filter(|l| l.contains("reason=Renewal"))
        .collect();
    println!("{}", renewals.join("\n"));
    println!(
        "renewal of both seen {} ms after the first issuance (lifetime {lifetime} s, renewal due at 2/3); requests: {ok} answered, {} failed",
        loop_started.elapsed().as_millis(),
        failed.len()
    );
    assert!(
        renewed.0 && renewed.1,
        "not renewed within 1.5 lifetimes:\n{lines}"
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(ok >= 10, "only {ok} requests");
    assert_eq!(hsts_seen.as_deref(), Some("max-age=600; includeSubDomains"));
    // Validation reached tandem itself: HTTP-01 on the port-80 service, before routing.
    assert!(
        lines.lines().any(|l| l.contains("service=web")
            && l.contains("path=/.well-known/acme-challenge/")
            && l.contains("status=200")),
        "no HTTP-01 validation answered by the port-80 service"
    );
}

const VIP: &str = "10.99.0.100";

/// The configuration of pair node `name` (own address `me`, peer `peer`): port 80 and
/// 443 on the virtual address and on its own address too (to see what the backup
/// serves, and to answer the challenges the CA sends to it), VRRP and sync.
fn pair_config(
    lab: &Lab,
    pebble: &Pebble,
    name: &str,
    me: &str,
    peer: &str,
    priority: u8,
) -> String {
    let dir = lab.dir.path().display();
    let key = lab.dir.path().join("sync.key");
    std::fs::write(&key, "a shared key for the lab, 32 b!!").unwrap();
    let text = format!(
        "[global]\nname = \"{name}\"\ncontrol_socket = \"{dir}/{name}.sock\"\nstate_dir = \"{dir}/{name}-state\"\ndrain_timeout = \"1s\"\n\n\
[[pool]]\nname = \"web\"\nbackends = [{{ address = \"10.99.0.11:80\" }}]\n\n\
[[service]]\nname = \"web\"\nlisten = [\"{VIP}:80\", \"{me}:80\"]\npool = \"web\"\nmode = \"http\"\n\n\
[[service]]\nname = \"www\"\nlisten = [\"{VIP}:443\", \"{me}:443\"]\npool = \"web\"\nmode = \"http\"\n\
[service.tls.acme]\ndirectory = \"{}\"\ncontact = [\"mailto:ops@pair.test\"]\ndomains = [\"www.pair.test\", \"backup.pair.test\"]\nca_file = \"{}\"\n\n\
[ha]\ninterface = \"eth0\"\nvrid = 57\npriority = {priority}\nadvert_interval = \"100ms\"\nvirtual_ips = [\"{VIP}/24\"]\n\n\
[sync]\nlisten = \"{me}:7946\"\npeers = [\"{peer}:7946\"]\nkey_file = \"{}\"\n",
        pebble.directory,
        pebble.api_ca.display(),
        key.display()
    );
    lab.write_config(name, &text)
}

#[test]
fn pair_master_killed_during_a_renewal_the_backup_finishes_it_with_the_same_account() {
    if tools("acme pair lab").is_none() {
        return;
    }
    let Some(mut lab) = Lab::new("ac") else {
        return;
    };
    lab.host("lb1", "10.99.0.1/24");
    lab.host("lb2", "10.99.0.2/24");
    lab.host("be1", "10.99.0.11/24");
    lab.host("client", "10.99.0.50/24");
    lab.http_backend("be1", "10.99.0.11:80".parse().unwrap(), "be1\n");
    let client = lab.ns("client");
    let lifetime = 30;
    let pebble = Pebble::start(
        lab.dir.path(),
        Some(&client),
        "10.99.0.50",
        VIP,
        80,
        443,
        lifetime,
    );
    // The CA validates backup.pair.test at the backup's own address (as after a
    // failover, or through ECMP): only the token the master synced can answer it.
    pebble.resolve("backup.pair.test", "10.99.0.2");
    let c1 = pair_config(&lab, &pebble, "lb1", "10.99.0.1", "10.99.0.2", 150);
    let c2 = pair_config(&lab, &pebble, "lb2", "10.99.0.2", "10.99.0.1", 100);
    let mut lb1 = lab.run_tandem("lb1", &c1);
    let mut lb2 = lab.run_tandem("lb2", &c2);
    lab.wait("lb1 master", Duration::from_secs(5), || {
        lab.has_address("lb1", VIP)
    });
    let issued = lb1.wait_for("certificate issued and served");
    assert!(issued.contains("backup.pair.test"), "{issued}");
    lb2.wait_for("certificate from the peer installed");
    // The backup answered the CA's request for the master's order: Pebble compared its
    // body with the key authorization of the order (else no certificate).
    let answered = lb2.wait_for("path=/.well-known/acme-challenge/");
    println!("the backup answered the CA: {answered}");
    assert!(
        answered.contains("service=web") && answered.contains("status=200"),
        "{answered}"
    );
    assert!(
        !lb2.drain_lines().contains("ordering a certificate"),
        "the backup ordered"
    );
    let (vip443, lb2_443): (SocketAddr, SocketAddr) = (
        format!("{VIP}:443").parse().unwrap(),
        "10.99.0.2:443".parse().unwrap(),
    );
    let first = fingerprint(Some(&client), vip443, "www.pair.test");
    let backup = fingerprint(Some(&client), lb2_443, "www.pair.test");
    println!("issued by the master: {first}\nserved by the backup: {backup}");
    assert_eq!(first, backup, "the backup serves the master's certificate");
    let root = pebble.root(lab.dir.path());
    assert_eq!(
        curl(Some(&client), vip443, "www.pair.test", &root)
            .unwrap()
            .0,
        200
    );

    // The renewal starts at two thirds of the lifetime: the master dies in it.
    let renewal = lb1.wait_for_nth("reason=Renewal", 1);
    let killed = Instant::now();
    lb1.signal(rustix::process::Signal::KILL);
    println!("{renewal}");
    let lb1_lines = lb1.drain_lines();
    assert_eq!(
        lb1_lines.matches("certificate issued and served").count(),
        1,
        "the master finished its renewal before the kill:\n{lb1_lines}"
    );
    let taken = lb2.wait_for("reason=Renewal");
    let done = lb2.wait_for("certificate issued and served");
    let finished = killed.elapsed();
    println!("{taken}\n{done}");
    println!(
        "backup finished the renewal {} ms after the master's SIGKILL",
        finished.as_millis()
    );
    let renewed = fingerprint(Some(&client), vip443, "www.pair.test");
    assert_ne!(renewed, first, "the certificate was renewed");
    assert_eq!(
        curl(Some(&client), vip443, "www.pair.test", &root)
            .unwrap()
            .0,
        200
    );
    // With the account the master made: the backup made none of its own.
    let accounts = |node: &str| -> Vec<Vec<u8>> {
        std::fs::read_dir(lab.dir.path().join(format!("{node}-state/acme")))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("account-"))
            .map(|e| std::fs::read(e.path()).unwrap())
            .collect()
    };
    let (a1, a2) = (accounts("lb1"), accounts("lb2"));
    assert_eq!(a1.len(), 1);
    assert_eq!(a1, a2, "the backup uses the synced account");

    // The old master returns, gets the renewed certificate in its bulk transfer, takes
    // the address back, and a client sees the same certificate as from the backup.
    let mut lb1 = lab.run_tandem("lb1", &c1);
    lb1.wait_for("certificate from the peer installed");
    lab.wait("lb1 master again", Duration::from_secs(10), || {
        lab.has_address("lb1", VIP) && !lab.has_address("lb2", VIP)
    });
    let after = fingerprint(Some(&client), vip443, "www.pair.test");
    println!("after failing back to lb1: {after}");
    assert_eq!(after, renewed, "the same certificate after the failover");
    assert_eq!(
        curl(Some(&client), vip443, "www.pair.test", &root)
            .unwrap()
            .0,
        200
    );
    let lb1_lines = lb1.drain_lines();
    assert!(
        !lb1_lines.contains("ordering a certificate"),
        "the returning node ordered again:\n{lb1_lines}"
    );
}

/// OCSP stapling against `openssl ocsp` as the responder, in a namespace: a test CA
/// (openssl) issues a certificate whose AIA names the responder; tandem fetches a
/// response and `openssl s_client -status` shows it stapled; a second certificate's
/// responder signs with a key the CA never certified, and its response is not stapled
/// (logged). (That a stale response is not stapled is tandem-net's tls test, with a
/// real handshake.)
#[test]
fn ocsp_response_from_openssl_ocsp_is_stapled() {
    if tools("ocsp lab").is_none() {
        return;
    }
    let Some(mut lab) = Lab::new("oc") else {
        return;
    };
    let ns = lab.host("h", "10.99.0.1/24");
    let dir = lab.dir.path().to_path_buf();
    let p = |f: &str| dir.join(f).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let (ca_key, ca) = (p("ocsp-ca.key"), p("ocsp-ca.pem"));
    let mut args = vec!["req", "-x509"];
    args.extend_from_slice(&ec);
    args.extend_from_slice(&[
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "2",
        "-subj",
        "/CN=tandem test OCSP CA",
    ]);
    run_in(None, "openssl", &args);
    // A leaf for `name` whose AIA names the responder on `port`, and its chain file.
    let issue = |name: &str, port: u16| {
        let (key, csr, leaf) = (
            p(&format!("{name}.key")),
            p(&format!("{name}.csr")),
            p(&format!("{name}.pem")),
        );
        let mut args = vec!["req"];
        args.extend_from_slice(&ec);
        let subject = format!("/CN={name}");
        args.extend_from_slice(&["-keyout", &key, "-out", &csr, "-subj", &subject]);
        run_in(None, "openssl", &args);
        let ext = p(&format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!(
                "subjectAltName=DNS:{name}\nauthorityInfoAccess=OCSP;URI:http://10.99.0.1:{port}\n"
            ),
        )
        .unwrap();
        sign(&csr, &ca, &ca_key, &leaf, &ext);
        let chain = p(&format!("{name}-chain.pem"));
        std::fs::write(
            &chain,
            std::fs::read_to_string(&leaf).unwrap() + &std::fs::read_to_string(&ca).unwrap(),
        )
        .unwrap();
        (leaf, key, chain)
    };
    let serial_of = |leaf: &str| {
        let serial = run_in(None, "openssl", &["x509", "-in", leaf, "-noout", "-serial"]);
        serial.trim().trim_start_matches("serial=").to_string()
    };
    let (leaf, key, chain) = issue("ocsp.test", 8888);
    let serial = serial_of(&leaf);
    // A second certificate, whose responder signs with a key of its own (same name as
    // the CA, another key): its responses are not stapled.
    let (forged_leaf, forged_key, forged_chain) = issue("forged.test", 8889);
    let forged_serial = serial_of(&forged_leaf);
    let (rogue_key, rogue) = (p("rogue.key"), p("rogue.pem"));
    let mut args = vec!["req", "-x509"];
    args.extend_from_slice(&ec);
    args.extend_from_slice(&[
        "-keyout",
        &rogue_key,
        "-out",
        &rogue,
        "-days",
        "2",
        "-subj",
        "/CN=tandem test OCSP CA",
    ]);
    run_in(None, "openssl", &args);
    let index = p("index.txt");
    std::fs::write(
        &index,
        format!(
            "V\t301231000000Z\t\t{serial}\tunknown\t/CN=ocsp.test\n\
V\t301231000000Z\t\t{forged_serial}\tunknown\t/CN=forged.test\n"
        ),
    )
    .unwrap();
    let mut rogue_responder = lab.spawn(
        "h",
        "openssl",
        &[
            "ocsp", "-index", &index, "-port", "8889", "-rsigner", &rogue, "-rkey", &rogue_key,
            "-CA", &ca, "-nmin", "1",
        ],
    );
    rogue_responder.wait_for("ACCEPT");
    // nextUpdate a minute after thisUpdate: tandem fetches again after 30 s.
    let mut responder = lab.spawn(
        "h",
        "openssl",
        &[
            "ocsp", "-index", &index, "-port", "8888", "-rsigner", &ca, "-rkey", &ca_key, "-CA",
            &ca, "-nmin", "1",
        ],
    );
    responder.wait_for("ACCEPT");
    let config = format!(
        "[global]\nname = \"o1\"\ncontrol_socket = \"{}\"\n\n[[pool]]\nname = \"app\"\nbackends = [{{ address = \"10.99.0.1:9\" }}]\n\n\
[[service]]\nname = \"www\"\nlisten = [\"10.99.0.1:443\"]\npool = \"app\"\nmode = \"http\"\ntls = {{ cert = \"{chain}\", key = \"{key}\" }}\n\n\
[[service]]\nname = \"forged\"\nlisten = [\"10.99.0.1:8443\"]\npool = \"app\"\nmode = \"http\"\ntls = {{ cert = \"{forged_chain}\", key = \"{forged_key}\" }}\n",
        p("o1.sock")
    );
    let mut node = lab.run_tandem("h", &lab.write_config("o1", &config));
    let fetched = node.wait_for("ocsp: response fetched");
    println!("{fetched}");
    let refused = node.wait_for("ocsp: no response to staple");
    println!("{refused}");
    assert!(
        refused.contains(":8889") && refused.contains("signature does not verify"),
        "{refused}"
    );
    let status = |port: u16, name: &str| {
        run_in(
            Some(&ns),
            "sh",
            &[
                "-c",
                &format!(
                    "openssl s_client -connect 10.99.0.1:{port} -servername {name} -status </dev/null 2>/dev/null"
                ),
            ],
        )
    };
    let forged = status(8443, "forged.test");
    assert!(
        forged.contains("OCSP response: no response sent"),
        "{forged}"
    );
    let shown = status(443, "ocsp.test");
    let stapled: Vec<&str> = shown
        .lines()
        .skip_while(|l| !l.starts_with("OCSP response"))
        .take(20)
        .collect();
    println!("{}", stapled.join("\n"));
    assert!(
        shown.contains("OCSP Response Status: successful"),
        "{shown}"
    );
    assert!(shown.contains("Cert Status: good"), "{shown}");
    assert!(
        shown.contains(&format!("Serial Number: {serial}")),
        "{shown}"
    );
    assert!(shown.contains("Next Update:"), "{shown}");
}
