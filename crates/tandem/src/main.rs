//! The `tandem` command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use std::time::Duration;
use tandem::cli::{Cli, Command, CtlCommand};
use tandem::daemon::{Daemon, Options};

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
            let config = match load(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            tandem::logging::init(config.global.log_format);
            for w in &config.warnings {
                tracing::warn!("{}", w.render(&path.display().to_string(), "warning: "));
            }
            // Before any thread exists: credentials are per thread.
            if let Err(e) = tandem::privileges::drop_root(&config, allow_root) {
                error!("{e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            runtime_with(config.global.threads).block_on(run(config, path))
        }
        Command::Ctl {
            socket,
            json,
            command,
        } => runtime().block_on(ctl(&socket, json, command)),
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
    Config::load(path).map_err(|e| {
        eprintln!("{e}");
        eprintln!(
            "{}: {} error(s); nothing was started",
            path.display(),
            e.diagnostics.len()
        );
        ExitCode::from(EXIT_CONFIG)
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

async fn run(config: Config, path: PathBuf) -> ExitCode {
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
    let daemon = match Daemon::build(config, options).await {
        Ok(built) => built.start(),
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    info!(node = %daemon.config().global.name, version = env!("CARGO_PKG_VERSION"), "tandem running");
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    let name = loop {
        tokio::select! {
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
    info!(
        signal = name,
        "stopping: no new connections; established ones may finish within {drain:?}"
    );
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
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
