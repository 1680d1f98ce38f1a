//! The Debian package as an operator installs it: `scripts/package` builds it, dpkg
//! installs it into a clean root of the test's own (`dpkg --root`, maintainer scripts
//! run outside a chroot with DPKG_ROOT set), the system user exists, `tandem check`
//! accepts the default configuration, the man pages render without a warning, the
//! completions parse, and `dpkg -r` leaves nothing but the configuration. Needs root
//! and dpkg-deb (scripts/test runs as root in CI); SKIPPED otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn has(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A root with what dpkg and useradd need to find: an empty package database and
/// the files of a system with only root.
fn clean_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "var/log",
        "etc",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (file, text) in [
        ("var/lib/dpkg/status", ""),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        ("etc/shadow", "root:*:19000:0:99999:7:::\n"),
        ("etc/gshadow", "root:*::\n"),
    ] {
        std::fs::write(root.join(file), text).unwrap();
    }
    root
}

/// Files under `root` outside dpkg's own database and the account files.
fn files_left(root: &Path) -> Vec<String> {
    let (_, out, _) = run(Command::new("find").arg(root).args(["-type", "f"]));
    out.lines()
        .map(|l| l.strip_prefix(root.to_str().unwrap()).unwrap().to_string())
        .filter(|l| !l.starts_with("/var/"))
        .filter(|l| {
            !["passwd", "group", "shadow", "gshadow"]
                .iter()
                .any(|f| l.starts_with(&format!("/etc/{f}")))
        })
        .collect()
}

#[test]
fn the_package_installs_checks_renders_and_removes_cleanly() {
    if !rustix::process::geteuid().is_root() || !has("dpkg-deb") || !has("groff") {
        eprintln!(
            "SKIPPED: the package test needs root, dpkg-deb and groff (scripts/test runs as root in CI)"
        );
        return;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    // The build inside sees the environment a shell would: the variables cargo and
    // nextest set for this test (CARGO_PKG_*, ...) would make cargo rebuild release.
    let mut package = Command::new(workspace.join("scripts/package"));
    package.arg(dir.path()).env_clear();
    for keep in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
    ] {
        if let Some(value) = std::env::var_os(keep) {
            package.env(keep, value);
        }
    }
    let (ok, deb, err) = run(&mut package);
    assert!(ok, "scripts/package failed:\n{err}");
    let deb = deb.trim().to_string();
    let (_, listing, _) = run(Command::new("dpkg-deb").args(["--contents", &deb]));
    for path in [
        "./usr/bin/tandem",
        "./usr/lib/systemd/system/tandem.service",
        "./etc/tandem/tandem.toml",
        "./usr/share/man/man8/tandem.8.gz",
        "./usr/share/man/man5/tandem.toml.5.gz",
        "./usr/share/bash-completion/completions/tandem",
        "./usr/share/doc/tandem/examples/site.toml",
        "./usr/share/tandem/grafana/tandem.json",
        "./usr/share/tandem/prometheus/tandem-alerts.yml",
    ] {
        assert!(
            listing.contains(path),
            "{path} is not in the package:\n{listing}"
        );
    }
    assert!(
        !listing.contains("tandem-gen"),
        "the generator is a build tool, not part of the package"
    );

    let root = clean_root(dir.path());
    let dpkg = |args: &[&str]| {
        run(Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .arg("--force-script-chrootless")
            .args(args))
    };
    // The clean root has no libc6 or passwd packages: the host's serve.
    let (ok, _, err) = dpkg(&["--force-depends", "-i", &deb]);
    assert!(ok, "dpkg -i failed:\n{err}");
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(
        passwd.contains("tandem:x:") && passwd.contains(":/nonexistent:/usr/sbin/nologin"),
        "{passwd}"
    );
    let (ok, out, err) = run(Command::new(root.join("usr/bin/tandem"))
        .args(["check", "--config"])
        .arg(root.join("etc/tandem/tandem.toml")));
    assert!(
        ok && out.trim() == "ok",
        "tandem check of the default config: {out}{err}"
    );

    for (page, wants) in [
        ("usr/share/man/man8/tandem.8.gz", "tandem-check"),
        ("usr/share/man/man8/tandem-run.8.gz", "SIGTERM"),
        ("usr/share/man/man5/tandem.toml.5.gz", "send_proxy"),
    ] {
        let (ok, out, err) = run(Command::new("sh").arg("-c").arg(format!(
            "zcat {} | groff -t -man -Tutf8 -ww -P -cbou",
            root.join(page).display()
        )));
        assert!(ok && err.is_empty(), "{page} renders with warnings:\n{err}");
        assert!(out.contains(wants), "{page} lacks {wants:?}:\n{out}");
    }
    let (ok, _, err) = run(Command::new("bash")
        .arg("-n")
        .arg(root.join("usr/share/bash-completion/completions/tandem")));
    assert!(ok, "the bash completion does not parse: {err}");

    let (ok, _, err) = dpkg(&["-r", "tandem"]);
    assert!(ok, "dpkg -r failed:\n{err}");
    assert_eq!(
        files_left(&root),
        vec!["/etc/tandem/tandem.toml".to_string()]
    );
    let (ok, _, err) = dpkg(&["--purge", "tandem"]);
    assert!(ok, "dpkg --purge failed:\n{err}");
    assert_eq!(files_left(&root), Vec::<String>::new());
}
