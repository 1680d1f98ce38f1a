//! The tandem daemon: wires configuration, pools, services and the HA parts together.
//!
//! [`daemon`] turns a validated configuration into a running node (listeners, pools,
//! services, health checks, VRRP, sync, redirect, the control socket and admin port),
//! reloads it and ends it in order; [`readiness`], [`state_file`], [`redirect`] and
//! [`privileges`] are parts it uses, [`cli`] and [`logging`] serve the command line,
//! and [`demo`] is `tandem demo`. The command line (`main.rs`) and the integration
//! tests both drive it; the crates below it never depend on it.

pub mod cli;
pub mod daemon;
pub mod demo;
pub mod logging;
pub mod privileges;
pub mod readiness;
pub mod redirect;
pub mod state_file;
