//! The `tandem` command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::time::Duration;
use tandem::daemon::Daemon;

use tandem::demo::{Demo, Flap};
use tandem_config::{Config, LogFormat};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

/// Exit code of a usage or configuration error.
const EXIT_CONFIG: u8 = 2;
/// Exit code of a runtime failure.
const EXIT_RUNTIME: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "tandem",
    version,
    about = "A highly available TCP/HTTP load balancer for Linux",
    long_about = "A highly available TCP/HTTP load balancer for Linux.\n\n\
tandem accepts client connections on the addresses of its services and relays each \
one to a healthy backend of the service's pool, chosen by the pool's algorithm \
(round-robin, least-conn, random, source-hash, maglev) and kept sticky per client \
when configured.\n\n\
Start with `tandem demo`, then write a configuration (see examples/ and \
docs/configuration.md), validate it with `tandem check --config FILE` and run it with \
`tandem run --config FILE`.",
    after_help = "Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.\n\
Logs go to stderr; RUST_LOG=debug (or tandem=debug) shows more."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the balancer in the foreground until SIGTERM or SIGINT.
    ///
    /// On SIGTERM/SIGINT tandem stops accepting, lets established connections finish
    /// until global.drain_timeout (default 30s), closes what is left and exits 0.
    /// A second signal closes everything at once.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long, env = "TANDEM_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file and exit.
    ///
    /// Prints `ok` and exits 0, or prints every error as FILE:LINE:COL: key: what is
    /// wrong (hint) and exits 2.
    Check {
        /// Configuration file (TOML).
        #[arg(short, long, env = "TANDEM_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
    /// Try tandem on loopback: three built-in web servers behind a balancer.
    ///
    /// Starts backends demo-1..3 on 127.0.0.1, a round-robin service on --listen and a
    /// sticky service on the next port, and prints what to try with curl.
    Demo {
        /// Address of the round-robin service; the sticky one takes the next port.
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
        listen: SocketAddr,
        /// Seconds after start when demo-2 begins failing its health check.
        #[arg(long, default_value_t = 20, value_name = "SECS", hide = true)]
        flap_after: u64,
        /// Seconds demo-2 keeps failing each time.
        #[arg(long, default_value_t = 15, value_name = "SECS", hide = true)]
        flap_for: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            tandem::logging::init(config.global.log_format);
            runtime().block_on(run(config))
        }
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
    tokio::runtime::Builder::new_multi_thread()
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
            for note in config.inactive_features() {
                eprintln!("note: {note}");
            }
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

async fn run(config: Config) -> ExitCode {
    let drain = config.global.drain_timeout;
    for note in config.inactive_features() {
        warn!("{note}");
    }
    let daemon = match Daemon::start(config).await {
        Ok(d) => d,
        Err(e) => {
            error!("{e:#}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    info!(node = %daemon.config().global.name, version = env!("CARGO_PKG_VERSION"), "tandem running");
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return ExitCode::from(EXIT_RUNTIME);
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(
        signal = name,
        "stopping: no new connections; established ones may finish within {drain:?}"
    );
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
