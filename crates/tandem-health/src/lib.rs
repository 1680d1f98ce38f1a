//! Health checks and the rise/fall state of each backend.
//!
//! [`Monitor`] runs one scheduler task that starts each checked backend's check (and
//! each ask of a backend's agent, see [`agent`]) when it is due (checks of a pool
//! spread over the interval, pools interleaved), calling a
//! [`Checker`] (the real [`Prober`]: tcp, tls, http, https, send-expect, script) and
//! feeding its [`Probe`] to the backend's [`RiseFall`] machine, which is pure and
//! tested without IO. A change of state flips the
//! backend's `healthy` flag in its `tandem_balance::BackendState` (so the pool stops
//! or resumes choosing it), is logged once with its reason, and is published on the
//! [`HealthBoard`], which the control socket, metrics and VRRP tracking read. TLS
//! checks take their client configuration from `tandem_net::tls`; this crate does not
//! link the data plane.

pub mod agent;
mod machine;
mod monitor;
mod probe;

pub use machine::{Change, Probe, RiseFall};
pub use monitor::{
    AgentSeen, BackendHealth, Checker, HealthBoard, LastCheck, Monitor, Started, Transition,
};
pub use probe::{
    Begun, MAX_ANSWER, Prober, answer_end, fmt_days, fmt_duration, judge_answer, local_proxy_header,
};
