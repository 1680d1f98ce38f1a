//! The tandem daemon: wires configuration, pools and services together.
//!
//! [`daemon::Daemon`] binds every listener of a validated configuration, builds the
//! pool generation, runs the accept loops and the sticky-table sweeper, and drains on
//! shutdown. The command line (`main.rs`) and the integration tests both drive it; the
//! crates below it never depend on it.

pub mod cli;
pub mod daemon;
pub mod demo;
pub mod logging;
pub mod privileges;
pub mod readiness;
pub mod redirect;
pub mod state_file;
