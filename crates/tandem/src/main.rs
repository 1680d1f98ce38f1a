//! The `tandem` command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use std::time::Duration;
use tandem::cli::{Cli, Command, CtlCommand};
use tandem::daemon::{Daemon, Inherited, Options, Successor};

use tandem::demo::{Demo, Flap};
use tandem_config::{Config, LogFormat};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

/// Exit code of a usage or configuration error.
const EXIT_CONFIG: u8 = 2;
/// Exit code of a runtime failure.
const EXIT_RUNTIME: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run {
            config: path,
            allow_root,
        } => {
            // Started by `tandem upgrade`: take the predecessor's sockets first, so that
            // whatever goes wrong from here can be told to it (it serves on meanwhile).
            let successor = match std::env::var_os(tandem::upgrade::ENV) {
                Some(from) => match Successor::connect(Path::new(&from)) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        eprintln!(
                            "tandem: taking over from {}: {e}",
                            Path::new(&from).display()
                        );
                        return ExitCode::from(EXIT_RUNTIME);
                    }
                },
                None => None,
            };
            let (successor, inherited) = successor.unzip();
            let config = match load_or_say(&path) {
                Ok(c) => c,
                Err(why) => {
                    eprintln!("{why}");
                    if let Some(s) = successor {
                        s.failed(&why);
                    }
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            tandem::logging::init(config.global.log_format);
            for w in &config.warnings {
                tracing::warn!("{}", w.render(&path.display().to_string(), "warning: "));
            }
            // Before any thread exists: credentials are per thread. A successor started
            // by a tandem that already runs as global.user has nothing to drop.
            let already_dropped = successor.is_some() && !rustix::process::geteuid().is_root();
            if !already_dropped && let Err(e) = tandem::privileges::drop_root(&config, allow_root) {
                error!("{e}");
                if let Some(s) = successor {
                    s.failed(&e.to_string());
                }
                return ExitCode::from(EXIT_CONFIG);
            }
            // The control plane's runtime: connections are served on the worker
            // threads the daemon starts (with threads = 1, here too).
            runtime_with(1).block_on(run(config, path, successor.zip(inherited)))
        }
        Command::Ctl {
            socket,
            json,
            command,
        } => runtime().block_on(ctl(&socket, json, command)),
        Command::Upgrade {
            socket,
            binary,
            json,
        } => runtime().block_on(upgrade(&socket, binary, json)),
        Command::Demo {
            listen,
            flap_after,
            flap_for,
        } => {
            tandem::logging::init(LogFormat::Text);
            let flap = Flap {
                after: Duration::from_secs(flap_after),
                lasting: Duration::from_secs(flap_for),
                ..Flap::default()
            };
            runtime().block_on(demo(listen, flap))
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    runtime_with(0)
}

/// A runtime with `threads` workers (0: one per CPU). One thread runs everything on
/// the main thread, with no cross-thread wake-ups.
fn runtime_with(threads: usize) -> tokio::runtime::Runtime {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if threads > 1 {
        builder.worker_threads(threads);
    }
    builder
        .enable_all()
        .thread_name("tandem-worker")
        .build()
        .expect("cannot start the tokio runtime")
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    load_or_say(path).map_err(|why| {
        eprintln!("{why}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// The configuration at `path`, or every error in it as tandem prints them.
fn load_or_say(path: &Path) -> Result<Config, String> {
    Config::load(path).map_err(|e| {
        format!(
            "{e}\n{}: {} error(s); nothing was started",
            path.display(),
            e.diagnostics.len()
        )
    })
}

fn check(path: &Path) -> ExitCode {
    match load(path) {
        Ok(config) => {
            // Redirect services need this host's kernel to forward: check it here too.
            let conntrackd = tandem::redirect::conntrackd_program(&config);
            let problems = tandem_redirect::preflight(
                &tandem::redirect::configured_forwards(&config),
                &tandem_redirect::Nft::default(),
                conntrackd.as_deref(),
            );
            if !problems.is_empty() {
                for p in problems {
                    eprintln!("{}: redirect: {p}", path.display());
                }
                return ExitCode::from(EXIT_CONFIG);
            }
            for w in &config.warnings {
                eprintln!("{}", w.render(&path.display().to_string(), "warning: "));
            }
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

async fn run(config: Config, path: PathBuf, successor: Option<(Successor, Inherited)>) -> ExitCode {
    let drain = config.global.drain_timeout;
    // Handlers first: a SIGHUP or SIGTERM that arrives as soon as systemd hears READY (or
    // while starting) must reload or stop tandem, not kill it with the default action.
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        error!("cannot install signal handlers");
        return ExitCode::from(EXIT_RUNTIME);
    };
    let options = Options {
        config_path: Some(path),
        control_socket: true,
    };
    let (successor, inherited) = successor.unzip();
    let built = Daemon::build_inheriting(config, options, inherited.unwrap_or_default()).await;
    let daemon = match built {
        Ok(built) => built.start(),
        Err(e) => {
            error!("{e}");
            if let Some(s) = successor {
                s.failed(&e.to_string());
            }
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    info!(node = %daemon.config().global.name, version = env!("CARGO_PKG_VERSION"), pid = std::process::id(), "tandem running");
    match successor {
        // systemd hears the new main pid from the predecessor.
        Some(s) => {
            if let Err(e) = s.ready(&daemon).await {
                tracing::warn!("upgrade: the predecessor did not finish the handover: {e}");
            }
        }
        None => notify_systemd(&[sd_notify::NotifyState::Ready]),
    }
    let name = loop {
        tokio::select! {
            () = daemon.retired() => break "upgrade",
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => {
                info!("SIGHUP: reloading the configuration");
                notify_systemd(&[sd_notify::NotifyState::Reloading]);
                if let Err(e) = daemon.reload().await {
                    error!("reload refused, the running configuration stays:\n{e}");
                }
                notify_systemd(&[sd_notify::NotifyState::Ready]);
            }
        }
    };
    if daemon.has_retired() {
        info!(
            "handed over: the new tandem accepts; the connections held here may finish within {drain:?}"
        );
    } else {
        info!(
            signal = name,
            "stopping: no new connections; established ones may finish within {drain:?}"
        );
    }
    // After an upgrade the unit is the successor's: it is not stopping.
    if !daemon.has_retired() {
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
    }
    let report = tokio::select! {
        r = daemon.shutdown(drain) => Some(r),
        _ = term.recv() => None,
        _ = int.recv() => None,
    };
    match report {
        Some(r) => info!(
            open_at_stop = r.open_at_start,
            closed_at_deadline = r.closed_at_deadline,
            "stopped"
        ),
        None => info!("second signal: stopped without waiting for connections"),
    }
    ExitCode::SUCCESS
}

/// Tells systemd (Type=notify) where tandem is; nothing without NOTIFY_SOCKET.
fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

async fn demo(listen: SocketAddr, flap: Flap) -> ExitCode {
    let demo = match Demo::start(listen, flap).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tandem demo: {e:#}");
            if format!("{e:#}").contains("Address already in use") {
                eprintln!(
                    "hint: another program uses that port; try tandem demo --listen 127.0.0.1:18080"
                );
            }
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    println!("{}", demo.instructions());
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return ExitCode::from(EXIT_RUNTIME);
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    println!("stopping the demo");
    demo.stop().await;
    ExitCode::SUCCESS
}

async fn upgrade(socket: &Path, binary: Option<PathBuf>, json: bool) -> ExitCode {
    // The running tandem starts the binary: an absolute path, as it has its own cwd.
    let binary = match binary
        .map(std::path::absolute)
        .unwrap_or_else(std::env::current_exe)
    {
        Ok(b) => b,
        Err(e) => {
            eprintln!("tandem upgrade: cannot find the new binary: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let request = tandem_control::Request::Upgrade {
        binary: Some(binary.display().to_string()),
    };
    let reply = match tandem_control::socket::request(socket, &request).await {
        Ok(response) => response.into_reply(&request).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match reply {
        Ok(tandem_control::Reply::Upgrade(u)) if json => {
            println!("{}", serde_json::to_string_pretty(&u).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(tandem_control::Reply::Upgrade(u)) => {
            print!("{}", tandem::cli::upgraded(&u));
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!("tandem upgrade: an answer that is not an upgrade's");
            ExitCode::from(EXIT_RUNTIME)
        }
        Err(e) => {
            eprintln!("tandem upgrade: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

async fn ctl(socket: &Path, json: bool, command: CtlCommand) -> ExitCode {
    let request = command.request();
    if matches!(command, CtlCommand::Monitor) {
        return monitor(socket, json, &request).await;
    }
    let response = match tandem_control::socket::request(socket, &request).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tandem ctl: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    if !response.ok && json {
        println!(
            "{}",
            serde_json::to_string_pretty(&response).unwrap_or_default()
        );
    }
    // A refusal, or an answer that is not this request's reply, is an error.
    let reply = match response.into_reply(&request) {
        Ok(reply) => reply,
        Err(e) => {
            eprintln!("tandem ctl: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reply).unwrap_or_default()
        );
    } else {
        print!("{}", command.render(&reply));
    }
    ExitCode::SUCCESS
}

/// `tandem ctl monitor`: prints each event as it comes (a line, or a JSON object per
/// line with --json) until tandem closes the connection or the output is gone.
async fn monitor(socket: &Path, json: bool, request: &tandem_control::Request) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout();
    let followed = tandem_control::socket::follow(socket, request, |event| {
        let line = if json {
            serde_json::to_string(&event).unwrap_or_default() + "\n"
        } else {
            tandem_control::table::event(&event)
        };
        // A closed pipe (monitor | head) ends the stream.
        out.write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .is_ok()
    })
    .await;
    match followed {
        Ok(r) if r.ok => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("tandem ctl: {}", r.error.unwrap_or_default());
            ExitCode::from(EXIT_RUNTIME)
        }
        Err(e) => {
            eprintln!("tandem ctl: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
