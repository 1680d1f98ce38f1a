//! Route announcement for N active balancers behind ECMP: tandem never speaks BGP; it
//! tells the BGP speaker on its node (BIRD 2) which service addresses this node can
//! serve, by holding them on an interface of its own that the speaker exports.
//!
//! [`decide`] is the decision, without IO: an [`Announcer`] fed the time, readiness
//! (sync bulk table in, checks decided), the health of the pools behind each address,
//! the operator's drain and shutdown, and answering which addresses to announce and
//! why the others are withdrawn. [`linux`] is the IO: a non-persistent TUN device
//! (`tdm-ann0`) that lives exactly as long as tandem's process (an upgrade in place
//! hands its descriptor to the new process first), and the /32 and /128
//! addresses on it, set by netlink. When tandem dies, the kernel removes the device and
//! its addresses at once, the speaker hears it over netlink and withdraws the routes.
//! Configuration enters as [`tandem_config::Announce`]; nothing here reads the pools
//! or the checks themselves: the daemon passes their verdicts in.

pub mod decide;
pub mod linux;

pub use decide::{Action, AddressState, Announcer, Inputs, Policy, Reason, Target};
