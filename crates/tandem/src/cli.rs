//! The command line, as data: `main.rs` runs it, `tandem-gen` writes the man page
//! and shell completions from it.
#![allow(missing_docs)] // clap turns the doc comments into the help text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tandem_control::{BackendAction, Reply, Request, table};

/// The command line.
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
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the balancer in the foreground until SIGTERM or SIGINT.
    ///
    /// On SIGTERM/SIGINT tandem stops accepting, lets established connections finish
    /// until global.drain_timeout (default 30s), closes what is left and exits 0.
    /// A second signal closes everything at once.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long, env = "TANDEM_CONFIG", value_name = "FILE")]
        config: PathBuf,
        /// Run as root although global.user is not set.
        #[arg(long, env = "TANDEM_ALLOW_ROOT", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
        allow_root: bool,
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
    /// Ask a running tandem: status, pools, backend enable/disable, reload, ha.
    ///
    /// Talks to the control socket (global.control_socket). Prints tables, or JSON with
    /// --json. Exit code 1 when tandem cannot be reached or refuses the command.
    Ctl {
        /// The control socket of the running tandem.
        #[arg(
            long,
            env = "TANDEM_SOCKET",
            default_value = tandem_config::DEFAULT_CONTROL_SOCKET,
            value_name = "PATH"
        )]
        socket: PathBuf,
        /// Print the JSON answer instead of tables.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: CtlCommand,
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

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Node, uptime, version, HA state, sync peers, services.
    Status,
    /// Every pool and backend: health, last check, enabled, connections, bytes.
    Pools,
    /// Enable a backend, or disable it (drain: no new connections, established ones finish).
    Backend {
        /// enable or disable.
        #[arg(value_parser = ["enable", "disable"])]
        action: String,
        /// The pool's name.
        pool: String,
        /// The backend's address as in the configuration, e.g. 10.1.0.12:80.
        address: String,
    },
    /// Reload the configuration file; an invalid one is refused and the old one stays.
    Reload,
    /// VRRP state, priority with its demotions, and why.
    Ha,
    /// Redirect services: the live kernel rules and the sync of connection states.
    Redirect,
}

impl CtlCommand {
    /// The control request this command sends.
    pub fn request(&self) -> Request {
        match self {
            CtlCommand::Status => Request::Status,
            CtlCommand::Pools => Request::Pools,
            CtlCommand::Reload => Request::Reload,
            CtlCommand::Ha => Request::Ha,
            CtlCommand::Redirect => Request::Redirect,
            CtlCommand::Backend {
                action,
                pool,
                address,
            } => Request::Backend {
                action: if action == "enable" {
                    BackendAction::Enable
                } else {
                    BackendAction::Disable
                },
                pool: pool.clone(),
                address: address.clone(),
            },
        }
    }

    /// What `tandem ctl` prints for `reply` (without --json).
    pub fn render(&self, reply: &Reply) -> String {
        match reply {
            Reply::Status(s) => table::status(s),
            Reply::Pools(s) => table::pools(s),
            Reply::Ha(ha) => table::ha(&ha.0),
            Reply::Redirect(r) => table::redirect(r.as_deref()),
            Reply::Backend(b) => match self {
                CtlCommand::Backend {
                    action,
                    pool,
                    address,
                } => format!("{pool} {address}: {action}d\n"),
                _ => format!(
                    "{}: {}\n",
                    b.address,
                    if b.enabled { "enabled" } else { "disabled" }
                ),
            },
            Reply::Reload(r) => {
                let mut out = String::from("reloaded\n");
                for (what, list) in [
                    ("services added", &r.services_added),
                    ("services removed", &r.services_removed),
                    ("listeners opened", &r.listeners_opened),
                    ("listeners closed", &r.listeners_closed),
                    ("needs a restart", &r.needs_restart),
                ] {
                    if !list.is_empty() {
                        out += &format!("  {what}: {}\n", list.join(", "));
                    }
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tandem_control::{BackendSnapshot, ReloadReply};

    use super::*;

    #[test]
    fn a_reload_says_what_changed_and_nothing_of_what_did_not() {
        let reply = Reply::Reload(ReloadReply {
            services_added: vec!["www".into(), "api".into()],
            listeners_opened: vec!["127.0.0.1:8080".into()],
            ..ReloadReply::default()
        });
        assert_eq!(
            CtlCommand::Reload.render(&reply),
            "reloaded\n  services added: www, api\n  listeners opened: 127.0.0.1:8080\n"
        );
    }

    #[test]
    fn a_backend_command_echoes_what_was_done() {
        let command = CtlCommand::Backend {
            action: "disable".into(),
            pool: "web".into(),
            address: "10.0.0.1:80".into(),
        };
        assert!(matches!(
            command.request(),
            Request::Backend {
                action: BackendAction::Disable,
                ..
            }
        ));
        let reply = Reply::Backend(BackendSnapshot::default());
        assert_eq!(command.render(&reply), "web 10.0.0.1:80: disabled\n");
    }
}
