//! The tandem daemon: wires configuration, pools, services and the HA parts together.
//!
//! [`daemon::Daemon::build`] does everything a validated configuration asks for that
//! can fail (pools, health checks, listeners, control socket, admin port, sync,
//! redirect, VRRP); [`daemon::Built::start`] serves it and returns the
//! [`daemon::Daemon`] handle, which reloads, answers the control socket and drains on
//! shutdown. [`readiness`], [`state_file`], [`redirect`] and [`privileges`] are parts
//! it uses, [`cli`] and [`logging`] serve the command line, and [`demo`] is
//! `tandem demo`; [`upgrade`] is what a running tandem and its successor say when
//! the binary is replaced in place. The command line (`main.rs`) and the integration tests both drive
//! it; the crates below it never depend on it.

pub mod acme;
pub mod cli;
pub mod daemon;
pub mod demo;
pub mod logging;
pub mod privileges;
pub mod readiness;
pub mod redirect;
pub mod state_file;
pub mod upgrade;
