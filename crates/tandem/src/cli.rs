//! The command line, as data: `main.rs` runs it, `tandem-gen` writes the man page
//! and shell completions from it.
#![allow(missing_docs)] // clap turns the doc comments into the help text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tandem_control::{AnnounceAction, BackendAction, Reply, Request, StickyFilter, table};

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
    /// Ask a running tandem: status, pools, backends, sticky entries, connections,
    /// events, reload, ha, announce.
    ///
    /// Talks to the control socket (global.control_socket). Prints tables, or JSON with
    /// --json. Exit code 1 when tandem cannot be reached or refuses the command.
    /// Changes to backends (weight, add, remove) last until the next reload.
    Ctl {
        /// The control socket of the running tandem.
        #[arg(
            long,
            env = "TANDEM_SOCKET",
            default_value = tandem_config::DEFAULT_CONTROL_SOCKET,
            value_name = "PATH"
        )]
        socket: PathBuf,
        /// Print the JSON answer instead of tables (before or after the command).
        #[arg(long, global = true)]
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
    /// Replace the running tandem's binary without refusing a connection.
    ///
    /// The running tandem starts BINARY (by default this tandem's own path) with its own
    /// arguments and hands it the listening sockets, the sticky tables and the VRRP
    /// state; once the new process accepts, the old one stops accepting, finishes its
    /// connections (until global.drain_timeout) and exits. Not with [sync] or redirect
    /// services yet. Exit code 1, with the reason, when the new binary cannot start:
    /// the running tandem then serves on.
    Upgrade {
        /// The control socket of the running tandem.
        #[arg(
            long,
            env = "TANDEM_SOCKET",
            default_value = tandem_config::DEFAULT_CONTROL_SOCKET,
            value_name = "PATH"
        )]
        socket: PathBuf,
        /// The new binary (default: the path of this `tandem`).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Node, uptime, version, HA state, sync peers, services.
    Status,
    /// Every pool and backend: health, last check, enabled, connections, bytes.
    Pools,
    /// Change a backend: enable, disable (drain), weight, add, remove.
    Backend {
        #[command(subcommand)]
        action: BackendCommand,
    },
    /// Reload the configuration file; an invalid one is refused and the old one stays.
    Reload,
    /// VRRP state, priority with its demotions, and why; or demote/restore.
    Ha {
        #[command(subcommand)]
        action: Option<HaCommand>,
    },
    /// Redirect services: the live kernel rules and the sync of connection states.
    Redirect,
    /// Route announcement: each address, announced or withdrawn, and why; `withdraw`
    /// takes the node out of the routers' ECMP (operator drain), `restore` ends that.
    Announce {
        /// withdraw or restore; none: show the state.
        #[arg(value_parser = ["withdraw", "restore"])]
        action: Option<String>,
    },
    /// Sticky entries: show or clear them (all, one pool, one client, one backend).
    Sticky {
        #[command(subcommand)]
        action: StickyCommand,
    },
    /// Open relayed (tcp mode) connections: client, service, backend, age, bytes; or
    /// close one.
    Connections {
        /// Only this service's connections.
        #[arg(long, value_name = "SERVICE")]
        service: Option<String>,
        #[command(subcommand)]
        action: Option<ConnectionsCommand>,
    },
    /// Follow the event log until interrupted: health transitions, VRRP, sync peers,
    /// reloads, limits, operator actions; one line (or JSON object) per event.
    ///
    /// Starts with the last few kept events.
    Monitor,
}

#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// Take new connections again.
    Enable {
        /// The pool's name.
        pool: String,
        /// The backend's address as in the configuration, e.g. 10.1.0.12:80.
        address: String,
    },
    /// Drain: no new connections, established ones finish.
    Disable {
        /// The pool's name.
        pool: String,
        /// The backend's address as in the configuration, e.g. 10.1.0.12:80.
        address: String,
    },
    /// Set the backend's weight (1 to 256) until the next reload.
    Weight {
        /// The pool's name.
        pool: String,
        /// The backend's address, e.g. 10.1.0.12:80.
        address: String,
        /// The new weight.
        weight: u32,
    },
    /// Add a backend to the pool until the next reload; it is health-checked like the
    /// others.
    Add {
        /// The pool's name.
        pool: String,
        /// The new backend's address, e.g. 10.1.0.13:80.
        address: String,
        /// Its weight, 1 to 256.
        #[arg(long, default_value_t = 1, value_name = "N")]
        weight: u32,
        /// Serve only when no primary backend can.
        #[arg(long)]
        backup: bool,
        /// Its connection limit (0 = none).
        #[arg(long, default_value_t = 0, value_name = "N")]
        max_conns: u32,
    },
    /// Remove a backend from the pool until the next reload: no new connections,
    /// established ones finish.
    Remove {
        /// The pool's name.
        pool: String,
        /// The backend's address, e.g. 10.1.0.12:80.
        address: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum HaCommand {
    /// Hand master over for maintenance without stopping: priority 1, and a master
    /// sends a priority-0 advertisement so the peer takes over at once.
    Demote,
    /// End the maintenance: the configured priority again (with preempt, this node
    /// takes master back).
    Restore,
}

#[derive(Debug, Subcommand)]
pub enum StickyCommand {
    /// List sticky entries (those matching every filter given).
    Show {
        #[command(flatten)]
        filter: StickyArgs,
    },
    /// Remove sticky entries (those matching every filter given; all without one),
    /// here and on the sync peer: their clients are balanced anew.
    Clear {
        #[command(flatten)]
        filter: StickyArgs,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct StickyArgs {
    /// Only this pool's entries.
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
    /// Only this client's entry, e.g. 192.0.2.7.
    #[arg(long, value_name = "IP")]
    pub client: Option<String>,
    /// Only entries pinned to this backend, e.g. 10.1.0.12:80.
    #[arg(long, value_name = "ADDR")]
    pub backend: Option<String>,
}

impl StickyArgs {
    fn filter(&self) -> StickyFilter {
        StickyFilter {
            pool: self.pool.clone(),
            client: self.client.clone(),
            backend: self.backend.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ConnectionsCommand {
    /// Close one connection (the client sees the connection end).
    Close {
        /// The connection's ID, as listed.
        id: u64,
    },
}

impl CtlCommand {
    /// The control request this command sends.
    pub fn request(&self) -> Request {
        match self {
            CtlCommand::Status => Request::Status,
            CtlCommand::Pools => Request::Pools,
            CtlCommand::Reload => Request::Reload,
            CtlCommand::Ha { action: None } => Request::Ha,
            CtlCommand::Ha {
                action: Some(HaCommand::Demote),
            } => Request::HaDemote,
            CtlCommand::Ha {
                action: Some(HaCommand::Restore),
            } => Request::HaRestore,
            CtlCommand::Redirect => Request::Redirect,
            CtlCommand::Announce { action } => Request::Announce {
                action: match action.as_deref() {
                    Some("withdraw") => AnnounceAction::Withdraw,
                    Some("restore") => AnnounceAction::Restore,
                    _ => AnnounceAction::Status,
                },
            },
            CtlCommand::Backend { action } => match action {
                BackendCommand::Enable { pool, address } => Request::Backend {
                    action: BackendAction::Enable,
                    pool: pool.clone(),
                    address: address.clone(),
                },
                BackendCommand::Disable { pool, address } => Request::Backend {
                    action: BackendAction::Disable,
                    pool: pool.clone(),
                    address: address.clone(),
                },
                BackendCommand::Weight {
                    pool,
                    address,
                    weight,
                } => Request::BackendWeight {
                    pool: pool.clone(),
                    address: address.clone(),
                    weight: *weight,
                },
                BackendCommand::Add {
                    pool,
                    address,
                    weight,
                    backup,
                    max_conns,
                } => Request::BackendAdd {
                    pool: pool.clone(),
                    address: address.clone(),
                    weight: Some(*weight),
                    backup: *backup,
                    max_conns: *max_conns,
                },
                BackendCommand::Remove { pool, address } => Request::BackendRemove {
                    pool: pool.clone(),
                    address: address.clone(),
                },
            },
            CtlCommand::Sticky {
                action: StickyCommand::Show { filter },
            } => Request::StickyShow {
                filter: filter.filter(),
            },
            CtlCommand::Sticky {
                action: StickyCommand::Clear { filter },
            } => Request::StickyClear {
                filter: filter.filter(),
            },
            CtlCommand::Connections {
                action: Some(ConnectionsCommand::Close { id }),
                ..
            } => Request::ConnectionClose { id: *id },
            CtlCommand::Connections {
                service,
                action: None,
            } => Request::Connections {
                service: service.clone(),
            },
            CtlCommand::Monitor => Request::Monitor,
        }
    }

    /// What `tandem ctl` prints for `reply` (without --json).
    pub fn render(&self, reply: &Reply) -> String {
        match reply {
            Reply::Status(s) => table::status(s),
            Reply::Pools(s) => table::pools(s),
            Reply::Ha(ha) => table::ha(&ha.0),
            Reply::Redirect(r) => table::redirect(r.as_deref()),
            Reply::Announce(a) => table::announce(a.as_ref()),
            Reply::Upgrade(u) => upgraded(u),
            Reply::Backend(b) => match self {
                CtlCommand::Backend {
                    action: BackendCommand::Enable { pool, address },
                } => format!("{pool} {address}: enabled\n"),
                CtlCommand::Backend {
                    action: BackendCommand::Disable { pool, address },
                } => format!("{pool} {address}: disabled\n"),
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
            Reply::BackendChange(r) => table::backend_change(r),
            Reply::Sticky(entries) => table::sticky(entries),
            Reply::StickyCleared(r) => table::sticky_cleared(r),
            Reply::Connections(list) => table::connections(list),
            Reply::ConnectionClosed(c) => format!(
                "connection {} closed ({} -> {}/{}, {} open)\n",
                c.id,
                c.client,
                c.pool,
                c.backend,
                tandem_control::page::ago(c.age_secs)
            ),
            Reply::Monitor(events) => events.iter().map(table::event).collect(),
            Reply::HaMaintenance(ha) => table::ha(ha),
        }
    }
}

/// What `tandem upgrade` prints.
pub fn upgraded(u: &tandem_control::UpgradeReply) -> String {
    format!(
        "upgraded: pid {} ({}) serves since {} ms after the request, with {} sockets and {} sticky pins; pid {} drains {} connections and exits\n",
        u.new_pid, u.binary, u.ready_ms, u.sockets, u.pins, u.old_pid, u.draining
    )
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
    fn json_may_follow_the_command() {
        use clap::Parser;
        for args in [
            ["tandem", "ctl", "--json", "monitor"],
            ["tandem", "ctl", "monitor", "--json"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let Command::Ctl { json, command, .. } = cli.command else {
                panic!("not ctl")
            };
            assert!(json);
            assert!(matches!(command.request(), Request::Monitor));
        }
        let cli = Cli::try_parse_from([
            "tandem",
            "ctl",
            "sticky",
            "clear",
            "--client",
            "192.0.2.7",
            "--json",
        ])
        .unwrap();
        let Command::Ctl { json, command, .. } = cli.command else {
            panic!("not ctl")
        };
        assert!(json);
        assert_eq!(
            command.request(),
            Request::StickyClear {
                filter: StickyFilter {
                    client: Some("192.0.2.7".into()),
                    ..StickyFilter::default()
                }
            }
        );
    }

    #[test]
    fn a_backend_command_echoes_what_was_done() {
        let command = CtlCommand::Backend {
            action: BackendCommand::Disable {
                pool: "web".into(),
                address: "10.0.0.1:80".into(),
            },
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
