//! Operating a running tandem: the control socket, metrics and the status page.
//!
//! The control socket ([`socket`]) takes one JSON [`Request`] per line from
//! `tandem ctl` and hands it, with a reply channel, to the daemon, which owns the state
//! and answers with a [`Response`]. The admin HTTP port ([`admin`]) serves Prometheus
//! metrics ([`metrics`]), a status page ([`page`]) and the JSON snapshot, all built
//! from a [`Snapshot`] that the daemon provides through [`admin::StateSource`]. This
//! crate knows nothing of pools or sockets beyond these types.

pub mod admin;
pub mod events;
pub mod history;
pub mod metrics;
pub mod page;
pub mod protocol;
pub mod socket;
pub mod table;

pub use protocol::*;
